import functools

import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv import reference
from tests.conftest import BACKENDS, DEVICE, DTYPES, LAYOUTS, assert_close, gpu, make_input
from tests.ops.helpers import POOLS, pool_against_float64

SHAPES = [(2, 3, 7, 7), (1, 17, 13, 13), (2, 5, 1, 1), (1, 3, 8, 6)]
# (kernel_size, stride): overlapping (3/2, 3/1), tiling (2/2), non-square, k < s.
GEOMETRIES = [(3, 2), (3, 1), (2, 2), ((3, 2), (2, 1)), (1, 2)]


@pytest.mark.check  # 1080 cases; make test has the quick tier's and the small-tile tests below
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_forward_backward(backend, dtype, shape, geometry, layout, kind, poison):
    pool_against_float64(kind, geometry, shape, dtype, layout, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tensorflow_same_values(backend):
    """4x4 input 1..16, 3x3 stride 2: SAME pads 0 rows above and 1 below (and
    likewise columns); TensorFlow gives these numbers. PyTorch's padding=1 pads
    (1, 1) and gives others: the trap this op exists for."""
    x = torch.arange(1.0, 17.0, device=DEVICE).view(1, 1, 4, 4)
    with fastconv.use_backend(backend):
        mx = fastconv.max_pool2d_same(x, 3, 2)
        avg = fastconv.avg_pool2d_same(x, 3, 2)
    assert mx.flatten().tolist() == [11.0, 12.0, 15.0, 16.0]
    assert avg.flatten().tolist() == [6.0, 7.5, 12.0, 13.5]
    assert F.max_pool2d(x, 3, 2, padding=1).flatten().tolist() != mx.flatten().tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_nan_propagates_and_ties_go_to_first(backend):
    x = torch.zeros(1, 1, 4, 4, device=DEVICE)  # all ties: the first cell of each window wins
    x[0, 0, 3, 3] = float("nan")
    x.requires_grad_()
    with fastconv.use_backend(backend):
        out = fastconv.max_pool2d_same(x, 2, 2)
        out.sum().backward()
    assert torch.isnan(out[0, 0, 1, 1]) and (out.flatten()[:3] == 0).all()
    expected = torch.zeros(4, 4)
    expected[0, 0] = expected[0, 2] = expected[2, 0] = expected[3, 3] = 1
    assert torch.equal(x.grad[0, 0].cpu(), expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_zero_batch(backend, kind):
    x = torch.randn(0, 3, 5, 5, device=DEVICE, requires_grad=True)
    with fastconv.use_backend(backend):
        out = POOLS[kind][0](x, 3, 2)
        out.sum().backward()
    assert out.shape == (0, 3, 3, 3) and x.grad.shape == x.shape


def test_stride_defaults_to_kernel_size():
    x = torch.randn(1, 2, 7, 7)
    assert fastconv.avg_pool2d_same(x, 2).shape == (1, 2, 4, 4)
    assert torch.equal(fastconv.max_pool2d_same(x, (2, 3)), fastconv.max_pool2d_same(x, (2, 3), (2, 3)))


def test_errors():
    x = torch.randn(1, 2, 5, 5)
    for op in (fastconv.max_pool2d_same, fastconv.avg_pool2d_same):
        with pytest.raises(ValueError, match="x must be a 4-D"):
            op(x[0], 3)
        with pytest.raises(TypeError, match="x must be a floating-point"):
            op(x.int(), 3)
        with pytest.raises(ValueError, match="kernel_size must be positive"):
            op(x, 0)
        with pytest.raises(ValueError, match="stride must be positive"):
            op(x, 3, (1, -1))
        with pytest.raises(TypeError, match="kernel_size must be an int or a pair"):
            op(x, (3, 3, 3))
        with pytest.raises(TypeError, match="stride must be an int or a pair"):
            op(x, 3, 1.5)


@pytest.mark.check
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_opcheck_and_gradcheck(backend):
    x = make_input((1, 3, 6, 5), torch.float64, "nhwc", requires_grad=True)  # one image: CI time
    with fastconv.use_backend(backend):
        for name in ("max_pool2d_same", "avg_pool2d_same"):
            torch.library.opcheck(getattr(torch.ops.fastconv, name).default, (x, [3, 2], [2, 1]))
        g = torch.randn(1, 3, 3, 5, dtype=torch.float64, device=DEVICE)
        torch.library.opcheck(torch.ops.fastconv.pool2d_same_backward.default,
                              (g, x.detach(), [3, 2], [2, 1], True))
        for op in (fastconv.max_pool2d_same, fastconv.avg_pool2d_same):
            assert torch.autograd.gradcheck(functools.partial(op, kernel_size=(3, 2), stride=(2, 1)), (x,))


SPECIAL = torch.tensor([float("-inf"), 0.0, 1.0, 2.0, float("nan")])
# (kernel_size, stride, SAME's padding (left, right, top, bottom) of a 7x6 input, worked out
# by hand from TF's rule: out = ceil(in / s), total = (out - 1) * s + k - in, the odd cell after)
TIES_GEOMETRIES = [(3, 2, (0, 1, 1, 1)), (3, 1, (1, 1, 1, 1)), (2, 2, (0, 0, 0, 1))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout, dtype", [("nchw", torch.float32), ("nhwc", torch.float16),
                                           ("strided", torch.float32)])
@pytest.mark.parametrize("k, s, pads", TIES_GEOMETRIES)
def test_max_ties_nan_inf_against_float64(backend, layout, dtype, k, s, pads, poison):
    """Many ties, NaNs, -inf and an all -inf window: the values and the routing of the
    gradient (first maximum in scan order, NaN wins, an all -inf window's first cell) equal,
    exactly (integer gradients sum exactly), PyTorch's own max pool in float64 on a copy
    padded with -inf by the padding written above: a reference independent of fastconv's
    SAME helpers. The border is finite, so a padded cell never wins a window."""
    pick = torch.multinomial(torch.tensor([0.3, 0.3, 0.2, 0.15, 0.05]), 2 * 5 * 7 * 6, replacement=True)
    x = make_input((2, 5, 7, 6), dtype, layout)
    x.copy_(SPECIAL[pick].view(2, 5, 7, 6))
    border = torch.ones(7, 6, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    x[:, :, border] = torch.randint(0, 3, (2, 5, int(border.sum()))).to(dtype).to(x.device)
    x[0, 1, 1:4, 2:5] = float("-inf")  # holds a whole window in each geometry
    grad = torch.randint(-3, 4, (2, 5) + tuple(-(-d // s) for d in (7, 6))).to(dtype).to(x.device)
    xb = x.detach().clone().requires_grad_()
    with fastconv.use_backend(backend):
        out = fastconv.max_pool2d_same(xb, k, s)
        out.backward(grad)
    x64 = x.detach().double().cpu().requires_grad_()
    ref = F.max_pool2d(F.pad(x64, pads, value=float("-inf")), k, s)
    ref.backward(grad.double().cpu())
    assert torch.equal(out.double().cpu().nan_to_num(7.0), ref.nan_to_num(7.0))
    assert torch.equal(xb.grad.double().cpu(), x64.grad)


# The Triton kernels' paths (fastconv._triton.pool_same): the NHWC vector path, the
# NCHW path and the strided fallback, tiles split along rows, columns and channels.
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("geometry", [(3, 2), (3, 1)])
def test_triton_channels_129_nhwc(kind, geometry, poison):
    """Odd C over several channel strips, the last one partly masked (the NHWC vector path)."""
    pool_against_float64(kind, geometry, (1, 129, 3, 4), torch.float16, "nhwc", "triton")


# 5x10 pads (top, bottom, left, right): (3, 2): (1, 1, 0, 1), rows and columns unlike, the
# odd cell at the right edge; (3, 1): (1, 1, 1, 1); (2, 1): (0, 1, 0, 1), odd both ways.
@pytest.mark.parametrize("layout, kind, geometry", [
    ("nhwc", "max", (3, 2)), ("nhwc", "max", (2, 1)), ("nhwc", "avg", (3, 1)),
    ("nchw", "max", (3, 1)), ("nchw", "avg", (3, 2)), ("strided", "max", (2, 1))])
def test_triton_small_tiles(layout, kind, geometry, monkeypatch, poison):
    """Tiles shrunk so that a tiny input spans several row bands, column strips and
    channel strips, the last of each partial: every tile edge and mask is exercised, with
    SAME's odd padding cell at the bottom/right edge tiles."""
    from fastconv._triton import pool_same
    monkeypatch.setattr(pool_same, "TILE_BYTES", 64)
    monkeypatch.setattr(pool_same, "MAX_C_BYTES", 16)
    monkeypatch.setattr(pool_same, "MAX_COLS", 4)
    monkeypatch.setattr(pool_same, "_band", lambda stride: 2)
    monkeypatch.setattr(pool_same, "BACKWARD_BAND", 2)
    pool_against_float64(kind, geometry, (1, 6, 5, 10), torch.float32, layout, "triton")


# (C, H = W, k, s) of GoogLeNet's and ResNet's pools (issue 13)
MODEL_POOLS = [(64, 112, 3, 2), (192, 56, 3, 2), (192, 28, 3, 1), (480, 28, 3, 2), (480, 14, 3, 1),
               (832, 14, 2, 2), (832, 14, 3, 2), (832, 7, 3, 1), (1024, 7, 3, 1)]


@pytest.mark.parametrize("pool", MODEL_POOLS)
@pytest.mark.parametrize("element_size", [2, 4])
def test_triton_tiles_move_whole_vectors(pool, element_size):
    """At the models' NHWC shapes each thread of a program (forward and backward) moves
    whole 16-byte vectors along the channels and no channel strip is partly empty."""
    from fastconv._triton import pool_same
    C, hw, k, s = pool
    oh = -(-hw // s)
    rows, cols, block_c, warps = pool_same._tiles(C, oh, oh, pool_same.UNIT_C.value, pool_same._band(s),
                                                  element_size)
    assert C % block_c == 0 and block_c * element_size % pool_same.VECTOR == 0
    assert cols * block_c * element_size >= warps * 32 * pool_same.VECTOR
    assert 1 <= rows <= oh and -(-oh // rows) * rows - oh < rows
    rows, cols, block_c, warps = pool_same._backward_tiles(C, hw, hw, pool_same.UNIT_C.value, element_size)
    assert C % block_c == 0 and block_c * element_size % pool_same.VECTOR == 0
    assert rows * cols * block_c * element_size >= warps * 32 * pool_same.VECTOR


@gpu
@pytest.mark.parametrize("kind, pool", [("max", (64, 112, 3, 2)), ("max", (480, 14, 3, 1)),
                                        ("max", (832, 14, 2, 2)), ("avg", (1024, 7, 3, 1))])
def test_triton_model_shapes_bf16(kind, pool):
    """The compiled kernels at tiles the models get (full bands; 4 and 2 warps; 16-byte
    vectors), bf16 channels_last: max equal to PyTorch's kernel (values exactly; gradient
    within bf16 rounding), average within bf16 rounding of the float64 reference. Four
    cases: each tile is a compile of its own (GPU check time)."""
    C, hw, k, s = pool
    x = make_input((2, C, hw, hw), torch.bfloat16, "nhwc")
    grad = torch.randn((2, C, -(-hw // s), -(-hw // s)), device=DEVICE).to(torch.bfloat16)
    results = []
    for backend in ("torch", "triton"):
        xb = x.detach().clone().requires_grad_()
        with fastconv.use_backend(backend):
            out = POOLS[kind][0](xb, k, s)
            out.backward(grad)
        results.append((out, xb.grad))
    (ref, ref_grad), (out, x_grad) = results
    if kind == "max":
        assert torch.equal(out, ref)
        assert_close(x_grad, ref_grad.double(), torch.bfloat16, "x.grad")  # sums of up to 4 gradients
    else:
        x64 = x.detach().double().requires_grad_()
        ref64 = reference.avg_pool2d_same(x64, k, s)
        ref64.backward(grad.double())
        assert_close(out, ref64, torch.bfloat16)
        assert_close(x_grad, x64.grad, torch.bfloat16, "x.grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("geometry", [(3, 1), (3, 2), ((3, 2), (2, 1))])
def test_max_all_inf_window_at_the_padding_routes_to_its_first_real_cell(backend, geometry):
    """Windows of only -inf that start in the top/left SAME padding: every backend gives
    their gradient to the window's first real cell (the float64 reference's argmax), none
    to a padding cell (lost)."""
    k, s = geometry
    x = torch.randn(1, 2, 7, 6, device=DEVICE)
    x[0, 1, :3, :4] = float("-inf")  # the top-left windows of every geometry here
    x.requires_grad_()
    with fastconv.use_backend(backend):
        out = fastconv.max_pool2d_same(x, k, s)
        grad = torch.randint(1, 4, out.shape, device=DEVICE).float()
        out.backward(grad)
    x64 = x.detach().double().requires_grad_()
    reference.max_pool2d_same(x64, k, s).backward(grad.double())
    assert x64.grad[0, 1, 0, 0] > 0  # the case is there: a window of -inf sends its gradient
    assert torch.equal(x.grad.double(), x64.grad)
