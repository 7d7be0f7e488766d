"""Every eval conv + BN folds into one convolution (any kernel, stride, padding, dilation,
groups; timm's Conv2dSame and BatchNormAct2d), cached until a source changes; train mode
exact; near misses named. Stochastic depth before an add stays out of the way in eval."""
import copy

import pytest
import torch
from torch import nn

import fastconv
from fastconv import reference
from fastconv.convert import ConvBN
from tests.convert.helpers import DispatchedOps, assert_same_function, count_op_calls, realistic, train_step_matches


class Convs(nn.Module):
    """conv + BN (+ ReLU) of many kinds in a row."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([
            nn.Conv2d(6, 8, 3, padding=1),
            nn.Conv2d(8, 8, 5, stride=2, padding=2, bias=False),
            nn.Conv2d(8, 8, 3, padding=1, groups=8),                       # depthwise
            nn.Conv2d(8, 12, 3, padding=2, dilation=2, groups=4),          # grouped, dilated
            nn.Conv2d(12, 8, (1, 3), padding=(0, 1), padding_mode="reflect"),
            nn.Conv2d(8, 8, 1, groups=2, bias=False)])                     # a 1x1 the fused op cannot run
        self.bns = nn.ModuleList([nn.BatchNorm2d(c.out_channels) for c in self.convs])
        self.bns[1] = nn.BatchNorm2d(8, affine=False)

    def forward(self, x):
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            x = bn(conv(x))
            x = torch.relu(x) if i % 2 == 0 else x
        return x


def _forward_ops(model, x):
    with torch.no_grad(), DispatchedOps() as ops:
        model(x)
    return ops


def test_every_conv_kind_folds_its_bn():
    x = torch.randn(2, 6, 9, 11)
    model = realistic(Convs(), x)
    converted = fastconv.convert(model, example_input=x)
    report = converted.fastconv_report
    assert [p for _, p, _ in report.replaced] == [
        "3x3 conv + BN + ReLU", "5x5 conv + BN", "3x3 depthwise conv + BN + ReLU",
        "3x3 grouped dilated conv + BN", "1x3 conv + BN + ReLU", "1x1 grouped conv + BN"]
    assert report.skipped == []
    assert all(type(converted.get_submodule(f"convs.{i}")) is ConvBN for i in range(6))
    assert set(converted.state_dict()) == set(model.state_dict())
    assert_same_function(model, converted, x)
    ops = _forward_ops(converted, x)
    assert ops.count("batch_norm") == 0 and ops.ops["aten.convolution"] == 6
    assert reference.rel_error(converted(x), copy.deepcopy(model).double()(x.double())) < 1e-5  # with autograd
    train_step_matches(model, fastconv.convert(model), x)


def test_folds_stay_fresh():
    """The fold is cached (fusion.folded) and recomputed when a source changes: an in-place
    edit, load_state_dict, .to(), a train-mode forward (running statistics)."""
    x = torch.randn(2, 6, 9, 11)
    model = realistic(Convs(), x)
    converted = fastconv.convert(model)

    def same():
        assert_same_function(model, converted, x)

    same()
    for m in (model, converted):
        with torch.no_grad():
            m.get_parameter("convs.0.weight").mul_(0.5)
            m.get_buffer("bns.2.running_var").mul_(3)
    same()
    state = {k: v * 1.1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    converted.load_state_dict(state)
    same()
    model.train()(x), converted.train()(x)  # new running statistics
    same()
    model.double(), converted.double()
    assert_same_function(model, converted, x.double(), tol=1e-12)


class TfSame(nn.Module):
    """timm's TF ports: a dynamic-SAME conv (Conv2dSame) and BatchNormAct2d(SiLU)."""

    def __init__(self, timm_layers):
        super().__init__()
        self.conv = timm_layers.create_conv2d(6, 8, 3, stride=2, padding="same")
        self.bn = timm_layers.BatchNormAct2d(8, act_layer=nn.SiLU)

    def forward(self, x):
        return self.bn(self.conv(x))


