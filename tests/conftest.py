"""Test configuration: without a GPU the Triton kernels run in Triton's
interpreter (TRITON_INTERPRET=1 must be set before triton is imported; torch
does not import it), on CPU tensors. Tests that need a CUDA device are marked
`gpu` and skipped without one."""
import os
import zlib

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
# Under xdist (make test: -n auto, a worker per core) one intra-op thread per worker: with
# torch's default of a thread per core, every small op's parallel region waits on threads the
# other workers have descheduled (fastconv.compare on efficientnet_b0, 2 busy cores: 35 s with
# 2 threads, 6 s with 1).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
# On a GPU, a Triton conv outside the tuning table would tune itself on first use: once per
# test shape, minutes in all. Tests pin configs or use the rule; tests of tuning turn it on.
os.environ.setdefault("FASTCONV_AUTOTUNE", "0")

import pytest  # noqa: E402

import fastconv  # noqa: E402
from fastconv import _checks  # noqa: E402

DEVICE = "cuda" if HAS_CUDA else "cpu"
gpu = pytest.mark.gpu
# --outcomes-log: each test's outcome streamed to a file as it finishes (bench/gpu_check.sh).
pytest_plugins = ["tests.outcomes"]

# Every kernel backend is tested with the same suite; "cuda" needs a GPU.
BACKENDS = ["torch", "triton", pytest.param("cuda", marks=gpu)]
# bfloat16 runs on the torch backend everywhere; Triton's interpreter computes it wrongly, so
# without a GPU a bf16 case of any other backend is skipped (pytest_collection_modifyitems).
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Relative error ||out - ref|| / ||ref|| against float64 (facts.md section 5); assert_close
# also holds every element within ELEMENT_TOL x TOL of |ref| + rms(ref): a sum of a few values
# rounded in the output dtype stays inside (the worst seen: 3.3 TOL, bf16 on the CPU, where
# PyTorch's 3x3/1 max pool backward adds up to 9 gradients in bf16), a wrong element does not.
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float64: 1e-12}
ELEMENT_TOL = 5
LAYOUTS = ["nchw", "nhwc", "strided"]


@pytest.hookimpl(tryfirst=True)  # before -m selects on the markers added here
def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device")
    skip_bf16 = pytest.mark.skip(reason="Triton's interpreter computes bfloat16 wrongly: "
                                        "bf16 runs on the torch backend only without a GPU")
    for item in items:
        if "quick" not in item.keywords:  # the tiers: -m quick (tests/test_quick_tier.py), -m deep
            item.add_marker(pytest.mark.deep)
        if not HAS_CUDA and "gpu" in item.keywords:
            item.add_marker(skip)
        elif not HAS_CUDA and _bf16_off_the_torch_backend(item):
            item.add_marker(skip_bf16)


def _bf16_off_the_torch_backend(item):
    params = item.callspec.params if hasattr(item, "callspec") else {}
    return params.get("dtype") is torch.bfloat16 and params.get("backend") != "torch"


@pytest.fixture(autouse=True)
def _fresh_state(request):
    """Each test starts on the default backend, with IEEE fp32 convolutions (TF32 is tested
    on its own), and a random seed of its own derived from its node id: the same data
    whether it runs alone, in its file or under xdist, so a failure reproduces alone."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    cudnn_tf32, matmul_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    fastconv.set_backend("auto")
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn_tf32, matmul_tf32
    fastconv.set_backend("auto")


@pytest.fixture
def poison(monkeypatch):
    """Fill every output the ops allocate with NaN (integers with 1) before the kernels write it,
    so an element a kernel forgets to write fails the comparison."""
    real = _checks.empty_like_layout

    def poisoned(x, shape, dtype=None):
        out = real(x, shape, dtype)
        return out.fill_(float("nan") if out.is_floating_point() else 1)

    monkeypatch.setattr(_checks, "empty_like_layout", poisoned)


def make_input(shape, dtype, layout="nchw", device=DEVICE, requires_grad=False):
    """Fresh standard-normal data in the given layout: "nchw" contiguous,
    "nhwc" channels_last, "strided" a non-contiguous view (every other channel
    and column of a larger tensor, offset by one row)."""
    N, C, H, W = shape
    if layout == "strided":
        base = torch.randn(N, 2 * C, H + 1, 2 * W, device=device).to(dtype)
        t = base[:, ::2, 1:, ::2]
    else:
        t = torch.randn(shape, device=device).to(dtype)
        if layout == "nhwc":
            t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(requires_grad)


def assert_close(out, ref, dtype, what="output", tol=None):
    """The relative norm error within tol (TOL[dtype] by default), and every element:
    |out - ref| within ELEMENT_TOL * tol of |ref| + rms(ref). The norm alone lets a few wrong
    elements among millions through (9.2M bf16 outputs at 1e-2 hide ~500 wholly wrong ones);
    the rms floor keeps the check fair to elements near zero after cancellation."""
    tol = tol or TOL[dtype]
    err = fastconv.reference.rel_error(out, ref)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.0e} ({dtype})"
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    excess = (out - ref).abs() - ELEMENT_TOL * tol * (ref.abs() + ref.square().mean().sqrt())
    if ref.numel() and excess.max() > 0:
        at = tuple(int(i) for i in torch.unravel_index(excess.argmax(), ref.shape))
        raise AssertionError(f"{what}: element {at} is {out[at].item():.6g} where float64 gives "
                             f"{ref[at].item():.6g}: off by more than {ELEMENT_TOL * tol:.0e} of |ref| + rms(ref) "
                             f"({dtype}; relative error of the whole {err:.3g})")


def grad_away_from_relu_edge(out, pre64, dtype, tol=None):
    """A random upstream gradient like `out` for an op ending in a ReLU, zero where the float64
    pre-activation `pre64` lies within the output dtype's rounding of 0: there the op's mask
    (taken from its rounded output) and float64's may rightly differ, and one such flip moved a
    float32 x.grad by 3.7% (CI, conv1x1 stride 2). Elsewhere both masks must agree."""
    band = ELEMENT_TOL * (tol or TOL[dtype]) * pre64.detach().square().mean().sqrt()
    edge = (pre64.detach().abs() <= band).to(out.device)
    return torch.randn_like(out).masked_fill_(edge, 0)


def assert_layout_like_eager(out, eager):
    """Same memory format as eager gives, where the layout is unambiguous."""
    for fmt in (torch.contiguous_format, torch.channels_last):
        if out.dim() == 4 and eager.is_contiguous(memory_format=fmt) != out.is_contiguous(memory_format=fmt):
            raise AssertionError(f"layout differs from eager: strides {out.stride()} vs {eager.stride()}")


def unchanged(before, after):
    return torch.equal(before.nan_to_num(), after.nan_to_num())
