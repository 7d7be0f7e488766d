import pytest
import torch
from torch import nn

import fastconv
from fastconv import reference
from tests.conftest import DEVICE, make_input


@pytest.mark.parametrize("bias", [True, False])
def test_conv1x1relu_state_dict_both_ways(bias):
    ours = fastconv.nn.Conv1x1ReLU(17, 5, stride=2, bias=bias)
    conv = nn.Conv2d(17, 5, 1, stride=2, bias=bias)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in conv.state_dict().items()}
    ours.load_state_dict(conv.state_dict())
    conv.load_state_dict(ours.state_dict())
    x = torch.randn(2, 17, 7, 7)
    assert torch.allclose(ours(x), torch.relu(conv(x)), atol=1e-6)
    assert "17, 5, stride=2" in repr(ours)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_modules_match_reference(backend):
    x = make_input((2, 8, 7, 7), torch.float32, "nhwc")
    conv = fastconv.nn.Conv1x1ReLU(8, 8, relu=False).to(DEVICE)
    with fastconv.use_backend(backend), torch.no_grad():
        y = conv(x)
        checks = [
            (y, reference.conv1x1_relu(x, conv.weight, conv.bias, relu=False)),
            (fastconv.nn.ResidualAdd()(y, x), reference.residual_add(y, x)),
            (fastconv.nn.ResidualAdd(relu=False)(y, x), reference.residual_add(y, x, relu=False)),
            (fastconv.nn.MaxPool2dSame(3, 2)(x), reference.max_pool2d_same(x, 3, 2)),
            (fastconv.nn.AvgPool2dSame((3, 1))(x), reference.avg_pool2d_same(x, (3, 1))),
        ]
    for out, ref in checks:
        assert reference.rel_error(out, ref) < 1e-5


class Block(nn.Module):
    """A bottleneck-like block using all four ops."""

    def __init__(self):
        super().__init__()
        self.reduce = fastconv.nn.Conv1x1ReLU(8, 4)
        self.expand = fastconv.nn.Conv1x1ReLU(4, 8, relu=False)
        self.add = fastconv.nn.ResidualAdd()
        self.pool = fastconv.nn.MaxPool2dSame(3, 2)
        self.avg = fastconv.nn.AvgPool2dSame(2)

    def forward(self, x):
        return self.avg(self.pool(self.add(self.expand(self.reduce(x)), x)))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_compile_fullgraph_forward_and_backward(backend):
    torch._dynamo.reset()
    block = Block().to(DEVICE)
    x = make_input((2, 8, 9, 9), torch.float32, "nhwc", requires_grad=True)
    with fastconv.use_backend(backend):
        eager = block(x)
        (gx_eager,) = torch.autograd.grad(eager.sum(), x)
        compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
        out = compiled(x)
        (gx,) = torch.autograd.grad(out.sum(), x)
    assert torch.allclose(out, eager, atol=1e-6) and torch.allclose(gx, gx_eager, atol=1e-6)


def test_compile_inductor_fullgraph():
    """The default (Inductor) backend too: the ops stay opaque, no graph break."""
    torch._dynamo.reset()
    block = Block().to(DEVICE)
    x = make_input((2, 8, 9, 9), torch.float32, "nchw")
    with torch.no_grad():
        out = torch.compile(block, fullgraph=True)(x)
        assert torch.allclose(out, block(x), atol=1e-6)
