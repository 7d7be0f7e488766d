"""Every reference architecture against torchvision (or, for the plain nets and
LeNet, an eager PyTorch twin): parameter count, strict state-dict loading, eval
outputs and train-mode gradients."""
import copy

import pytest
import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models import resnet as tv_resnet

import fastconv
from fastconv import models, reference
from tests.conftest import DEVICE, gpu


class EagerPlainBlock(tv_resnet.BasicBlock):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.downsample = None

    def forward(self, x):
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


def eager_lenet5():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.Sigmoid(), nn.AvgPool2d(2, 2),
        nn.Conv2d(6, 16, 5), nn.Sigmoid(), nn.AvgPool2d(2, 2), nn.Flatten(),
        nn.Linear(400, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, 10))


# name: (fastconv builder, eager twin, parameter count (facts.md), full size, small size).
# The small size keeps every layer (and >= 2x2 maps at the last BatchNorm, whose batch
# statistics over fewer values amplify rounding) and is what Triton's interpreter runs.
MODELS = {
    "lenet5": (models.lenet5, eager_lenet5, 61_706, 28, 28),
    "alexnet": (models.alexnet, tvm.alexnet, 61_100_840, 224, 64),
    "vgg16": (models.vgg16, tvm.vgg16, 138_357_544, 224, 32),
    "resnet18": (models.resnet18, tvm.resnet18, 11_689_512, 224, 64),
    "resnet34": (models.resnet34, tvm.resnet34, 21_797_672, 224, 64),
    "resnet50": (models.resnet50, tvm.resnet50, 25_557_032, 224, 64),
    "resnet101": (models.resnet101, tvm.resnet101, 44_549_160, 224, 64),
    "resnet152": (models.resnet152, tvm.resnet152, 60_192_808, 224, 64),
    "plain18": (models.plain18, lambda: tv_resnet.ResNet(EagerPlainBlock, [2, 2, 2, 2]), None, 224, 64),
    "plain34": (models.plain34, lambda: tv_resnet.ResNet(EagerPlainBlock, [3, 4, 6, 3]), None, 224, 64),
    "googlenet": (models.googlenet, lambda: tvm.googlenet(weights=None, aux_logits=True, init_weights=True),
                  13_004_888, 224, 64),
}


def _pair(name):
    """(ours, eager) with the eager model's weights, BN statistics randomised (so that
    folding is tested), loaded into ours strictly."""
    build, twin, *_ = MODELS[name]
    torch.manual_seed(0)
    eager = reference.randomize_batchnorm(twin())
    ours = build()
    ours.load_state_dict(eager.state_dict(), strict=True)
    eager.load_state_dict(ours.state_dict(), strict=True)
    return ours.to(DEVICE), eager.to(DEVICE)


def _input(name, size, batch=2):
    return torch.randn(batch, 1 if name == "lenet5" else 3, size, size, device=DEVICE)


def _outputs(out):
    return list(out) if isinstance(out, tuple) else [out]


def check_eval(name, size, backend, tol=1e-4):
    ours, eager = _pair(name)
    ours.eval(), eager.eval()
    x = _input(name, size)
    with torch.no_grad(), fastconv.use_backend(backend):
        out = ours(x)
    with torch.no_grad():
        ref = eager(x)
    err = reference.rel_error(out, ref)
    assert err < tol, f"{name} eval ({backend}, {size}px): relative error {err:.2e}"


def _train_step(model, x, backend):
    """Outputs and parameter gradients of one forward/backward in train mode."""
    torch.manual_seed(1)  # the same dropout masks for every model
    with fastconv.use_backend(backend):
        outs = _outputs(model(x))
        torch.manual_seed(2)
        loss = sum((o * torch.randn(o.shape, device=o.device).to(o.dtype)).sum() for o in outs)
        loss.backward()
    return outs, {k: p.grad for k, p in model.named_parameters()}


