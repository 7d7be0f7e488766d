"""The fusion rules: when a PyTorch pool is exactly SAME pooling, BN folding, and the
drop-in layers that rely on them."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastconv
from fastconv import reference
from fastconv.fusion import fold_bn, pool_is_same


def test_pool_is_same_never_claims_a_false_equality():
    """Brute force over small sizes and geometries: wherever pool_is_same says True,
    PyTorch's pool equals the float64 SAME reference; and it finds GoogLeNet's pools."""
    claimed = 0
    for size, k, s, p, ceil, cip in itertools.product(range(1, 12), range(1, 5), range(1, 4),
                                                      range(0, 3), (False, True), (True, False)):
        if p > k // 2 or size + 2 * p < k:
            continue
        x = torch.randn(1, 1, size, size, dtype=torch.float64)
        for is_max in (True, False):
            if not pool_is_same((size, size), k, s, p, ceil, is_max, cip):
                continue
            claimed += 1
            if is_max:
                out, ref = F.max_pool2d(x, k, s, p, ceil_mode=ceil), reference.max_pool2d_same(x, k, s)
            else:
                out = F.avg_pool2d(x, k, s, p, ceil_mode=ceil, count_include_pad=cip)
                ref = reference.avg_pool2d_same(x, k, s)
            assert out.shape == ref.shape and torch.allclose(out, ref), (size, k, s, p, ceil, cip, is_max)
    assert claimed > 300
    assert pool_is_same((112, 112), 3, 2, 0, True)          # GoogLeNet maxpool1
    assert pool_is_same((28, 28), 3, 1, 1, True)            # its branch4 pools
    assert not pool_is_same((112, 112), 3, 2, 1, False)     # ResNet's stem pool on even sizes
    assert pool_is_same((113, 113), 3, 2, 1, False)         # ... which is SAME on odd sizes


def test_fold_bn_equals_conv_then_bn():
    conv = nn.Conv2d(6, 5, 1)
    bn = reference.randomize_batchnorm(nn.BatchNorm2d(5, eps=1e-3)).eval()
    x = torch.randn(2, 6, 4, 4)
    w, b = fold_bn(conv.weight, conv.bias, bn)
    with torch.no_grad():
        assert torch.allclose(F.conv2d(x, w, b), bn(conv(x)), atol=1e-5)


@pytest.mark.parametrize("size", [7, 8])
def test_fused_pools_and_linear_relu_equal_their_torch_layers(size):
    x = torch.randn(2, 3, size, size)
    for fused, plain in [(fastconv.nn.FusedMaxPool2d(3, 2, ceil_mode=True), nn.MaxPool2d(3, 2, ceil_mode=True)),
                         (fastconv.nn.FusedMaxPool2d(3, 2, 1), nn.MaxPool2d(3, 2, 1)),
                         (fastconv.nn.FusedAvgPool2d(2, 2), nn.AvgPool2d(2, 2)),
                         (fastconv.nn.FusedAvgPool2d(3, 1, 1, count_include_pad=False),
                          nn.AvgPool2d(3, 1, 1, count_include_pad=False))]:
        assert torch.allclose(fused(x), plain(x), atol=1e-6), fused
        assert torch.allclose(fused(x[0]), plain(x[0]), atol=1e-6), fused  # unbatched
    lin = fastconv.nn.LinearReLU(12, 5)
    y = torch.randn(4, 3, 12)
    with torch.no_grad():
        assert torch.allclose(lin(y), torch.relu(F.linear(y, lin.weight, lin.bias)), atol=1e-6)
