import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv import reference
from tests.conftest import (BACKENDS, DEVICE, DTYPES, LAYOUTS, assert_close,
                            assert_layout_like_eager, gpu, make_input, unchanged)

# (N, Cin, H, W, Cout, stride): odd channel counts, 1x1 and odd spatial sizes,
# Cin > BLOCK_K (several K steps), Cout > BLOCK_N (several column tiles), stride 2.
CASES = [(2, 3, 7, 7, 17, 1), (1, 17, 13, 13, 129, 1), (2, 129, 1, 1, 3, 1),
         (1, 17, 13, 13, 5, 2), (3, 64, 7, 13, 32, 2)]


def _weight(cout, cin, dtype, form):
    w = torch.randn(cout, cin, 1, 1, device=DEVICE).to(dtype) / cin ** 0.5
    if form == "2d":
        return w[:, :, 0, 0]
    if form == "transposed":  # a non-contiguous [Cout, Cin] view
        return torch.randn(cin, cout, device=DEVICE).to(dtype).t() / cin ** 0.5
    return w


def _run(case, dtype, layout, backend, bias_relu, wform="4d"):
    N, cin, H, W, cout, stride = case
    has_bias, relu, *res_layout = bias_relu
    x = make_input((N, cin, H, W), dtype, layout, requires_grad=True)
    w = _weight(cout, cin, dtype, wform).requires_grad_()
    b = torch.randn(cout, device=DEVICE).to(dtype).requires_grad_() if has_bias else None
    out_shape = (N, cout, (H - 1) // stride + 1, (W - 1) // stride + 1)
    r = make_input(out_shape, dtype, res_layout[0], requires_grad=True) if res_layout else None
    tensors = [t for t in (x, w, b, r) if t is not None]
    inputs = [t.detach().clone() for t in tensors]
    with fastconv.use_backend(backend):
        out = fastconv.conv1x1_relu(x, w, b, stride=stride, relu=relu, residual=r)
        grad = torch.randn_like(out)
        out.backward(grad)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if has_bias else None
    r64 = r.detach().double().requires_grad_() if r is not None else None
    ref = reference.conv1x1_relu(x64, w64, b64, stride, relu, r64)
    ref.backward(grad.double())
    assert out.dtype == dtype and out.shape == ref.shape
    assert_close(out, ref, dtype)
    assert_close(x.grad, x64.grad, dtype, "x.grad")
    assert_close(w.grad, w64.grad, dtype, "weight.grad")
    if has_bias:
        assert_close(b.grad, b64.grad, dtype, "bias.grad")
    if r is not None:
        assert_close(r.grad, r64.grad, dtype, "residual.grad")
    assert all(unchanged(a, t.detach()) for a, t in zip(inputs, tensors))
    return x, w, b, out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("layout", LAYOUTS)
# (bias, relu[, residual layout]): the residual is added in the epilogue, before the ReLU
@pytest.mark.parametrize("bias_relu", [(True, True), (False, True), (True, False),
                                       (True, True, "strided"), (False, False, "nhwc")])
def test_forward_backward(backend, dtype, case, layout, bias_relu, poison):
    x, w, b, out = _run(case, dtype, layout, backend, bias_relu)
    with torch.no_grad():
        eager = F.conv2d(x, w, b, stride=case[5])
    assert_layout_like_eager(out, eager)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wform", ["2d", "transposed"])
def test_weight_forms(backend, wform, poison):
    _run(CASES[0], torch.float32, "nhwc", backend, (True, True), wform)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_zero_batch_and_nan(backend):
    x = torch.randn(0, 4, 3, 3, device=DEVICE)
    w = torch.randn(5, 4, 1, 1, device=DEVICE)
    with fastconv.use_backend(backend):
        assert fastconv.conv1x1_relu(x, w).shape == (0, 5, 3, 3)
        x = torch.randn(1, 4, 3, 3, device=DEVICE)
        x[0, 2, 1, 1] = float("nan")
        out = fastconv.conv1x1_relu(x, w)
    assert torch.isnan(out[0, :, 1, 1]).all() and not torch.isnan(out[0, :, 0, 0]).any()


@gpu
@pytest.mark.parametrize("backend", ["triton", pytest.param("cuda", marks=gpu)])
def test_fp32_follows_cudnn_tf32_flag(backend):
    """allow_tf32=True: TF32 error (~1e-4..1e-3); False: IEEE fp32 (< 1e-5), as eager."""
    x = make_input((8, 256, 14, 14), torch.float32, "nhwc")
    w = torch.randn(128, 256, 1, 1, device=DEVICE) / 16
    ref = reference.conv1x1_relu(x, w)
    with fastconv.use_backend(backend):
        torch.backends.cudnn.allow_tf32 = False
        assert reference.rel_error(fastconv.conv1x1_relu(x, w), ref) < 1e-5
        torch.backends.cudnn.allow_tf32 = True
        err = reference.rel_error(fastconv.conv1x1_relu(x, w), ref)
    assert 1e-5 < err < 3e-3


def test_errors():
    x = torch.randn(2, 3, 4, 4)
    w = torch.randn(5, 3, 1, 1)
    cases = [
        ((x[0], w), ValueError, "x must be a 4-D"),
        ((x, w[0]), ValueError, "weight must be a"),
        ((x, torch.randn(5, 3, 3, 3)), ValueError, "weight must be a 1x1 kernel"),
        ((x, torch.randn(5, 4, 1, 1)), ValueError, "weight has 4 input channels but x has 3"),
        ((x, w, torch.randn(4)), ValueError, "bias must have 5 elements"),
        ((x, w, torch.randn(5, 1)), ValueError, "bias must be a 1-D"),
        ((x, w.half()), TypeError, "weight has dtype"),
        ((x, w, torch.randn(5).double()), TypeError, "bias has dtype"),
        ((x.long(), w.long()), TypeError, "x must be a floating-point"),
        ((x, "w"), TypeError, "weight must be a torch.Tensor"),
        ((x, w, None, 1, True, torch.randn(2, 5, 4, 3)), ValueError, "residual must have the output's shape"),
        ((x, w, None, 2, True, torch.randn(2, 5, 4, 4)), ValueError, "residual must have the output's shape"),
        ((x, w, None, 1, True, torch.randn(2, 5, 4, 4).half()), TypeError, "residual has dtype"),
        ((x, w, None, 1, True, 3.0), TypeError, "residual must be a torch.Tensor"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fastconv.conv1x1_relu(*args)
    for stride in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="stride must be a positive int"):
            fastconv.conv1x1_relu(x, w, stride=stride)


@gpu
def test_mixed_devices_error():
    with pytest.raises(ValueError, match="weight is on"):
        fastconv.conv1x1_relu(torch.randn(1, 3, 4, 4), torch.randn(5, 3, 1, 1, device="cuda"))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_opcheck_and_gradcheck(backend):
    x = make_input((2, 5, 5, 5), torch.float64, "nhwc", requires_grad=True)
    w = torch.randn(4, 5, 1, 1, dtype=torch.float64, device=DEVICE, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    with fastconv.use_backend(backend):
        r = make_input((2, 4, 3, 3), torch.float64, "strided", requires_grad=True)
        for args in [(x, w, b, 2, True), (x, w, None, 1, False), (x, w[:, :, 0, 0], b, 1, True),
                     (x, w, b, 2, True, r), (x, w, None, 2, False, r)]:
            torch.library.opcheck(torch.ops.fastconv.conv1x1_relu.default, args)
        y = fastconv.conv1x1_relu(x, w).detach()
        torch.library.opcheck(torch.ops.fastconv.relu_bias_backward.default, (torch.randn_like(y), y, True))
        assert torch.autograd.gradcheck(lambda *a: fastconv.conv1x1_relu(*a, stride=2), (x, w, b))
        assert torch.autograd.gradcheck(
            lambda *a: fastconv.conv1x1_relu(a[0], a[1], None, 2, True, a[2]), (x, w, r))
