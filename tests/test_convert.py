"""fastconv.convert on torchvision models, fastconv's own models and a model of near misses."""
import io

import pytest
import torch
import torchvision.models as tvm
from torch import nn

import fastconv
from fastconv import models, reference
from fastconv.reference import randomize_batchnorm
from tests.conftest import gpu


# name: (builder, {pattern: count} at 224x224)
TORCHVISION = {
    "resnet18": (tvm.resnet18, {"relu(a + b)": 5, "1x1 conv + BN": 3,  # 3 adds in the projection's epilogue
                                "relu(1x1 conv + BN + b)": 3}),
    "resnet50": (tvm.resnet50, {"relu(1x1 conv + BN + b)": 16, "1x1 conv + BN + ReLU": 16, "1x1 conv + BN": 20}),
    "googlenet": (lambda: tvm.googlenet(weights=None, aux_logits=True, init_weights=True),
                  {"1x1 conv + BN + ReLU": 39, "max pool 3x3/2 (SAME)": 3, "max pool 2x2/2 (SAME)": 1,
                   "max pool 3x3/1 (SAME)": 9, "3 sibling 1x1 convs + ReLU on one input": 9,
                   "3x3/1 max pool -> 1x1 conv + ReLU": 9}),  # the 9 Inception blocks
    "vgg16": (tvm.vgg16, {"max pool 2x2/2 (SAME)": 5}),
    "alexnet": (tvm.alexnet, {}),
}


def _check_equal(original, converted, x, backend, tol=1e-4):
    original.eval(), converted.eval()
    with torch.no_grad():
        ref = original(x)
        with fastconv.use_backend(backend):
            out = converted(x)
    err = reference.rel_error(out, ref)
    assert err < tol, f"relative error {err:.2e}"


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_models_full_size(name):
    build, counts = TORCHVISION[name]
    original = randomize_batchnorm(build()).eval()
    x = torch.randn(2, 3, 224, 224)
    converted = fastconv.convert(original, example_input=x)
    assert dict(converted.fastconv_report.counts()) == counts
    _check_equal(original, converted, x, "torch")
    assert set(converted.state_dict()) == set(original.state_dict())


@pytest.mark.parametrize("name,size", [("resnet50", 64), ("googlenet", 64)])
def test_torchvision_models_small_triton(name, size):
    build, _ = TORCHVISION[name]
    original = randomize_batchnorm(build()).eval()
    x = torch.randn(2, 3, size, size)
    converted = fastconv.convert(original, example_input=x)
    _check_equal(original, converted, x, "triton")


@pytest.mark.parametrize("name", ["resnet50", "googlenet", "lenet5"])
def test_fastconv_models_convert_without_harm(name):
    original = randomize_batchnorm(getattr(models, name)()).eval()
    x = torch.randn(2, 1, 28, 28) if name == "lenet5" else torch.randn(2, 3, 64, 64)
    converted = fastconv.convert(original, example_input=x)
    _check_equal(original, converted, x, "torch")


def test_train_mode_gradients_match():
    original = randomize_batchnorm(tvm.resnet18()).train()
    converted = fastconv.convert(original)
    x = torch.randn(4, 3, 64, 64)
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
    model = randomize_batchnorm(NearMisses()).eval()
    x = torch.randn(2, 8, 16, 16)
    converted = fastconv.convert(model, example_input=x)
    report = converted.fastconv_report
    skipped = dict(report.skipped)
    assert skipped["conv3x3"] == "3x3 conv"
    assert skipped["grouped"] == "grouped conv"
    assert skipped["dilated"] == "dilated conv"
    assert skipped["stem_pool"].startswith("pool pads symmetrically")
    assert any(r == "add without ReLU after it" for r in skipped.values())
    assert [(n, p) for n, p, _ in report.replaced] == [("fusable", "1x1 conv + ReLU")]
    for name in ("conv3x3", "grouped", "dilated", "stem_pool"):
        assert type(converted.get_submodule(name)) is type(getattr(model, name))
    _check_equal(model, converted, x, "torch")
    assert "left      conv3x3: 3x3 conv" in str(report)


def test_converted_model_state_dict_twice_compile_and_dtype():
    original = randomize_batchnorm(tvm.resnet18()).eval()
    x = torch.randn(2, 3, 64, 64)
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
    half = fastconv.convert(original.double())
    assert next(half.parameters()).dtype == torch.float64
    torch._dynamo.reset()
    compiled = torch.compile(converted, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert reference.rel_error(compiled(x), original.float()(x)) < 1e-4


@gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_converted_resnet50_on_gpu_backends(backend):
    original = randomize_batchnorm(tvm.resnet50()).eval().cuda()
    x = torch.randn(8, 3, 224, 224, device="cuda")
    converted = fastconv.convert(original, example_input=x)
    _check_equal(original, converted, x, backend, tol=1e-3)  # IEEE fp32 both sides, 50 layers deep


def test_untraceable_sequential_falls_back_by_position():
    class Branchy(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))

        def forward(self, x):
            return self.body(x) if x.sum() > -1e9 else x

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(Branchy(), nn.MaxPool2d(3, 1, 1))

        def forward(self, x):
            return self.seq(x) if x.mean() < 1e9 else x

    model = randomize_batchnorm(Outer()).eval()
    x = torch.randn(2, 4, 9, 9)
    converted = fastconv.convert(model)
    names = [n for n, _, _ in converted.fastconv_report.replaced]
    assert "seq.1" in names  # the 3x3/1 pad-1 pool is SAME at every size
    assert converted.seq[0].body  # traced or by position: the 1x1 conv + BN + ReLU is fused
    assert any(p.startswith("1x1 conv + BN + ReLU") for _, p, _ in converted.fastconv_report.replaced)
    _check_equal(model, converted, x, "torch")
    assert set(converted.state_dict()) == set(model.state_dict())


# timm's inception_v3 normalises with BatchNormAct2d (BN and activation in one module):
# its 40 1x1 convs fold it (tests/convert/ has the norm-act and near-miss cases).
@pytest.mark.parametrize("name,size,replaced", [("resnet26", 96, 28), ("inception_v3", 96, 40)])
def test_timm_models(name, size, replaced):
    timm = pytest.importorskip("timm")
    model = randomize_batchnorm(timm.create_model(name, pretrained=False)).eval()
    x = torch.randn(2, 3, size, size)
    converted = fastconv.convert(model, example_input=x)
    assert len(converted.fastconv_report.replaced) == replaced
    _check_equal(model, converted, x, "torch")
