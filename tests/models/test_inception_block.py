"""fastconv.models.Inception against torchvision's block (float64), and what an eval-mode
GoogLeNet forward dispatches: no torch.cat, no separate branch max pool."""
import collections
import copy
import importlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastconv
from fastconv import models, reference
from tests.conftest import DEVICE, DTYPES, TOL, assert_close, gpu, make_input

tv = importlib.import_module("torchvision.models.googlenet")

# (in, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj): odd widths, 17 inputs; the
# sibling GEMM's 33 + 21 + 13 = 67 columns cross a column tile (BLOCK_N 64).
SMALL = (17, 33, 21, 7, 13, 5, 4)
OUT = SMALL[1] + SMALL[3] + SMALL[5] + SMALL[6]


def _blocks(dtype):
    """(ours, torchvision's in float64) with the same weights, BN calibrated on random inputs
    (realistic scales), checked to see its input: a one-pixel shift moves the output."""
    with torch.random.fork_rng(devices=[]):  # the test's own data stays that of its seed
        torch.manual_seed(0)
        x = torch.randn(4, SMALL[0], 7, 7)
        eager = reference.calibrate_batchnorm(tv.Inception(*SMALL), [x]).eval()
    with torch.no_grad():
        assert reference.rel_error(eager(x.roll(1, -1)), eager(x)) > 1e-2
    ours = models.Inception(*SMALL).eval()
    ours.load_state_dict(eager.state_dict())
    return ours.to(DEVICE, dtype), copy.deepcopy(eager).double().to(DEVICE)


def _tol(dtype):
    return TOL[dtype] * (3 if dtype != torch.float32 else 10)  # BN folding, 3 convs deep


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hw,layout", [(1, "nchw"), (7, "nhwc"), (13, "nchw")])
def test_eval_inference_equals_torchvision(backend, dtype, hw, layout, poison):
    """no_grad: every branch writes its slice of one (poisoned) output buffer."""
    if dtype == torch.float16 and DEVICE == "cpu" and backend == "torch" and hw == 13:
        pytest.skip("one fp16 case on the CPU's torch backend is enough")
    ours, eager = _blocks(dtype)
    x = make_input((2, SMALL[0], hw, hw), dtype, layout)
    x0 = x.clone()
    with torch.no_grad(), fastconv.use_backend(backend):
        out = ours(x)
        ref = eager(x.double())
    assert out.dtype == dtype and out.shape == (2, OUT, hw, hw)
    assert_close(out, ref, dtype, tol=_tol(dtype))
    layout_of_x = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    assert out.is_contiguous(memory_format=layout_of_x)
    assert torch.equal(x, x0)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype,hw,layout", [(torch.float32, 7, "nchw"), (torch.float16, 5, "nhwc"),
                                             pytest.param(torch.bfloat16, 13, "nhwc", marks=gpu)])
def test_eval_with_autograd_equals_torchvision(backend, dtype, hw, layout, poison):
    """Gradients in eval mode (e.g. saliency): the split and pool-projection ops' backward,
    through BN folding, against torchvision's block in float64."""
    ours, eager = _blocks(dtype)
    x = make_input((2, SMALL[0], hw, hw), dtype, layout, requires_grad=True)
    with fastconv.use_backend(backend):
        out = ours(x)
        grad = torch.randn_like(out)
        out.backward(grad)
    x64 = x.detach().double().requires_grad_()
    ref = eager(x64)
    ref.backward(grad.double())
    for what, a, b in [("output", out, ref), ("x.grad", x.grad, x64.grad)] + [
            (name, p.grad, q.grad) for (name, p), q in zip(ours.named_parameters(), eager.parameters())]:
        assert_close(a, b, dtype, what, _tol(dtype))


def test_train_mode_is_torchvisions_composition():
    """Train mode keeps the exact path (batch statistics), fused ops or not."""
    ours, eager = _blocks(torch.float32)
    ours.train(), eager.train()
    x = make_input((4, SMALL[0], 5, 5), torch.float32, "nhwc")
    assert_close(ours(x), eager(x.double()), torch.float32)
    assert not ours._fusable(x) and ours.eval()._fusable(x)


class _Recorder(TorchDispatchMode):
    """Records every op dispatched: `top` at the model's level, `inside` the aten ops that
    fastconv's ops run (re-entering this mode below their custom-op boundary)."""

    def __init__(self):
        super().__init__()
        self.top, self.inside, self.depth = collections.Counter(), collections.Counter(), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        (self.inside if self.depth else self.top)[str(func.overloadpacket)] += 1
        if func.namespace != "fastconv":
            return func(*args, **(kwargs or {}))
        self.depth += 1
        try:
            with self:
                return func.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU),
                                       *args, **(kwargs or {}))
        finally:
            self.depth -= 1


def test_googlenet_eval_dispatches_no_cat_and_no_branch_pool():
    torch.manual_seed(0)
    model = models.googlenet(aux_logits=False).eval()
    x = torch.randn(1, 3, 64, 64)
    recorder = _Recorder()
    with torch.no_grad(), fastconv.use_backend("torch"), recorder:
        model(x)
    ops = recorder.top + recorder.inside
    assert ops["aten.cat"] == 0, "a torch.cat ran"
    # the trunk's 4 pools run as SAME pools; the 9 branch pools are inside the projections
    assert recorder.top["fastconv.max_pool2d_same"] == 4
    assert not [op for op in recorder.top if "max_pool" in op and op.startswith("aten.")]
    assert recorder.top["fastconv.conv1x1_relu_split_into"] == 2 * 9
    assert recorder.top["fastconv.conv1x1_relu"] == 1  # conv2, the stem's 1x1


def test_benchmark_cases_run_on_the_cpu():
    """The benchmark's Inception-block and pool-projection cases (eager baseline) compute the same."""
    from fastconv import bench

    rows, _ = bench.run_ops(["fp32"], [1], "key", op_filter=["inception_block", "pool_conv1x1_relu"],
                            provider_filter=["eager", "torch"], progress=False)
    assert {(r["op"], r["provider"]) for r in rows} == {
        (op, p) for op in ("inception_block", "pool_conv1x1_relu") for p in ("eager", "torch")}
    assert all(r["rel_err_vs_eager"] < 1e-5 and r["GB/s"] > 0 for r in rows), rows
