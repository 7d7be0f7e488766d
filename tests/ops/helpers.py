"""The pool check every pool test shares (tests/ops/test_pool_same.py, tests/test_cuda.py)."""
import torch
import torch.nn.functional as F

import fastconv
from fastconv import reference
from tests.conftest import assert_close, assert_layout_like_eager, make_input, unchanged

POOLS = {"max": (fastconv.max_pool2d_same, reference.max_pool2d_same),
         "avg": (fastconv.avg_pool2d_same, reference.avg_pool2d_same)}


def pool_against_float64(kind, geometry, shape, dtype, layout, backend):
    """The SAME pool `kind` ("max" or "avg") on `backend`, forward and backward, against the
    float64 reference: output and x.grad within tolerance, the dtype and layout eager gives,
    the input unchanged."""
    op, ref_op = POOLS[kind]
    k, s = geometry
    x = make_input(shape, dtype, layout, requires_grad=True)
    x0 = x.detach().clone()
    with fastconv.use_backend(backend):
        out = op(x, k, s)
        grad = torch.randn_like(out)
        out.backward(grad)
    x64 = x0.double().requires_grad_()
    ref = ref_op(x64, k, s)
    ref.backward(grad.double())
    assert out.dtype == dtype
    assert_close(out, ref, dtype)
    assert_close(x.grad, x64.grad, dtype, "x.grad")
    assert_layout_like_eager(out, F.max_pool2d(x0, 1))
    assert unchanged(x0, x.detach())
