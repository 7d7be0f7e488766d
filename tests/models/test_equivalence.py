"""Every reference architecture against torchvision (or, for the plain nets and
LeNet, an eager PyTorch twin): parameter count, strict state-dict loading, eval
outputs and train-mode gradients."""
import copy
import functools

import pytest
import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models import resnet as tv_resnet

import fastconv
from fastconv import _backend, models, reference
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


# LeNet's weights scaled into the sigmoids' non-linear range: with its default init the logits
# move by 1.5e-4 (relative) when the input moves by a pixel, too little to see a wrong layer.
LENET_WEIGHT_SCALE = 6


@functools.cache
def _eager_state(name):
    """The eager twin's parameters and buffers, the same for every test of `name`: its init
    (seed 0), then every BatchNorm calibrated on random images (reference.calibrate_batchnorm,
    so folding is tested at realistic scales: with GoogLeNet's init and merely random BN
    statistics every feature map is a per-channel constant and the logits cannot see the
    input). The self-check: shifting the input by a pixel moves the output by more than 1%
    (80 MODEL_TOL)."""
    build, twin, _, _, small = MODELS[name]
    with torch.random.fork_rng(devices=[]):  # the same state whichever test asks first
        torch.manual_seed(0)
        eager = twin()
        if name == "lenet5":
            with torch.no_grad():
                for layer in eager.modules():
                    if isinstance(layer, (nn.Conv2d, nn.Linear)):
                        layer.weight.mul_(LENET_WEIGHT_SCALE)
        x = _input(name, small, batch=4, device="cpu")
        reference.calibrate_batchnorm(eager, [x]).eval()
    with torch.no_grad():
        moved = reference.rel_error(eager(x[:2].roll(1, -1)), eager(x[:2]))
    assert moved > 1e-2, f"{name}: a one-pixel shift of the input moves the output by {moved:.1e} only"
    return eager.state_dict()


def _pair(name):
    """(ours, eager) with the calibrated eager weights (_eager_state), loaded into ours strictly
    and back. Built on the meta device: no init is computed for weights about to be replaced."""
    build, twin, *_ = MODELS[name]
    with torch.device("meta"):
        eager, ours = twin(), build()
    eager.load_state_dict({k: v.clone() for k, v in _eager_state(name).items()}, strict=True, assign=True)
    ours.load_state_dict({k: v.clone() for k, v in eager.state_dict().items()}, strict=True, assign=True)
    eager.load_state_dict(ours.state_dict(), strict=True)
    return ours.to(DEVICE), eager.to(DEVICE)


def _input(name, size, batch=2, device=DEVICE):
    return torch.randn(batch, 1 if name == "lenet5" else 3, size, size, device=device)


def _outputs(out):
    return list(out) if isinstance(out, tuple) else [out]


# Ours against eager, both float32 (IEEE: the fixture turns TF32 off), on the CPU or a GPU:
# they differ by rounding alone, a few eps per layer; 2^10 eps = 1.2e-4 (seen: up to 2.6e-5,
# ResNet-152 at 224 px).
MODEL_TOL = 2 ** 10 * torch.finfo(torch.float32).eps
# Where float32 itself is ill-conditioned (BatchNorm statistics over few values: small inputs,
# or a calibrated channel whose variance is near 0), ours must be as close to a float64 run as
# eager's float32 is, within 4x + MODEL_TOL: two float32 runs stray from float64 by different
# amounts (seen: ResNet-101's train step at 64 px, Triton backend, layer4.2.conv3's weight
# gradient 2.9e-2 from float64 where eager's float32 is 9.0e-3); a wrong layer is off by O(1).
# A parameter's gradient may also move by a max-pool window whose two largest values are closer
# than float32 rounding: two float32 runs route its gradient to different cells (seen: 5e-3 on
# GoogLeNet's inception4c.branch1 at 64 px, Triton backend, where eager's own float32 is 1.7e-4
# from float64). A wrong gradient is off by more.
ROUTING_SLACK = 1e-2


def _as_close_as_eager(what, ours, eager, exact, slack=MODEL_TOL):
    ours_err, eager_err = reference.rel_error(ours, exact), reference.rel_error(eager, exact)
    assert ours_err <= 4 * eager_err + slack, (
        f"{what}: {reference.rel_error(ours, eager):.2e} from eager; {ours_err:.2e} from float64 "
        f"where eager's float32 is {eager_err:.2e}")


def check_eval(name, size, backend):
    """Eval outputs equal to eager's (or, if ill-conditioned, as close to float64)."""
    ours, eager = _pair(name)
    ours.eval(), eager.eval()
    x = _input(name, size)
    with torch.no_grad(), fastconv.use_backend(backend):
        out = ours(x)
    with torch.no_grad():
        ref = eager(x)
        if reference.rel_error(out, ref) > MODEL_TOL:
            exact = copy.deepcopy(eager).double()(x.double())
            _as_close_as_eager(f"{name} eval ({backend}, {size}px)", out, ref, exact)


