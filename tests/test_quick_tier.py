"""The quick tier (`pytest -m quick`): every kernel x dtype x memory format x backend once,
forward and backward, at one tiny odd shape each, against the float64 references.

It is what the GPU check runs first (bench/gpu_check.sh): on a 16-core GPU machine with a
cold Triton cache it must finish in 90 s, so it compiles few Triton specializations
(about 70; the count is in bench/README.md) and leaves sizes, strides, geometries,
opcheck and gradcheck to the deep grid (`-m deep`, the rest of tests/).
"""
import pytest
import torch

import fastconv
from fastconv import reference
from tests.conftest import BACKENDS, DEVICE, DTYPES, LAYOUTS, TOL, gpu, make_input, unchanged

pytestmark = pytest.mark.quick


def _conv_args(dtype, layout):
    """Bias, residual and ReLU all on: one launch exercises the whole epilogue."""
    x = make_input((2, 17, 5, 7), dtype, layout)
    w = (torch.randn(19, 17, 1, 1, device=DEVICE) / 17 ** 0.5).to(dtype)
    b = torch.randn(19, device=DEVICE).to(dtype)
    r = make_input((2, 19, 5, 7), dtype, layout)
    return [x, w, b, 1, True, r]


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


def check_forward_backward(op, dtype, layout, backend, tol=None):
    ours, ref, make_args = OPS[op]
    args = make_args(dtype, layout)
    tensors = [a.requires_grad_() for a in args if isinstance(a, torch.Tensor)]
    before = [t.detach().clone() for t in tensors]
    with fastconv.use_backend(backend):
        out = ours(*args)
        grad = torch.randn_like(out)
        out.backward(grad)
    args64 = [a.detach().double().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    expected = ref(*args64)
    expected.backward(grad.double())
    assert out.dtype == dtype and out.shape == expected.shape
    tol = tol or TOL[dtype]
    tensors64 = [a for a in args64 if isinstance(a, torch.Tensor)]
    grads = [(f"gradient of tensor argument {i}", t.grad, t64.grad)
             for i, (t, t64) in enumerate(zip(tensors, tensors64))]
    for what, got, want in [("output", out, expected)] + grads:
        err = reference.rel_error(got, want)
        assert err <= tol, f"{op} {backend} {dtype} {layout}: {what}: relative error {err:.3g} > {tol:.0e}"
    assert all(unchanged(b, t.detach()) for b, t in zip(before, tensors)), "an input was modified"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", list(OPS))
def test_op(op, layout, dtype, backend, poison):
    check_forward_backward(op, dtype, layout, backend)


@gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_conv_tf32(backend, poison):
    """float32 with cudnn.allow_tf32: the TF32 tensor-core path (its own CUDA C++ kernel)."""
    torch.backends.cudnn.allow_tf32 = True
    check_forward_backward("conv1x1_relu", torch.float32, "nhwc", backend, tol=3e-3)