@pytest.mark.parametrize("size", [(9, 9), (8, 10)])
def test_timm_same_conv_and_norm_act_fold(size):
    timm_layers = pytest.importorskip("timm.layers")
    x = torch.randn(2, 6, *size)
    model = realistic(TfSame(timm_layers), x)
    assert type(model.conv).__name__ == "Conv2dSame"
    converted = fastconv.convert(model)
    assert [p for _, p, _ in converted.fastconv_report.replaced] == ["3x3 conv + BN-act(SiLU)"]
    assert_same_function(model, converted, x)
    assert _forward_ops(converted, x).count("batch_norm") == 0
    train_step_matches(model, fastconv.convert(model), x)


class ReadTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.shared, self.bn2, self.bn3 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        z = self.bn(y) + y  # the conv's raw output is read after the BN too
        return self.bn3(self.shared(self.bn2(self.shared(z))))  # one conv module, called twice


def test_near_misses_keep_their_bn():
    x = torch.randn(2, 4, 6, 6)
    model = realistic(ReadTwice(), x)
    converted = fastconv.convert(model)
    assert dict(converted.fastconv_report.skipped) == {
        "conv": "3x3 conv: its output is read by more than the norm after it",
        "shared": "conv module called more than once",
        "(model)": "add without ReLU after it",
        "bn": "norm after a conv left as it is (see the conv)",
        "bn2": "norm after a conv left as it is (see the conv)",
        "bn3": "norm after a conv left as it is (see the conv)"}
    assert converted.fastconv_report.replaced == []
    assert_same_function(model, converted, x)


class Residual(nn.Module):
    """MobileNet's / EfficientNet's block end: 1x1 conv + BN, stochastic depth, += input."""

    def __init__(self, drop):
        super().__init__()
        self.conv, self.bn, self.drop = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), drop

    def forward(self, x):
        y = self.drop(self.bn(self.conv(x)))
        y += x
        return y


def _drop(name):
    if name == "StochasticDepth":  # torchvision is an extra (fastconv[models]): the wheel test has none
        return pytest.importorskip("torchvision.ops").StochasticDepth(0.5, "row")
    return pytest.importorskip("timm.layers").DropPath(0.5)


@pytest.mark.parametrize("name", ["StochasticDepth", "DropPath"])
def test_stochastic_depth_before_an_add_is_the_identity_in_eval(name, monkeypatch):
    x = torch.randn(4, 8, 5, 5)
    model = realistic(Residual(_drop(name)), x)
    converted = fastconv.convert(model)
    assert converted.fastconv_report.replaced == [
        ("conv", f"(1x1 conv + BN + {name} + b)", "conv1x1_relu(residual=...)")]
    assert set(converted.state_dict()) == set(model.state_dict())
    calls = count_op_calls(monkeypatch)
    assert_same_function(model, converted, x)
    assert calls == {"conv1x1_relu+residual": 1}  # the add in the epilogue: no pass of its own
    # train mode: the same random draws as eager (same stream, same order), batch statistics
    outs = []
    for m in (model, converted):
        torch.manual_seed(1)
        outs.append(m.train()(x))
    assert reference.rel_error(outs[1], outs[0]) < 1e-5


def test_fold_equals_pytorchs_fold():
    """fusion.fold_bn against torch.nn.utils.fusion.fuse_conv_bn_weights (PyTorch's own fold,
    in float64): equal for every conv kind. fastconv keeps its own because PyTorch's returns
    detached Parameters (no gradient through the fold for an eval model under autograd) and
    computes in the weight's dtype (fold_bn computes half-precision folds in float32)."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    from fastconv.fusion import fold_bn

    model = realistic(Convs(), torch.randn(2, 6, 9, 11)).double()
    for conv, bn in zip(model.convs, model.bns):
        w, b = fold_bn(conv.weight, conv.bias, bn)
        w_ref, b_ref = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                            bn.weight, bn.bias)
        assert torch.allclose(w, w_ref, rtol=1e-12, atol=0) and torch.allclose(b, b_ref, rtol=1e-12, atol=1e-15)
