"""conv1x1_relu_split / pool_conv1x1_relu / conv1x1_relu_split_into against float64
references written from the definitions (fastconv.reference)."""
import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv import reference
from tests.conftest import (
    DEVICE,
    DTYPES,
    assert_close,
    assert_layout_like_eager,
    gpu,
    grad_away_from_relu_edge,
    make_input,
    unchanged,
)

# (N, Cin, H, W, layout, sizes): odd channels, 1x1 / odd images, every layout, 1 to 3
# outputs; a column tile (>= 16 wide) spanning outputs; Cin = 40 > BLOCK_K (two K steps).
# Several column tiles: 130 channels of one output (BLOCK_N 128) and 70 over three (BLOCK_N
# 64: the second tile holds only the third output's last 6 columns).
CASES = [(2, 3, 7, 7, "nhwc", [5, 9, 3]), (1, 17, 13, 13, "nchw", [3, 14]),
         (2, 17, 1, 1, "strided", [130]), (1, 40, 5, 3, "nhwc", [33, 20, 17])]


def _ref(x, w, b, pool, relu=True):
    a = reference.max_pool2d_same(x, 3, 1) if pool else x.double()
    return reference.conv1x1_relu(a, w, b, relu=relu)


def _params(cout, cin, dtype, bias=True):
    w = (torch.randn(cout, cin, 1, 1, device=DEVICE) / cin ** 0.5).to(dtype).requires_grad_()
    return w, (torch.randn(cout, device=DEVICE).to(dtype).requires_grad_() if bias else None)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("pool", [False, True])
def test_split_forward_backward(backend, dtype, case, pool, poison):
    N, cin, H, W, layout, sizes = case
    x = make_input((N, cin, H, W), dtype, layout, requires_grad=True)
    w, b = _params(sum(sizes), cin, dtype, bias=len(sizes) != 2)
    inputs = [t.detach().clone() for t in (x, w) + ((b,) if b is not None else ())]
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if b is not None else None
    ref = _ref(x64, w64, b64, pool)
    with fastconv.use_backend(backend):
        outs = fastconv.conv1x1_relu_split(x, w, b, sizes, pool=pool)
        pre = _ref(x64, w64, b64, pool, relu=False).split(sizes, 1)
        grads = [grad_away_from_relu_edge(o, p, dtype) for o, p in zip(outs, pre)]
        torch.autograd.backward(outs, grads)
    ref.backward(torch.cat(grads, 1).double())
    assert [o.shape[1] for o in outs] == sizes and all(o.dtype == dtype for o in outs)
    assert_close(torch.cat(outs, 1), ref, dtype)
    assert_close(x.grad, x64.grad, dtype, "x.grad")
    assert_close(w.grad, w64.grad, dtype, "weight.grad")
    if b is not None:
        assert_close(b.grad, b64.grad, dtype, "bias.grad")
    for o, w_i in zip(outs, w.detach().split(sizes)):  # each output as eager's conv with its weights
        assert_layout_like_eager(o, F.conv2d(x.detach(), w_i))
    assert all(unchanged(a, t.detach()) for a, t in zip(inputs, (x, w, b)))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pool", [False, True])
def test_into_writes_only_its_slices(backend, dtype, pool):
    """The outputs are channel slices of one channels_last buffer and a tensor of their own,
    70 columns in two column tiles: the slices get exactly their columns, the buffer's other
    channels stay untouched."""
    N, cin, H, W = 2, 17, 7, 5
    x = make_input((N, cin, H, W), dtype, "nhwc")
    w, b = _params(70, cin, dtype)
    buf = torch.full((N, 80, H, W), 7.0, device=DEVICE, dtype=dtype)
    buf = buf.contiguous(memory_format=torch.channels_last)
    own = torch.full((N, 20, H, W), float("nan"), device=DEVICE, dtype=dtype)
    outs = [buf[:, 2:42], own, buf[:, 60:70]]
    with torch.no_grad(), fastconv.use_backend(backend):
        fastconv.conv1x1_relu_split_into(x, w, b, outs, pool=pool)
    ref = _ref(x, w.detach(), b.detach(), pool)
    assert_close(torch.cat(outs, 1), ref, dtype)
    untouched = torch.cat([buf[:, :2], buf[:, 42:60], buf[:, 70:]], 1)
    assert (untouched == 7.0).all()


