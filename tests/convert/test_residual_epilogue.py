"""conv1x1 + BN + add (+ ReLU) -> one conv1x1_relu(..., residual=...) call in eval mode;
train mode exact (BN as its layer, then residual_add)."""
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

import fastconv
from fastconv.convert import Conv1x1BNAct
from tests.convert.helpers import assert_same_function, count_op_calls, realistic, train_step_matches


def _bottleneck(x):
    downsample = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
    return realistic(Bottleneck(8, 4, stride=2, downsample=downsample), x)


def test_bottleneck_add_relu_in_conv3_epilogue(monkeypatch):
    model = _bottleneck(x := torch.randn(2, 8, 7, 9))
    converted = fastconv.convert(model, example_input=x)
    assert ("conv3", "relu(1x1 conv + BN + b)", "conv1x1_relu(residual=...)") in converted.fastconv_report.replaced
    assert type(converted.conv3) is Conv1x1BNAct and converted.conv3.relu
    assert set(converted.state_dict()) == set(model.state_dict())
    calls = count_op_calls(monkeypatch)
    assert_same_function(model, converted, x)
    # conv1 (+ReLU), the projection, conv3 + add + ReLU: no residual_add of its own
    assert calls == {"conv1x1_relu": 2, "conv1x1_relu+residual": 1}
    assert_same_function(model, converted, torch.randn(1, 8, 3, 3), backend="triton")


def test_bottleneck_train_mode_exact(monkeypatch):
    model = _bottleneck(x := torch.randn(4, 8, 6, 6))
    converted = fastconv.convert(model)
    calls = count_op_calls(monkeypatch)
    train_step_matches(model, converted, x)
    assert calls["residual_add"] == 1  # after conv3's BN, which runs as its layer


class AddNoReLU(nn.Module):
    """MobileNetV2's inverted residual tail: x + bn(conv1x1(h)), no ReLU after."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)

    def forward(self, x, r):
        return r + self.bn(self.conv(x))


def test_add_without_relu_in_the_epilogue_and_broadcast_fallback(monkeypatch):
    model, x = AddNoReLU(), torch.randn(2, 8, 5, 5)
    realistic(nn.Sequential(model.conv, model.bn), x)  # calibrates the model's own BN
    converted = fastconv.convert(model.eval())
    assert ("conv", "(1x1 conv + BN + b)", "conv1x1_relu(residual=...)") in converted.fastconv_report.replaced
    calls = count_op_calls(monkeypatch)
    for r in (torch.randn(2, 8, 5, 5), torch.randn(2, 8, 1, 1), torch.randn(8, 5, 5)):  # the last two broadcast
        with torch.no_grad():
            assert fastconv.reference.rel_error(converted(x, r), model(x, r)) <= 1e-5
    assert calls == {"conv1x1_relu+residual": 1, "conv1x1_relu": 2}


class InPlaceIntoInput(nn.Module):
    """`x.add_(bn(conv(x)))`: eager writes into x, the caller's tensor - left as it is.
    (torch.fx records `x += y` as `x + y`, so only add_ keeps its mutation in a trace.)"""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)

    def forward(self, x):
        return torch.relu(x.add_(self.bn(self.conv(x))))


def test_in_place_add_into_the_residual_is_not_moved_into_the_conv():
    model = realistic(InPlaceIntoInput(), x := torch.randn(2, 8, 4, 4))
    converted = fastconv.convert(model)
    patterns = [p for _, p, _ in converted.fastconv_report.replaced]
    assert patterns == ["1x1 conv + BN"]  # x is also the conv's input: the add stays
    a, b = x.clone(), x.clone()
    with torch.no_grad():
        assert torch.allclose(converted(a), model(b), rtol=1e-5, atol=1e-6)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)  # mutated alike
