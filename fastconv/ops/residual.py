"""fastconv::residual_add: relu(x + residual), the end of every ResNet block.

Eager runs it as two passes (`out += identity; relu(out)`); the fused kernel is
one pass. Backward: both inputs get grad * (out > 0).
"""
import torch
from torch import Tensor

from fastconv import _backend, _checks, _tuning
from fastconv._launcher_contract import BINARY_ADD, BINARY_ADD_RELU, BINARY_RELU_GRAD


def _check(x, residual):
    _checks.check_tensor(x, "x", ndim=4)
    _checks.check_tensor(residual, "residual")
    _checks.check_same(residual, x, "residual", "x")
    if residual.shape != x.shape:
        raise ValueError(f"residual must have x's shape {tuple(x.shape)}, "
                         f"got {tuple(residual.shape)}")


def _run_binary(a, b, op, backend, like):
    """out = op(a, b) in the layout of `like`, on `backend` (not "torch")."""
    out = _checks.empty_like_layout(like, like.shape)
    return _backend.launchers(backend).binary(a, b, out, op)


def _forward(x, residual, relu):
    """The op's work on checked arguments (the custom op's implementation and the direct path)."""
    backend = _backend.resolve(x.device, "residual_add", key=lambda: _tuning.tensor_key(x))
    if backend == "torch":
        layout = _checks.out_memory_format(x)
        if x.is_contiguous(memory_format=layout) and residual.is_contiguous(memory_format=layout):
            out = torch.add(x, residual)  # dense alike: the output takes their layout
        else:  # mixed or strided inputs: the output in x's layout, still one pass
            out = torch.add(x, residual, out=_checks.empty_like_layout(x, x.shape))
        return out.relu_() if relu else out
    op = BINARY_ADD_RELU if relu else BINARY_ADD
    return _run_binary(x, residual, op, backend, like=x)


@torch.library.custom_op("fastconv::residual_add", mutates_args=())
def residual_add_op(x: Tensor, residual: Tensor, relu: bool = True) -> Tensor:
    _check(x, residual)
    return _forward(x, residual, relu)


@residual_add_op.register_fake
def _(x, residual, relu=True):
    _check(x, residual)
    return _checks.empty_like_layout(x, x.shape)


@torch.library.custom_op("fastconv::relu_backward", mutates_args=())
def relu_backward_op(grad: Tensor, out: Tensor) -> Tensor:
    """grad where out > 0, else 0 (as torch's threshold_backward), in out's layout."""
    backend = _backend.resolve(grad.device, "relu_backward")
    if backend == "torch":
        return torch.where(out <= 0, grad.new_zeros(()), grad,
                           out=_checks.empty_like_layout(out, out.shape))
    return _run_binary(grad, out, BINARY_RELU_GRAD, backend, like=out)


@relu_backward_op.register_fake
def _(grad, out):
    return _checks.empty_like_layout(out, out.shape)


def _setup(ctx, inputs, output):
    ctx.relu = inputs[2]
    ctx.save_for_backward(*([output] if ctx.relu else []))


def _backward(ctx, grad):
    if ctx.relu:
        grad = relu_backward_op(grad, ctx.saved_tensors[0])
    return grad, grad, None


residual_add_op.register_autograd(_backward, setup_context=_setup)


def residual_add(x: Tensor, residual: Tensor, relu: bool = True) -> Tensor:
    """relu(x + residual), or x + residual with relu=False, in one fused pass.

    x and residual: same shape [N, C, H, W], dtype and device; any strides.
    The output has the layout eager PyTorch would give (x's memory format).
    """
    if not (isinstance(x, Tensor) and isinstance(residual, Tensor)):
        _check(x, residual)  # our TypeError, not the schema's RuntimeError
    if _backend.eager_direct(x, residual):  # checked once: here or in the op
        _check(x, residual)
        return _forward(x, residual, relu)
    return residual_add_op(x, residual, relu)
