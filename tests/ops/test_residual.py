import pytest
import torch

import fastconv
from fastconv import reference
from tests.conftest import (
    BACKENDS,
    DEVICE,
    DTYPES,
    LAYOUTS,
    assert_close,
    assert_layout_like_eager,
    gpu,
    make_input,
    unchanged,
)

SHAPES = [(2, 3, 7, 7), (1, 17, 13, 13), (2, 129, 1, 1), (3, 5, 1, 13)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layouts", [(a, a) for a in LAYOUTS] + [("nchw", "nhwc"), ("nhwc", "strided")])
@pytest.mark.parametrize("relu", [True, False])
def test_forward_backward(backend, dtype, shape, layouts, relu, poison):
    x = make_input(shape, dtype, layouts[0], requires_grad=True)
    r = make_input(shape, dtype, layouts[1], requires_grad=True)
    x0, r0 = x.detach().clone(), r.detach().clone()
    with fastconv.use_backend(backend):
        out = fastconv.residual_add(x, r, relu=relu)
        grad = torch.randn_like(out)
        out.backward(grad)
    x64, r64 = x0.double().requires_grad_(), r0.double().requires_grad_()
    ref = reference.residual_add(x64, r64, relu)
    ref.backward(grad.double())
    assert out.dtype == dtype and out.shape == x.shape
    assert_close(out, ref, dtype)
    assert_close(x.grad, x64.grad, dtype, "x.grad")
    assert_close(r.grad, r64.grad, dtype, "residual.grad")
    eager = torch.relu(x0 + r0) if relu else x0 + r0
    assert_layout_like_eager(out, eager)
    assert unchanged(x0, x.detach()) and unchanged(r0, r.detach())


@pytest.mark.parametrize("backend", BACKENDS)
def test_relu_keeps_nan_and_zero_size(backend):
    """NaN, a negative sum (-3 + 1: the ReLU's 0; -2 without it), a positive one and inf."""
    x = torch.tensor([float("nan"), -3.0, 2.0, float("inf")], device=DEVICE).view(1, 4, 1, 1)
    with fastconv.use_backend(backend):
        out = fastconv.residual_add(x, torch.ones_like(x))
        plain = fastconv.residual_add(x, torch.ones_like(x), relu=False)
        empty = fastconv.residual_add(x[:0], x[:0])
    assert torch.isnan(out[0, 0]) and out.flatten()[1:].tolist() == [0.0, 3.0, float("inf")]
    assert torch.isnan(plain[0, 0]) and plain.flatten()[1:].tolist() == [-2.0, 3.0, float("inf")]
    assert empty.shape == (0, 4, 1, 1)


def test_residual_broadcast_and_mismatch_errors():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="residual must have x's shape"):
        fastconv.residual_add(x, torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match="residual must have x's shape"):
        fastconv.residual_add(x, torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="x must be a 4-D"):
        fastconv.residual_add(x[0], x[0])
    with pytest.raises(TypeError, match="residual has dtype"):
        fastconv.residual_add(x, x.half())
    with pytest.raises(TypeError, match="x must be a floating-point"):
        fastconv.residual_add(x.int(), x.int())
    with pytest.raises(TypeError, match="x must be a floating-point"):
        fastconv.residual_add(x > 0, x > 0)
    with pytest.raises(TypeError, match="residual must be a torch.Tensor"):
        fastconv.residual_add(x, 1.0)


@gpu
def test_mixed_devices_error():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="residual is on"):
        fastconv.residual_add(x, x.cuda())


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_opcheck_and_gradcheck(backend):
    x = make_input((2, 3, 5, 5), torch.float64, "nhwc", requires_grad=True)
    r = make_input((2, 3, 5, 5), torch.float64, "strided", requires_grad=True)
    with fastconv.use_backend(backend):
        torch.library.opcheck(torch.ops.fastconv.residual_add.default, (x, r, True))
        torch.library.opcheck(torch.ops.fastconv.relu_backward.default, (x.detach(), r.detach()))
        assert torch.autograd.gradcheck(lambda a, b: fastconv.residual_add(a, b), (x, r))


@gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_int64_indexing(backend):
    """More than 2^31 elements: offsets must not wrap in 32 bits. Every element checked
    (eager's fp16 add rounds the fp32 sum once, as the kernels do)."""
    n = 2**31 + 2**20
    x = torch.randn(1, 1, 1, n, device="cuda", dtype=torch.float16)
    r = torch.randn_like(x)
    with fastconv.use_backend(backend):
        out = fastconv.residual_add(x, r)
    assert torch.equal(out, (x + r).relu_())


def test_triton_block_by_numel():
    """Two 16-byte vectors per thread on large tensors, one where that would leave the
    grid under MIN_WAVES waves (issue 13: 128x2048x7x7 bf16 ran at 0.85x eager)."""
    from fastconv._triton import elementwise
    cpu = torch.device("cpu")  # 132 SMs, as an H100/H200
    assert elementwise._block(128 * 2048 * 7 * 7, 2, cpu) == 1024
    assert elementwise._block(128 * 256 * 56 * 56, 2, cpu) == 2048
    assert elementwise._block(128 * 256 * 56 * 56, 4, cpu) == 1024
    assert elementwise._block(1, 8, cpu) == 256


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layouts", [("nhwc", "nhwc"), ("nchw", "strided")])
def test_triton_two_vectors_per_thread(dtype, layouts, monkeypatch, poison):
    """The large-tensor configuration on a tiny tensor (1155 elements: the last program partial)."""
    from fastconv._triton import elementwise
    monkeypatch.setattr(elementwise, "MIN_WAVES", 0)
    x = make_input((3, 5, 7, 11), dtype, layouts[0])
    r = make_input((3, 5, 7, 11), dtype, layouts[1])
    with fastconv.use_backend("triton"):
        out = fastconv.residual_add(x, r)
    assert_close(out, reference.residual_add(x.double(), r.double(), True), dtype)