def check_train(name, size, backend, tol=1e-4):
    """Train-mode outputs and gradients equal to eager's. Where they differ by more than
    tol, BatchNorm's batch statistics over few values (small inputs) can make the step
    ill-conditioned (eager's own float32 gradients then stray from float64 by percents):
    then ours must be as close to a float64 run as eager's float32 result is (within
    2x + tol), per output and over all gradients together."""
    ours, eager = _pair(name)
    e64 = copy.deepcopy(eager).double().train()
    ours.train(), eager.train()
    x = _input(name, size)
    (outs, grads), (ref_outs, ref_grads) = _train_step(ours, x, backend), _train_step(eager, x, "auto")
    assert len(outs) == len(ref_outs)
    errors = [reference.rel_error(o, r) for o, r in zip(outs, ref_outs)]
    errors += [reference.rel_error(g, ref_grads[k]) for k, g in grads.items()]
    if max(errors) < tol:
        return
    exact_outs, exact_grads = _train_step(e64, x.double(), "auto")
    flat = (lambda gs: torch.cat([g.double().flatten() for g in gs.values()]))
    checks = [(f"output {i}", o, r, e) for i, (o, r, e) in enumerate(zip(outs, ref_outs, exact_outs))]
    checks.append(("all gradients", flat(grads), flat(ref_grads), flat(exact_grads)))
    for what, o, r, e in checks:
        ours_err, eager_err = reference.rel_error(o, e), reference.rel_error(r, e)
        assert ours_err <= 2 * eager_err + tol, (
            f"{name} train ({backend}): {what}: {reference.rel_error(o, r):.2e} from eager; "
            f"{ours_err:.2e} from float64 where eager's float32 is {eager_err:.2e}")


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_and_strict_load(name):
    ours, eager = _pair(name)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in eager.parameters())
    if MODELS[name][2] is not None:
        assert count == MODELS[name][2]


def test_googlenet_without_aux_and_inception_block():
    assert sum(p.numel() for p in models.googlenet(aux_logits=False).parameters()) == 6_624_904
    block = models.Inception(192, 64, 96, 128, 16, 32, 32).eval()
    with torch.no_grad():
        assert block(torch.randn(1, 192, 28, 28)).shape == (1, 256, 28, 28)


@pytest.mark.parametrize("name", MODELS)
def test_eval_full_size_torch_backend(name):
    check_eval(name, MODELS[name][3], "torch")


@pytest.mark.parametrize("name", MODELS)
def test_train_full_size_torch_backend(name):
    check_train(name, MODELS[name][3], "torch")


@pytest.mark.parametrize("name", MODELS)
def test_eval_and_train_small_triton_backend(name):
    check_eval(name, MODELS[name][4], "triton")
    if name != "vgg16":  # its 25088 -> 4096 LinearReLU is slow in the interpreter; AlexNet
        check_train(name, MODELS[name][4], "triton")  # trains the same layer types


@gpu
@pytest.mark.parametrize("name", ["resnet50", "googlenet", "vgg16"])
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_full_size_gpu_backends(name, backend):
    check_eval(name, 224, backend)
    check_train(name, 224, backend, tol=1e-3)


@gpu
@pytest.mark.parametrize("name", ["resnet50", "googlenet"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_half_precision_eval(name, dtype, backend):
    """In 16-bit, as close to a float64 run as eager torchvision in the same dtype is."""
    ours, eager = _pair(name)
    ours.eval(), eager.eval()
    x = _input(name, 224, batch=4)
    with torch.no_grad():
        exact = copy.deepcopy(eager).double()(x.double())
        eager_err = reference.rel_error(eager.to(dtype)(x.to(dtype)), exact)
        with fastconv.use_backend(backend):
            ours_err = reference.rel_error(ours.to(dtype)(x.to(dtype)), exact)
    assert ours_err <= 1.5 * eager_err + 1e-3, f"{ours_err:.2e} vs eager's {eager_err:.2e}"
