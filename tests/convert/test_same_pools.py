"""SAME pools of TF-ported models: timm's dynamic-pad pools and the F.pad(-inf) + max pool
pattern run as max_pool2d_same / avg_pool2d_same where that is exact (checked on the
input's size at run time), and as before everywhere else."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastconv
from tests.convert.helpers import assert_same_function, count_op_calls, sees_input


class TimmPools(nn.Module):
    def __init__(self, timm_layers):
        super().__init__()
        self.max = timm_layers.create_pool2d("max", 3, 2, padding="same")  # MaxPool2dSame
        self.avg = timm_layers.create_pool2d("avg", 2, 2, padding="same")  # AvgPool2dSame

    def forward(self, x):
        return self.avg(self.max(x))


@pytest.mark.parametrize("size,avg_fused", [((16, 16), True), ((9, 14), False), ((12, 4), True), ((1, 1), False)])
def test_timm_same_pools(size, avg_fused, monkeypatch):
    timm_layers = pytest.importorskip("timm.layers")
    model = TimmPools(timm_layers).eval()
    assert [type(m).__name__ for m in (model.max, model.avg)] == ["MaxPool2dSame", "AvgPool2dSame"]
    assert sees_input(model, torch.randn(2, 3, 16, 16))
    converted = fastconv.convert(model, example_input=torch.randn(1, 3, 16, 16))
    assert [(n, p) for n, p, _ in converted.fastconv_report.replaced] == [
        ("max", "MaxPool2dSame 3x3/2"), ("avg", "AvgPool2dSame 2x2/2")]
    calls = count_op_calls(monkeypatch)
    assert_same_function(model, converted, torch.randn(2, 3, *size))
    # max: SAME on every size; avg: only where SAME pads nothing (else timm's own forward)
    assert calls == {"max_pool2d_same": 1, **({"avg_pool2d_same": 1} if avg_fused else {})}


def test_timm_avg_same_pool_left_where_it_pads():
    timm_layers = pytest.importorskip("timm.layers")
    model = TimmPools(timm_layers).eval()
    converted = fastconv.convert(model, example_input=torch.randn(1, 3, 14, 14))  # avg sees 7x7
    assert dict(converted.fastconv_report.skipped) == {"avg": "avg pool counts its zero padding on 7x7"}
    assert_same_function(model, converted, torch.randn(2, 3, 14, 14))


class InfPaddedPools(nn.Module):
    """What TF ports write by hand: pad with -inf to SAME, then pool without padding."""

    def __init__(self):
        super().__init__()
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x):
        a = F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 3, stride=2)
        b = self.pool(F.pad(x, [0, 1, 0, 1], mode="constant", value=-float("inf")))
        return a + b


@pytest.mark.parametrize("size,fused", [((8, 8), True), ((9, 9), False), ((8, 10), True), ((7, 8), False)])
def test_inf_pad_then_max_pool(size, fused, monkeypatch):
    model = InfPaddedPools().eval()
    converted = fastconv.convert(model)
    assert sees_input(model, torch.randn(2, 3, *size))
    assert [(n, p) for n, p, _ in converted.fastconv_report.replaced] == [  # F.max_pool2d: by its module
        ("(model)", "-inf pad + max pool 3x3/2"), ("pool", "-inf pad + max pool 3x3/2")]
    calls = count_op_calls(monkeypatch)
    assert_same_function(model, converted, torch.randn(2, 3, *size))
    # (0, 1) is SAME's padding on even sizes only: odd sizes run the pad and the pool as written
    assert calls == ({"max_pool2d_same": 2} if fused else {})


def test_same_pools_triton_interpreter():
    model = InfPaddedPools().eval()
    assert_same_function(model, fastconv.convert(model), torch.randn(1, 2, 6, 6), backend="triton")


class FunctionalPools(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)  # a module: the model is traced

    def forward(self, x):
        a = F.max_pool2d(self.conv(x), 3, stride=1, padding=1)  # SAME on every size
        b = F.avg_pool2d(a, 3, 1, 1, count_include_pad=False)  # SAME on every size
        c = F.avg_pool2d(b, kernel_size=3, stride=1, padding=1)  # counts the padding
        return F.max_pool2d(c, 3, 2)  # SAME on some sizes only


def test_functional_pools(monkeypatch):
    model = FunctionalPools()
    x = torch.randn(2, 3, 9, 8)
    assert sees_input(model, x)
    converted = fastconv.convert(model, example_input=x)
    report = converted.fastconv_report
    # function calls are named by the module whose forward makes them, here the model itself
    assert [(n, p) for n, p, _ in report.replaced] == [
        ("(model)", "max pool 3x3/1 (SAME)"), ("(model) #2", "avg pool 3x3/1 (SAME)")]
    assert dict(report.skipped) == {
        "conv": "3x3 conv without a norm after it",
        "(model) #3": "avg pool counts the padding (count_include_pad=True)",
        "(model) #4": "functional pool, SAME only for some input sizes (not recorded for functions)"}
    calls = count_op_calls(monkeypatch)
    assert_same_function(model, converted, x)
    assert calls == {"max_pool2d_same": 1, "avg_pool2d_same": 1}
