"""fastconv::max_pool2d_same / avg_pool2d_same: pooling with TensorFlow "SAME" padding.

    out = ceil(in / stride); pad_total = max((out - 1) * stride + k - in, 0)
    pad_before = pad_total // 2, the rest after (bottom/right).

Max ignores padded cells; average divides by the number of real cells in the
window. PyTorch has neither (its pools pad symmetrically and average counts the
padding). Every window holds at least one real cell: pad_total <= k - 1 because
(out - 1) * stride < in.
"""
import functools
import math
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor

from fastconv import _backend, _checks, _tuning


def same_geometry(H, W, kernel_size, stride):
    """(geometry, output size, total padding): geometry = ((kh, kw), (sh, sw), (pad_top,
    pad_left)) as the kernels take it, output size (OH, OW), total padding (rows, columns)."""
    args = (H, W, tuple(kernel_size), tuple(stride))
    if torch.compiler.is_compiling() or type(H) is not int or type(W) is not int:
        return _same_geometry(*args)  # traced, or symbolic sizes (unhashable): not cached
    return _same_geometry_cached(*args)


def _same_geometry(H, W, kernel_size, stride):
    out, pads = [], []
    for size, k, s in zip((H, W), kernel_size, stride):
        o = -(-size // s)
        out.append(o)
        pads.append(max((o - 1) * s + k - size, 0))
    return (kernel_size, stride, (pads[0] // 2, pads[1] // 2)), tuple(out), tuple(pads)


# a network has a few dozen pool shapes, and the geometry is asked on every call
_same_geometry_cached = functools.lru_cache(maxsize=1024)(_same_geometry)


def _check(x, kernel_size, stride):
    _checks.check_tensor(x, "x", ndim=4)
    _checks.pair(kernel_size, "kernel_size")
    _checks.pair(stride, "stride")


def _torch_pool(x, kernel_size, stride, is_max, grad=None):
    """The eager composition, the reference backend: pad explicitly, then pool.
    With `grad`, returns the gradient of x instead (aten's pooling backwards
    over the padded input, the padding sliced off)."""
    geometry, _, (pad_h, pad_w) = same_geometry(x.shape[2], x.shape[3], kernel_size, stride)
    (pt, pl) = geometry[2]
    pads = (pl, pad_w - pl, pt, pad_h - pt)
    padded = F.pad(x, pads, value=-math.inf if is_max else 0.0)
    if is_max:
        if grad is None:
            return F.max_pool2d(padded, kernel_size, stride)
        y, idx = F.max_pool2d(padded, kernel_size, stride, return_indices=True)
        if pt or pl:
            idx = _first_real_cell(idx, padded.shape[3], pt, pl)
        g = torch.ops.aten.max_pool2d_with_indices_backward(
            grad, padded, kernel_size, stride, [0, 0], [1, 1], False, idx)
    else:
        ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
        count = F.avg_pool2d(F.pad(ones, pads), kernel_size, stride, divisor_override=1)
        y = F.avg_pool2d(padded, kernel_size, stride, divisor_override=1) / count
        if grad is not None:
            g = torch.ops.aten.avg_pool2d_backward(
                grad / count, padded, kernel_size, stride, [0, 0], False, True, 1)
    if grad is None:
        return y
    return g[:, :, pt:pt + x.shape[2], pl:pl + x.shape[3]]


def _first_real_cell(idx, padded_width, pt, pl):
    """PyTorch's max pool starts each window's argmax at the window's first cell and keeps
    it unless a later cell is greater (or NaN): an all -inf window that starts in the
    top/left padding sends its gradient to a padding cell, which the slice then drops.
    Move such an index to the window's first real cell, as the Triton and CUDA kernels
    route it. (Bottom/right padding cells come after a real cell in scan order: they never
    win a tie.)"""
    row, col = idx // padded_width, idx % padded_width
    return row.clamp_(min=pt) * padded_width + col.clamp_(min=pl)


def _pool(x, kernel_size, stride, is_max):
    """The op's work on checked arguments (the custom ops' implementation and the direct path)."""
    name = "max_pool2d_same" if is_max else "avg_pool2d_same"
    backend = _backend.resolve(x.device, name, key=lambda: _tuning.pool_key(x, kernel_size, stride))
    if backend == "torch" or x.numel() == 0:
        y = _torch_pool(x, kernel_size, stride, is_max)
        layout = _checks.out_memory_format(x)  # a copy only if PyTorch's pool chose another
        return y if y.is_contiguous(memory_format=layout) else y.contiguous(memory_format=layout)
    geometry, out_hw, _ = same_geometry(x.shape[2], x.shape[3], kernel_size, stride)
    out = _checks.empty_like_layout(x, tuple(x.shape[:2]) + out_hw)
    return _backend.launchers(backend).pool_forward(x, out, None, geometry, is_max)


def _fake_pool(x, kernel_size, stride):
    _check(x, kernel_size, stride)
    _, out_hw, _ = same_geometry(x.shape[2], x.shape[3], kernel_size, stride)
    return _checks.empty_like_layout(x, tuple(x.shape[:2]) + out_hw)


@torch.library.custom_op("fastconv::max_pool2d_same", mutates_args=())
def max_pool2d_same_op(x: Tensor, kernel_size: List[int], stride: List[int]) -> Tensor:
    _check(x, kernel_size, stride)
    return _pool(x, kernel_size, stride, is_max=True)


@torch.library.custom_op("fastconv::avg_pool2d_same", mutates_args=())
def avg_pool2d_same_op(x: Tensor, kernel_size: List[int], stride: List[int]) -> Tensor:
    _check(x, kernel_size, stride)
    return _pool(x, kernel_size, stride, is_max=False)


max_pool2d_same_op.register_fake(_fake_pool)
avg_pool2d_same_op.register_fake(_fake_pool)


@torch.library.custom_op("fastconv::pool2d_same_backward", mutates_args=())
def pool2d_same_backward_op(grad: Tensor, x: Tensor, kernel_size: List[int],
                            stride: List[int], is_max: bool) -> Tensor:
    """The gradient of x. Max recomputes the argmax of each window from x (one
    more read of x) rather than keeping an index tensor alive from the forward."""
    backend = _backend.resolve(x.device, "pool2d_same_backward")
    if backend == "torch" or x.numel() == 0:
        x_grad = _torch_pool(x, kernel_size, stride, is_max, grad)
        return x_grad.contiguous(memory_format=_checks.out_memory_format(x))
    geometry, _, _ = same_geometry(x.shape[2], x.shape[3], kernel_size, stride)
    x_grad = _checks.empty_like_layout(x, x.shape)
    idx = None
    kernels = _backend.launchers(backend)
    if is_max:
        scratch = _checks.empty_like_layout(x, grad.shape)
        idx = _checks.empty_like_layout(x, grad.shape, torch.int32)
        kernels.pool_forward(x, scratch, idx, geometry, True)
    return kernels.pool_backward(grad, x_grad, idx, geometry, is_max)


@pool2d_same_backward_op.register_fake
def _(grad, x, kernel_size, stride, is_max):
    return _checks.empty_like_layout(x, x.shape)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.kernel_size, ctx.stride = inputs[1], inputs[2]


def _make_backward(is_max):
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return pool2d_same_backward_op(grad, x, ctx.kernel_size, ctx.stride, is_max), None, None
    return backward


max_pool2d_same_op.register_autograd(_make_backward(True), setup_context=_setup)
avg_pool2d_same_op.register_autograd(_make_backward(False), setup_context=_setup)


def _call(x, kernel_size, stride, is_max):
    """Checks once (here on the direct path, in the op otherwise), then the direct path or the op."""
    if not isinstance(x, Tensor):
        _checks.check_tensor(x, "x")  # our TypeError, not the schema's RuntimeError
    kernel_size = _checks.pair(kernel_size, "kernel_size")
    stride = kernel_size if stride is None else _checks.pair(stride, "stride")
    if _backend.eager_direct(x):
        _checks.check_tensor(x, "x", ndim=4)
        return _pool(x, kernel_size, stride, is_max)
    return (max_pool2d_same_op if is_max else avg_pool2d_same_op)(x, kernel_size, stride)


def max_pool2d_same(x: Tensor, kernel_size, stride=None) -> Tensor:
    """Max pooling with TensorFlow SAME padding (padded cells never win).

    kernel_size, stride: an int or a pair; stride defaults to kernel_size.
    """
    return _call(x, kernel_size, stride, True)


def avg_pool2d_same(x: Tensor, kernel_size, stride=None) -> Tensor:
    """Average pooling with TensorFlow SAME padding (divides by the real cells in each window).

    kernel_size, stride: an int or a pair; stride defaults to kernel_size.
    """
    return _call(x, kernel_size, stride, False)