def _train_step(model, x, backend):
    """Outputs and parameter gradients of one forward/backward in train mode."""
    torch.manual_seed(1)  # the same dropout masks for every model
    with fastconv.use_backend(backend):
        outs = _outputs(model(x))
        torch.manual_seed(2)
        loss = sum((o * torch.randn(o.shape, device=o.device).to(o.dtype)).sum() for o in outs)
        loss.backward()
    return outs, {k: p.grad for k, p in model.named_parameters()}


def check_train(name, size, backend):
    """Train-mode outputs and every parameter's gradient equal to eager's, each within
    MODEL_TOL; where one is not, BatchNorm's batch statistics over few values (small inputs)
    can make the step ill-conditioned (eager's own float32 gradients then stray from float64
    by percents): then each output and each gradient of ours must be as close to a float64
    run as eager's float32 is (_as_close_as_eager; gradients with ROUTING_SLACK)."""
    ours, eager = _pair(name)
    e64 = copy.deepcopy(eager).double().train()
    ours.train(), eager.train()
    x = _input(name, size)
    (outs, grads), (ref_outs, ref_grads) = _train_step(ours, x, backend), _train_step(eager, x, "auto")
    assert len(outs) == len(ref_outs)
    errors = [reference.rel_error(o, r) for o, r in zip(outs, ref_outs)]
    errors += [reference.rel_error(g, ref_grads[k]) for k, g in grads.items()]
    if max(errors) <= MODEL_TOL:
        return
    exact_outs, exact_grads = _train_step(e64, x.double(), "auto")
    for i, (o, r, e) in enumerate(zip(outs, ref_outs, exact_outs)):
        _as_close_as_eager(f"{name} train ({backend}): output {i}", o, r, e)
    for k, g in grads.items():
        _as_close_as_eager(f"{name} train ({backend}): {k}.grad", g, ref_grads[k], exact_grads[k], ROUTING_SLACK)


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_and_strict_load(name):
    """On the meta device: the counts and names need no weights."""
    build, twin, expected, *_ = MODELS[name]
    with torch.device("meta"):
        ours, eager = build(), twin()
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in eager.parameters())
    if expected is not None:
        assert count == expected
    ours.load_state_dict(eager.state_dict(), strict=True, assign=True)
    eager.load_state_dict(ours.state_dict(), strict=True, assign=True)


def test_googlenet_without_aux_and_inception_block():
    assert sum(p.numel() for p in models.googlenet(aux_logits=False).parameters()) == 6_624_904
    block = models.Inception(192, 64, 96, 128, 16, 32, 32).eval()
    with torch.no_grad():
        assert block(torch.randn(1, 192, 28, 28)).shape == (1, 256, 28, 28)


# make test checks ResNet-50 and GoogLeNet against eager at full size; make check every net.
EVERYDAY = ("resnet50", "googlenet")


@pytest.mark.parametrize("name", [pytest.param(name, marks=() if name in EVERYDAY else pytest.mark.check)
                                  for name in MODELS])
def test_eval_full_size_torch_backend(name):
    check_eval(name, MODELS[name][3], "torch")


@pytest.mark.check
@pytest.mark.parametrize("name", MODELS)
def test_train_full_size_torch_backend(name):
    check_train(name, MODELS[name][3], "torch")


# Through Triton's interpreter, one net per kind of fastconv layer: LeNet's average pools, AlexNet's
# Linear+ReLU classifier (GEMMs with K up to 9216, split-K), ResNet-18's basic blocks, ResNet-50's
# bottlenecks and projections, GoogLeNet's Inception ops. VGG-16 (AlexNet's layer kinds) and
# ResNet-34/101/152 (deeper stacks of the same blocks) would add 17 minutes of CPU; the plain
# nets run no fastconv op (3x3 convs; their stem pool is not SAME on even sizes).
@pytest.mark.check
@pytest.mark.parametrize("name", ["lenet5", "alexnet", "resnet18", "resnet50", "googlenet"])
def test_eval_and_train_small_triton_backend(name, monkeypatch):
    backends, resolve = set(), _backend.resolve

    def recording_resolve(*args, **kwargs):  # which backend each op call ran on
        backend = resolve(*args, **kwargs)
        backends.add(backend)
        return backend

    monkeypatch.setattr(_backend, "resolve", recording_resolve)
    check_eval(name, MODELS[name][4], "triton")
    check_train(name, MODELS[name][4], "triton")
    assert backends == {"triton"}, f"{name} ran ops on {backends}: a Triton-backend test must run Triton kernels"


@gpu
@pytest.mark.parametrize("name", ["resnet50", "googlenet", "vgg16"])
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_full_size_gpu_backends(name, backend):
    check_eval(name, 224, backend)
    check_train(name, 224, backend)


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
