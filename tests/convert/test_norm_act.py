"""timm's norm-act layers: BatchNormAct2d folds like BatchNorm (its ReLU into the epilogue,
any other activation after the fused conv), inside ConvNormAct blocks; train mode exact."""
import pytest
import torch
from torch import nn

import fastconv
from fastconv.convert import Conv1x1BNAct
from tests.convert.helpers import assert_same_function, count_op_calls, realistic, train_step_matches

timm_layers = pytest.importorskip("timm.layers")


class Block(nn.Module):
    """Two ConvNormAct 1x1 blocks, the second without activation, and a shortcut."""

    def __init__(self, act_layer):
        super().__init__()
        self.expand = timm_layers.ConvNormAct(8, 16, 1, act_layer=act_layer)
        self.project = timm_layers.ConvNormAct(16, 8, 1, apply_act=False)

    def forward(self, x):
        return self.project(self.expand(x)) + x


@pytest.mark.parametrize("act_layer,pattern", [(nn.ReLU, "1x1 conv + BN-act(ReLU)"),
                                               (nn.SiLU, "1x1 conv + BN-act(SiLU)"),
                                               (nn.GELU, "1x1 conv + BN-act(GELU)")])
def test_conv_norm_act_folds(act_layer, pattern, monkeypatch):
    model = realistic(Block(act_layer), x := torch.randn(2, 8, 5, 7))
    converted = fastconv.convert(model, example_input=x)
    report = converted.fastconv_report
    assert [(n, p) for n, p, _ in report.replaced] == [
        ("expand.conv", pattern), ("project.conv", "(1x1 conv + BN + b)")]  # the add in project's epilogue
    assert type(converted.expand.conv) is Conv1x1BNAct
    assert type(converted.expand.bn) is timm_layers.BatchNormAct2d  # kept at its path
    assert set(converted.state_dict()) == set(model.state_dict())
    calls = count_op_calls(monkeypatch)
    assert_same_function(model, converted, x)
    assert calls == {"conv1x1_relu": 1, "conv1x1_relu+residual": 1}  # no separate add
    train_step_matches(model, fastconv.convert(model), x)


def test_conv_norm_act_triton_interpreter():
    model = realistic(Block(nn.SiLU), x := torch.randn(1, 8, 3, 5))
    assert_same_function(model, fastconv.convert(model), x, backend="triton")


def test_norm_act_with_a_drop_layer_is_not_folded():
    # DropBlock after the norm: extra work in train mode. The conv is fused alone.
    model = nn.Sequential(timm_layers.ConvNormAct(8, 8, 1, drop_layer=lambda: timm_layers.DropBlock2d(0.1, 3)))
    model = realistic(model, x := torch.randn(2, 8, 6, 6))  # traced as a child of a container
    converted = fastconv.convert(model, example_input=x)
    report = converted.fastconv_report
    assert dict(report.skipped) == {"0.bn": "norm-act layer with a DropBlock2d after the norm"}
    assert [(n, p) for n, p, _ in report.replaced] == [("0.conv", "1x1 conv")]
    assert type(converted[0].bn) is timm_layers.BatchNormAct2d
    assert_same_function(model, converted, x)


def test_norm_act_by_position_in_an_untraceable_module():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(4, 8, 1), timm_layers.BatchNormAct2d(8, act_layer=nn.SiLU),
                                      nn.Conv2d(8, 4, 1), timm_layers.BatchNormAct2d(4), nn.ReLU())

        def forward(self, x):
            return self.body(x) if x.sum() > -1e9 else x  # data-dependent: not traceable

    model = realistic(Branchy(), x := torch.randn(2, 4, 5, 5))
    converted = fastconv.convert(model)
    assert [p for _, p, _ in converted.fastconv_report.replaced] == [
        "1x1 conv + BN-act(SiLU)", "1x1 conv + BN-act(ReLU) + ReLU"]
    assert_same_function(model, converted, x)
    train_step_matches(model, fastconv.convert(model), x)


@pytest.mark.parametrize("size", [(7, 7), (8, 6)])
def test_timm_same_padded_1x1_conv_is_dense(size):
    # create_conv2d(..., stride=2, padding='same') is timm's Conv2dSame: its dynamic SAME pad
    # is zero for a 1x1 kernel on every size, so it is a dense 1x1 conv.
    x = torch.randn(2, 8, *size)
    model = realistic(nn.Sequential(timm_layers.create_conv2d(8, 16, 1, stride=2, padding="same"),
                                    nn.BatchNorm2d(16)), x)
    assert type(model[0]).__name__ == "Conv2dSame"
    converted = fastconv.convert(model)
    assert [p for _, p, _ in converted.fastconv_report.replaced] == ["1x1 conv + BN"]
    assert_same_function(model, converted, x)
