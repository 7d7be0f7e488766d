"""fastconv.convert on torchvision models, fastconv's own models and a model of near misses.
Every model has calibrated BatchNorm (tests/convert/helpers.py `realistic`): its output
depends on its input, so an equivalence check can fail."""
import collections
import copy
import io

import pytest
import torch
import torchvision.models as tvm
from torch import nn

import fastconv
from fastconv import models, reference
from tests.conftest import gpu
from tests.convert.helpers import DispatchedOps, realistic

# name: (builder, {pattern: count} at 224x224)
TORCHVISION = {
    "resnet18": (tvm.resnet18, {"7x7 conv + BN + ReLU": 1, "3x3 conv + BN + ReLU": 8, "3x3 conv + BN": 8,
                                "relu(1x1 conv + BN + b)": 3,  # the projections take the add
                                "relu(a + b)": 5}),
    "resnet50": (tvm.resnet50, {"7x7 conv + BN + ReLU": 1, "1x1 conv + BN + ReLU": 16, "3x3 conv + BN + ReLU": 16,
                                "relu(1x1 conv + BN + b)": 16, "1x1 conv + BN": 4}),
    "googlenet": (lambda: tvm.googlenet(weights=None, aux_logits=True, init_weights=True),
                  {"7x7 conv + BN + ReLU": 1, "1x1 conv + BN + ReLU": 39, "3x3 conv + BN + ReLU": 19,
                   "max pool 3x3/2 (SAME)": 3, "max pool 2x2/2 (SAME)": 1, "max pool 3x3/1 (SAME)": 9,
                   "torch.cat of 4 branches": 9}),  # the 9 Inception blocks
    "vgg16": (tvm.vgg16, {"max pool 2x2/2 (SAME)": 5}),
    "alexnet": (tvm.alexnet, {}),
}


def _check_equal(original, converted, x, backend, tol=1e-5):
    """The converted model's error against the original in float64 is at most 3x the fp32
    eager model's own, plus tol. (Calibrated deep models amplify fp32 rounding: eager alone
    is up to 1e-4 from float64 at batch 1, 5x apart between inputs, so a fixed bound on
    converted - eager would pass or fail by the draw.)"""
    original.eval(), converted.eval()
    with torch.no_grad():
        ref64 = copy.deepcopy(original).double()(x.double())
        eager_err = reference.rel_error(original(x), ref64)
        with fastconv.use_backend(backend):
            err = reference.rel_error(converted(x), ref64)
    assert err <= 3 * eager_err + tol, f"relative error {err:.2e} (eager's own {eager_err:.2e})"


def _batch_norms(model):
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.check
@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_models_full_size(name):
    build, counts = TORCHVISION[name]
    x = torch.randn(2, 3, 224, 224)
    original = realistic(build(), x)
    converted = fastconv.convert(original, example_input=x)
    report = converted.fastconv_report
    assert dict(report.counts()) == counts
    _check_equal(original, converted, x, "torch")
    assert set(converted.state_dict()) == set(original.state_dict())
    # The report lists each module once, by a path of the original model, and its counts match
    # the model: one entry per BN folded, one per conv (1x1 fused or BN folded) or left.
    paths = [r.path for r in report.replaced] + [s.path for s in report.skipped]
    assert len(paths) == len(set(paths))
    assert set(paths) <= set(dict(original.named_modules()))
    assert sum("BN" in r.pattern for r in report.replaced) == _batch_norms(original)
    convs = {n for n, m in original.named_modules() if isinstance(m, nn.Conv2d)}
    assert convs <= set(paths)


@pytest.mark.check
@pytest.mark.parametrize("name,size", [("resnet50", 64), ("googlenet", 64)])
def test_torchvision_models_small_triton(name, size):
    build, _ = TORCHVISION[name]
    x = torch.randn(2, 3, size, size)
    original = realistic(build(), x)
    converted = fastconv.convert(original, example_input=x)
    _check_equal(original, converted, x, "triton")


def _timm(name):
    timm = pytest.importorskip("timm")
    return lambda: timm.create_model(name, pretrained=False)


# The target (22): converted, these run no BatchNorm (and the Inceptions no torch.cat)
# in eval. timm's networks normalise with BatchNormAct2d (BN and activation in one module): it
# folds too.
@pytest.mark.parametrize("build,size", [
    (lambda: tvm.googlenet(weights=None, init_weights=True), 64),
    (tvm.resnet50, 64),
    (lambda: _timm("inception_v3")(), 75),
    (lambda: _timm("resnet50")(), 64)], ids=["tv-googlenet", "tv-resnet50", "timm-inception_v3", "timm-resnet50"])
def test_eval_forward_dispatches_no_batch_norm_and_no_cat(build, size):
    x = torch.randn(1, 3, size, size)
    original = realistic(build(), x)
    converted = fastconv.convert(original, example_input=x)
    assert sum("BN" in r.pattern for r in converted.fastconv_report.replaced) == _batch_norms(original)
    with torch.no_grad(), fastconv.use_backend("torch"):
        with DispatchedOps() as eager:
            original(x)
        converted(x)  # the first forward folds (cached from then on)
        with DispatchedOps() as ops:
            converted(x)
    assert eager.count("batch_norm") > 0 and ops.count("batch_norm") == 0, ops.ops
    assert ops.ops["aten.cat"] == 0, ops.ops
    _check_equal(original, converted, x, "torch")
    with torch.no_grad():  # the same function: in float64 the two agree to rounding
        assert reference.rel_error(converted.double()(x.double()), original.double()(x.double())) < 1e-10