def test_triton_64bit_offsets(monkeypatch):
    """The kernel's int64 address path (taken past 2**31 elements), forced on a small case."""
    import importlib
    kernels = importlib.import_module("fastconv._triton.pool_conv1x1")
    monkeypatch.setattr(kernels, "INT32_LIMIT", 0)
    x = make_input((2, 17, 5, 3), torch.float32, "nhwc")
    w, b = _params(12, 17, torch.float32)
    with torch.no_grad(), fastconv.use_backend("triton"):
        for pool in (False, True):
            outs = fastconv.conv1x1_relu_split(x, w, b, [3, 8, 1], pool=pool)
            assert_close(torch.cat(outs, 1), _ref(x, w, b, pool), torch.float32)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_pool_is_same_nan_propagates_ties_go_first(backend):
    """The fused pool equals TF SAME 3x3/1 (padding never wins: all-negative input), a NaN
    reaches the outputs of every window holding it, and on ties the gradient goes to the
    first cell in scan order, as PyTorch's max_pool2d + conv2d."""
    x = -1 - torch.rand(1, 3, 5, 4, device=DEVICE, dtype=torch.float64)
    x[0, :, 2, 1:3] = -0.5  # a tie inside each window that covers both cells
    w, b = _params(4, 3, torch.float64)
    with fastconv.use_backend(backend):
        x1 = x.clone().requires_grad_()
        fastconv.pool_conv1x1_relu(x1, w, b).sum().backward()
        assert_close(fastconv.pool_conv1x1_relu(x, w, b), _ref(x, w, b, True), torch.float64)
        x[0, 1, 0, 0] = float("nan")
        out = fastconv.pool_conv1x1_relu(x, w, b)
    x2 = x1.detach().clone().requires_grad_()
    F.relu(F.conv2d(F.max_pool2d(x2, 3, 1, 1), w, b)).sum().backward()
    assert torch.equal(x1.grad, x2.grad)
    nan_at = torch.zeros(5, 4, dtype=torch.bool)
    nan_at[:2, :2] = True
    assert torch.equal(torch.isnan(out[0]).all(0).cpu(), nan_at)
    assert not torch.isnan(out[0]).any(0).cpu()[~nan_at].any()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_zero_batch(backend):
    x = torch.randn(0, 4, 3, 3, device=DEVICE)
    w = torch.randn(5, 4, device=DEVICE)
    with fastconv.use_backend(backend):
        assert [o.shape for o in fastconv.conv1x1_relu_split(x, w, None, [2, 3], pool=True)] == \
            [(0, 2, 3, 3), (0, 3, 3, 3)]


