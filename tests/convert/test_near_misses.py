"""Every near-miss kind is left as it is, reported with its reason, and the model unchanged
in what it computes."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastconv
from tests.convert.helpers import DispatchedOps, assert_same_function, realistic, sees_input


class ScaledBN(nn.BatchNorm2d):
    """A BatchNorm subclass doing extra work: must not be folded as a BatchNorm2d."""

    def forward(self, x):
        return super().forward(x) * 2


class Convs(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv, self.bn = conv, nn.BatchNorm2d(conv.out_channels)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def _std_conv():
    return pytest.importorskip("timm.layers").StdConv2d(8, 8, 1)


def test_conv_subclass_with_its_own_forward_is_left():
    model = realistic(Convs(_std_conv()), x := torch.randn(2, 8, 7, 7))  # weight standardization
    converted = fastconv.convert(model, example_input=x)
    assert converted.fastconv_report.skipped == [
        ("conv", "StdConv2d: a conv subclass with its own forward"),
        ("bn", "norm after a conv left as it is (see the conv)")]
    assert converted.fastconv_report.replaced == []
    assert type(converted.conv) is type(model.conv)
    assert_same_function(model, converted, x)


@pytest.mark.parametrize("make,kind", [
    (lambda: nn.Conv2d(8, 8, 1, groups=2), "grouped"),
    (lambda: nn.Conv2d(8, 8, 1, dilation=2, stride=2), "dilated"),
    (lambda: nn.Conv2d(8, 8, 1, padding=1), "padded"),
    (lambda: nn.Conv2d(8, 8, 1, padding_mode="reflect"), "padded"),
])
def test_1x1_convs_the_fused_op_cannot_run_still_fold_their_bn(make, kind):
    model = realistic(Convs(make()), x := torch.randn(2, 8, 7, 7))
    converted = fastconv.convert(model, example_input=x)
    assert converted.fastconv_report.skipped == []
    assert converted.fastconv_report.replaced == [
        ("conv", f"1x1 {kind} conv + BN + ReLU", "conv2d (BN folded in eval)")]
    assert_same_function(model, converted, x)
    with torch.no_grad(), DispatchedOps() as ops:
        converted(x)
    assert ops.count("batch_norm") == 0 and ops.count("fastconv") == 0  # one aten conv


def test_norm_with_extra_work_is_not_folded():
    model = Convs(nn.Conv2d(8, 8, 1))
    model.bn = ScaledBN(8)
    model = realistic(model, x := torch.randn(2, 8, 5, 5))
    converted = fastconv.convert(model, example_input=x)
    report = converted.fastconv_report
    assert report.skipped == [("bn", "ScaledBN: not a BatchNorm2d (or timm BatchNormAct2d) to fold")]
    assert [(n, p) for n, p, _ in report.replaced] == [("conv", "1x1 conv")]  # the conv alone
    assert type(converted.bn) is ScaledBN
    assert_same_function(model, converted, x)


class ZeroPaddedPools(nn.Module):
    """BiT's "fixed" stem pad (a constant zero pad, then a max pool) as a graph pattern
    and as an nn.Sequential."""

    def __init__(self):
        super().__init__()
        self.pool = nn.MaxPool2d(3, 2)
        self.stem = nn.Sequential(nn.ConstantPad2d(1, 0.0), nn.MaxPool2d(3, 2))

    def forward(self, x):
        a = F.max_pool2d(F.pad(x, (0, 1, 0, 1)), 3, 2)  # the SAME pads of 8x8, but zeros
        b = self.pool(F.pad(x, (0, 1, 0, 1), value=0.5))
        return a + b + self.stem(x)


def test_max_pools_on_zero_padding_are_left():
    model = ZeroPaddedPools().eval()
    x = torch.randn(2, 3, 8, 8) - 3  # mostly negative: a padded zero would win
    assert sees_input(model, x)
    converted = fastconv.convert(model, example_input=x)
    skipped = dict(converted.fastconv_report.skipped)
    zero = "max pool on zero padding: a padded zero can win the max, SAME's -inf cannot"
    assert skipped["(model)"] == zero  # F.max_pool2d: named by the module whose forward calls it
    assert skipped["pool"] == "max pool on 0.5 padding: a padded 0.5 can win the max, SAME's -inf cannot"
    assert skipped["stem.1"] == zero
    assert converted.fastconv_report.replaced == []
    assert type(converted.pool) is nn.MaxPool2d and type(converted.get_submodule("stem.1")) is nn.MaxPool2d
    assert_same_function(model, converted, x)


def test_avg_pools_that_count_the_padding_are_left():
    timm_layers = pytest.importorskip("timm.layers")

    class Pools(nn.Module):
        def __init__(self):
            super().__init__()
            self.avg = nn.AvgPool2d(3, 1, 1)  # count_include_pad=True: the default
            self.tf_avg = timm_layers.AvgPool2dSame(3, 2)  # F.pad zeros, counted

        def forward(self, x):
            return self.tf_avg(self.avg(x))

    model = Pools().eval()
    x = torch.randn(2, 3, 8, 8)
    assert sees_input(model, x)
    converted = fastconv.convert(model, example_input=x)
    assert dict(converted.fastconv_report.skipped) == {
        "avg": "avg pool counts the padding (count_include_pad=True)",
        "tf_avg": "avg pool counts its zero padding on 8x8"}
    assert type(converted.avg) is nn.AvgPool2d and type(converted.tf_avg) is timm_layers.AvgPool2dSame
    assert_same_function(model, converted, x)


def test_zero_padded_max_pool_by_position():
    model = nn.Sequential(nn.ZeroPad2d(1), nn.MaxPool2d(3, 2))  # a Sequential: not traced
    x = torch.randn(1, 2, 6, 6) - 3
    assert sees_input(model, x)
    converted = fastconv.convert(model, example_input=x)
    assert converted.fastconv_report.skipped == [
        ("1", "max pool on zero padding: a padded zero can win the max, SAME's -inf cannot")]
    assert type(converted[1]) is nn.MaxPool2d
    assert_same_function(model, converted, x)


class MixedConvBlock(nn.Module):
    """MixNet's block end (timm's MixedConv2d): the channels split over 1x1 convs,
    concatenated, one BN over the concatenation, then the residual add (no ReLU)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.bn = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(8)

    def forward(self, x):
        xa, xb = torch.split(x, [4, 4], 1)
        return self.bn(torch.cat([self.a(xa), self.b(xb)], 1)) + x


def test_mixnet_concat_norm_and_its_add_are_named():
    model = realistic(MixedConvBlock(), x := torch.randn(2, 8, 5, 5))
    converted = fastconv.convert(model)
    report = converted.fastconv_report
    assert [(n, p) for n, p, _ in report.replaced] == [("a", "1x1 conv"), ("b", "1x1 conv")]
    assert dict(report.skipped) == {
        "(model)": "add without ReLU after a norm of a torch.cat: no one conv's epilogue takes it",
        "bn": "norm of a torch.cat: no one conv to fold it into"}
    assert_same_function(model, converted, x)
