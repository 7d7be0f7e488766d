"""fastconv.convert_inception: the Inception patterns found by structure in converted models."""
import collections
import copy

import pytest
import torch
import torchvision.models as tvm
from torch import nn

import fastconv
from fastconv import reference
from fastconv.convert_inception import fuse_inception
from tests.conftest import DEVICE
from tests.models.test_inception_block import _Recorder


class Branches(nn.Module):
    """Not an Inception by name: two 1x1 conv + ReLU siblings, a third reading another tensor,
    a 3x3/1 pool feeding a 1x1 conv + BN + ReLU, and a pool read twice (left alone)."""

    def __init__(self, c=17):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(c, 5, 1), nn.Conv2d(c, 3, 1), nn.Conv2d(5, 4, 1)
        self.pool, self.proj = nn.MaxPool2d(3, 1, 1), nn.Conv2d(c, 6, 1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.pool2, self.d = nn.MaxPool2d(3, 1, 1), nn.Conv2d(c, 2, 1)

    def forward(self, x):
        a, b = torch.relu(self.a(x)), torch.relu(self.b(x))
        p2 = self.pool2(x)
        return torch.cat([a, b, torch.relu(self.c(a)), torch.relu(self.bn(self.proj(self.pool(x)))),
                          torch.relu(self.d(p2)), p2[:, :1]], 1)


def _convert(model, x):
    converted = fastconv.convert(model, example_input=x)
    fuse_inception(converted, converted.fastconv_report)
    return converted


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_patterns_found_by_structure(backend):
    torch.manual_seed(0)
    model = reference.randomize_batchnorm(Branches()).to(DEVICE).eval()
    x = torch.randn(2, 17, 7, 7, device=DEVICE)
    converted = _convert(model, x)
    ops = collections.Counter(op for _, _, op in converted.fastconv_report.replaced)
    assert ops["conv1x1_relu_split (one GEMM)"] == 1
    assert ops["pool_conv1x1_relu (pool in the GEMM's operand load)"] == 1  # not pool2: read twice
    assert converted.state_dict().keys() == model.state_dict().keys()
    with torch.no_grad(), fastconv.use_backend(backend):
        assert reference.rel_error(converted(x), copy.deepcopy(model).double()(x.double())) < 1e-5
    converted.train(), model.train()  # batch statistics: the original modules run
    assert reference.rel_error(converted(x), model(x)) < 1e-5


def test_torchvision_googlenet():
    torch.manual_seed(0)
    model = reference.randomize_batchnorm(tvm.googlenet(weights=None, init_weights=True)).eval()
    x = torch.randn(1, 3, 64, 64)
    converted = _convert(model, x)
    recorder = _Recorder()
    with torch.no_grad(), fastconv.use_backend("torch"), recorder:
        out = converted(x)
    assert reference.rel_error(out, copy.deepcopy(model).double()(x.double())) < 1e-5
    assert recorder.top["fastconv.conv1x1_relu_split"] == 2 * 9  # per block: siblings, pool projection
    assert recorder.top["fastconv.max_pool2d_same"] == 4         # the trunk's pools only