def test_errors():
    x = torch.randn(2, 3, 4, 4)
    w = torch.randn(5, 3, 1, 1)
    split = fastconv.conv1x1_relu_split
    cases = [
        (lambda: split(x[0], w, None, [5]), ValueError, "x must be a 4-D"),
        (lambda: split(x, torch.randn(5, 3, 3, 3), None, [5]), ValueError, "weight must be a 1x1"),
        (lambda: split(x, torch.randn(5, 4), None, [5]), ValueError, "weight has 4 input channels"),
        (lambda: split(x, w, torch.randn(4), [5]), ValueError, "bias must have 5 elements"),
        (lambda: split(x, w, None, [2, 2]), ValueError, "must add up to weight's 5"),
        (lambda: split(x, w, None, [1, 1, 1, 2]), ValueError, "sizes must be 1 to 3"),
        (lambda: split(x, w, None, [5, 0]), ValueError, "sizes must be 1 to 3 positive"),
        (lambda: split(x, w.half(), None, [5]), TypeError, "weight has dtype"),
        (lambda: split(x, "w", None, [5]), TypeError, "weight must be a torch.Tensor"),
        (lambda: fastconv.pool_conv1x1_relu(x.long(), w), TypeError, "x must be a floating-point"),
        (lambda: fastconv.conv1x1_relu_split_into(x, w, None, [torch.empty(2, 5, 4, 3)]),
         ValueError, r"outs\[0\] must be \[2, C, 4, 4\]"),
        (lambda: fastconv.conv1x1_relu_split_into(x, w, None, [torch.empty(2, 4, 4, 4)]),
         ValueError, "must add up to weight's 5"),
        (lambda: fastconv.conv1x1_relu_split_into(x, w, None, [torch.empty(2, 5, 4, 4).half()]),
         TypeError, r"outs\[0\] has dtype"),
    ]
    for call, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            call()


def test_split_into_refuses_inputs_that_need_a_graph():
    """It writes into outs without autograd: a silent missing gradient would be worse than an error."""
    x = make_input((1, 3, 2, 2), torch.float32)
    w = torch.randn(4, 3, device=DEVICE)
    out = torch.empty(1, 4, 2, 2, device=DEVICE)
    for name, args in (("x", (x.requires_grad_(), w, None)), ("weight", (x.detach(), w.requires_grad_(), None)),
                       ("bias", (x.detach(), w.detach(), torch.zeros(4, device=DEVICE, requires_grad=True)))):
        with pytest.raises(RuntimeError, match=f"no autograd, but {name} requires grad"):
            fastconv.conv1x1_relu_split_into(*args, [out])
        with torch.no_grad():
            fastconv.conv1x1_relu_split_into(*args, [out])
        assert_close(out, reference.conv1x1_relu(args[0].detach(), args[1].detach()[:, :, None, None],
                                                 None if args[2] is None else args[2].detach()), torch.float32)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_opcheck_and_gradcheck(backend):
    """Tiny float64 shapes and gradcheck's fast mode: the interpreter runs every perturbation."""
    x = make_input((2, 5, 4, 3), torch.float64, "nhwc", requires_grad=True)
    w = torch.randn(6, 5, 1, 1, dtype=torch.float64, device=DEVICE, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, device=DEVICE, requires_grad=True)
    buf = torch.empty(2, 9, 4, 3, dtype=torch.float64, device=DEVICE)
    outs = [buf[:, 1:3], torch.empty(2, 4, 4, 3, dtype=torch.float64, device=DEVICE)]
    xs = make_input((1, 3, 3, 2), torch.float64, "strided", requires_grad=True)
    with fastconv.use_backend(backend):
        torch.library.opcheck(torch.ops.fastconv.conv1x1_relu_split.default, (x, w, b, [2, 4], True))
        torch.library.opcheck(torch.ops.fastconv.conv1x1_relu_split_into.default,
                              (x.detach(), w.detach(), None, outs, False))
        assert torch.autograd.gradcheck(lambda *a: fastconv.conv1x1_relu_split(*a, [1, 2]),
                                        (xs, w[:3, :3], b[:3]), fast_mode=True)
        assert torch.autograd.gradcheck(fastconv.pool_conv1x1_relu, (xs, w[:3, :3, 0, 0], b[:3]),
                                        fast_mode=True)


@gpu
def test_cuda_backend_has_no_kernel_yet():
    if "cuda" not in fastconv.available_backends():
        pytest.skip("the CUDA C++ extension is not built")
    x = make_input((1, 3, 5, 5), torch.float32, "nhwc")
    w, b = _params(4, 3, torch.float32)
    with fastconv.use_backend("cuda"), pytest.raises(NotImplementedError, match="no CUDA C\\+\\+ kernel"):
        fastconv.pool_conv1x1_relu(x, w, b)