@pytest.mark.parametrize("name", ["resnet50", "googlenet", "lenet5"])
def test_fastconv_models_convert_without_harm(name):
    x = torch.randn(2, 1, 28, 28) if name == "lenet5" else torch.randn(2, 3, 64, 64)
    original = getattr(models, name)()
    if name == "lenet5":  # at its init scale its sigmoids sit at 0.5: the logits barely see x
        with torch.no_grad():
            for w in (p for p in original.parameters() if p.dim() > 1):
                w.mul_(8)
    original = realistic(original, x)
    converted = fastconv.convert(original, example_input=x)
    _check_equal(original, converted, x, "torch")


def test_train_mode_gradients_match():
    x = torch.randn(4, 3, 64, 64)
    original = realistic(tvm.resnet18(), x).train()
    converted = fastconv.convert(original)
    grads = []
    for model in (original, converted):
        out = model(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
    for k, g in grads[0].items():
        assert reference.rel_error(grads[1][k], g) < 1e-4, k
    # running statistics updated alike (train-mode BN stays a layer)
    for (k, a), b in zip(original.state_dict().items(), converted.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-6), k


class NearMisses(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv3x3 = nn.Conv2d(8, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 1, groups=2)
        self.dilated = nn.Conv2d(8, 8, 1, dilation=2)
        self.bn = nn.BatchNorm2d(8)
        self.stem_pool = nn.MaxPool2d(3, 2, padding=1)  # ResNet's stem pool
        self.fusable = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = torch.relu(self.conv3x3(x))
        y = torch.relu(self.grouped(y))
        y = torch.relu(self.bn(self.dilated(y)))
        z = y + x  # an add without ReLU
        z = torch.relu(self.fusable(z))
        return self.stem_pool(z)


def test_near_misses_left_alone():
    x = torch.randn(2, 8, 16, 16)
    model = realistic(NearMisses(), x)
    converted = fastconv.convert(model, example_input=x)
    report = converted.fastconv_report
    assert dict(report.skipped) == {
        "conv3x3": "3x3 conv without a norm after it", "grouped": "grouped conv",
        "(model)": "add without ReLU after it", "stem_pool": "pool pads symmetrically: not SAME on 16x16"}
    assert [(n, p) for n, p, _ in report.replaced] == [  # the dilated 1x1 conv keeps its conv, BN folded
        ("dilated", "1x1 dilated conv + BN + ReLU"), ("fusable", "1x1 conv + ReLU")]
    for name in ("conv3x3", "grouped", "stem_pool"):
        assert type(converted.get_submodule(name)) is type(getattr(model, name))
    _check_equal(model, converted, x, "torch")
    assert "left      conv3x3: 3x3 conv without a norm after it" in str(report)


def test_converted_model_state_dict_twice_compile_and_dtype():
    x = torch.randn(2, 3, 64, 64)
    original = realistic(tvm.resnet18(), x)
    converted = fastconv.convert(original, example_input=x)
    twice = fastconv.convert(converted, example_input=x)
    assert twice.fastconv_report.replaced == []
    _check_equal(original, twice, x, "torch")
    buf = io.BytesIO()
    torch.save(converted.state_dict(), buf)
    buf.seek(0)
    fresh = fastconv.convert(tvm.resnet18().eval())
    fresh.load_state_dict(torch.load(buf), strict=True)
    original.load_state_dict(fresh.state_dict(), strict=True)
    _check_equal(original, fresh, x, "torch")
    double = fastconv.convert(original.double())
    assert next(double.parameters()).dtype == torch.float64
    torch._dynamo.reset()
    compiled = torch.compile(converted, fullgraph=True, backend="aot_eager")
    _check_equal(original.float(), compiled, x, "torch")


@gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_converted_resnet50_on_gpu_backends(backend):
    x = torch.randn(8, 3, 224, 224, device="cuda")
    original = realistic(tvm.resnet50().cuda(), x)
    converted = fastconv.convert(original, example_input=x)
    _check_equal(original, converted, x, backend)


def test_untraceable_sequential_falls_back_by_position():
    class Branchy(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3),
                                      nn.BatchNorm2d(4))

        def forward(self, x):
            return self.body(x) if x.sum() > -1e9 else x

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(Branchy(), nn.MaxPool2d(3, 1, 1))

        def forward(self, x):
            return self.seq(x) if x.mean() < 1e9 else x

    x = torch.randn(2, 4, 9, 9)
    model = realistic(Outer(), x)
    converted = fastconv.convert(model)
    report = collections.OrderedDict((n, p) for n, p, _ in converted.fastconv_report.replaced)
    assert report == {"seq.0.body.0": "1x1 conv + BN + ReLU", "seq.0.body.3": "3x3 conv + BN",
                      "seq.1": "max pool 3x3/1 (SAME)"}  # the 3x3/1 pad-1 pool is SAME at every size
    with torch.no_grad(), DispatchedOps() as ops:
        converted(x)
    assert ops.count("batch_norm") == 0
    _check_equal(model, converted, x, "torch")
    assert set(converted.state_dict()) == set(model.state_dict())
