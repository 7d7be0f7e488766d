"""The quick tier (`pytest -m quick`): every kernel x dtype x memory format x backend once
(the Inception ops on the backends that have their kernel), forward and backward, at one
tiny odd shape each, against the float64 references.

It is what the GPU check runs first (bench/gpu_check.sh): on a 16-core GPU machine with a
cold Triton cache it must finish in 90 s, so it compiles few Triton specializations
(about 70; the count is in bench/README.md) and leaves sizes, strides, geometries,
opcheck and gradcheck to the deep grid (`-m deep`, the rest of tests/).
"""
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
    gpu,
    grad_away_from_relu_edge,
    make_input,
    unchanged,
)

pytestmark = pytest.mark.quick


def _weights(cout, cin, dtype):
    return ((torch.randn(cout, cin, 1, 1, device=DEVICE) / cin ** 0.5).to(dtype),
            torch.randn(cout, device=DEVICE).to(dtype))


def _conv_args(dtype, layout):
    """Bias, residual and ReLU all on: one launch exercises the whole epilogue."""
    x = make_input((2, 17, 5, 7), dtype, layout)
    w, b = _weights(19, 17, dtype)
    r = make_input((2, 19, 5, 7), dtype, layout)
    return [x, w, b, 1, True, r]


# The Inception ops' outputs: 70 channels split 33 + 20 + 17 (two column tiles of 64).
SPLIT = [33, 20, 17]


def _split(x, w, b):
    return torch.cat(fastconv.conv1x1_relu_split(x, w, b, SPLIT), 1)


def _pool_conv_ref(x, w, b, relu=True):
    return reference.conv1x1_relu(reference.max_pool2d_same(x, 3, 1), w, b, relu=relu)


# op -> (fastconv op, float64 reference, arguments for (dtype, layout)); the pools pad
# asymmetrically (SAME's extra cell at the bottom/right) and avg has a non-square window.
OPS = {
    "conv1x1_relu": (fastconv.conv1x1_relu, reference.conv1x1_relu, _conv_args),
    "residual_add": (fastconv.residual_add, reference.residual_add,
                     lambda dtype, layout: [make_input((2, 17, 5, 7), dtype, layout),
                                            make_input((2, 17, 5, 7), dtype, layout), True]),
    "max_pool2d_same": (fastconv.max_pool2d_same, reference.max_pool2d_same,
                        lambda dtype, layout: [make_input((2, 17, 8, 7), dtype, layout), 3, 2]),
    "avg_pool2d_same": (fastconv.avg_pool2d_same, reference.avg_pool2d_same,
                        lambda dtype, layout: [make_input((2, 17, 7, 6), dtype, layout), (3, 2), (2, 1)]),
}
# The Inception kernel (the torch and Triton backends: CUDA C++ has none yet), as sibling
# 1x1 convs and with the branch pool fused into the projection.
INCEPTION_OPS = {
    "conv1x1_relu_split": (_split, reference.conv1x1_relu,
                           lambda dtype, layout: [make_input((2, 17, 5, 7), dtype, layout),
                                                  *_weights(sum(SPLIT), 17, dtype)]),
    "pool_conv1x1_relu": (fastconv.pool_conv1x1_relu, _pool_conv_ref,
                          lambda dtype, layout: [make_input((2, 17, 5, 7), dtype, layout),
                                                 *_weights(19, 17, dtype)]),
}
# The float64 pre-activation of the ops that sum in their dtype before a ReLU (from the float64
# arguments): the upstream gradient is 0 where it is within rounding of 0. residual_add's sum of
# two values rounds once, and rounding keeps the sign, so its mask is exact.
PRE_ACTIVATION = {
    "conv1x1_relu": lambda x, w, b, stride, relu, r: reference.conv1x1_relu(x, w, b, stride, False, r),
    "conv1x1_relu_split": lambda x, w, b: reference.conv1x1_relu(x, w, b, relu=False),
    "pool_conv1x1_relu": lambda x, w, b: _pool_conv_ref(x, w, b, relu=False),
}


def check_forward_backward(op, dtype, layout, backend, tol=None):
    ours, ref, make_args = {**OPS, **INCEPTION_OPS}[op]
    args = make_args(dtype, layout)
    tensors = [a.requires_grad_() for a in args if isinstance(a, torch.Tensor)]
    before = [t.detach().clone() for t in tensors]
    args64 = [a.detach().double().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    with fastconv.use_backend(backend):
        out = ours(*args)
        pre = PRE_ACTIVATION.get(op)
        grad = grad_away_from_relu_edge(out, pre(*args64), dtype, tol) if pre else torch.randn_like(out)
        out.backward(grad)
    expected = ref(*args64)
    expected.backward(grad.double())
    assert out.dtype == dtype and out.shape == expected.shape
    tensors64 = [a for a in args64 if isinstance(a, torch.Tensor)]
    grads = [(f"gradient of tensor argument {i}", t.grad, t64.grad)
             for i, (t, t64) in enumerate(zip(tensors, tensors64))]
    for what, got, want in [("output", out, expected)] + grads:
        assert_close(got, want, dtype, f"{op} {backend} {dtype} {layout}: {what}", tol)
    assert all(unchanged(b, t.detach()) for b, t in zip(before, tensors)), "an input was modified"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", list(OPS))
def test_op(op, layout, dtype, backend, poison):
    check_forward_backward(op, dtype, layout, backend)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", list(INCEPTION_OPS))
def test_inception_op(op, layout, dtype, backend, poison):
    check_forward_backward(op, dtype, layout, backend)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_split_into_slices(dtype, backend):
    """conv1x1_relu_split_into (inference, no autograd) writing channel slices of one NHWC
    buffer: the same kernel as the split op, the outputs' strides are the buffer's."""
    x, (w, b) = make_input((2, 17, 5, 7), dtype, "nhwc"), _weights(sum(SPLIT), 17, dtype)
    buf = torch.full((2, 80, 5, 7), float("nan"), device=DEVICE, dtype=dtype)
    buf = buf.contiguous(memory_format=torch.channels_last)
    outs = [buf[:, 1:34], buf[:, 40:60], buf[:, 63:80]]
    with torch.no_grad(), fastconv.use_backend(backend):
        fastconv.conv1x1_relu_split_into(x, w, b, outs)
    assert_close(torch.cat(outs, 1), reference.conv1x1_relu(x, w, b), dtype, f"split_into {backend} {dtype}")
    assert torch.isnan(torch.cat([buf[:, :1], buf[:, 34:40], buf[:, 60:63]], 1)).all()


@gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_conv_tf32(backend, poison):
    """float32 with cudnn.allow_tf32: the TF32 tensor-core path (its own CUDA C++ kernel)."""
    torch.backends.cudnn.allow_tf32 = True
    check_forward_backward("conv1x1_relu", torch.float32, "nhwc", backend, tol=3e-3)
