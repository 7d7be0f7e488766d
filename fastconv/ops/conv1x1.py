"""fastconv::conv1x1_relu: relu(conv2d(x, weight, bias, stride) [+ residual]) for a 1x1 kernel.

A GEMM with bias and ReLU fused into its epilogue (the network-in-network /
bottleneck layer). relu=False gives the plain 1x1 conv (ResNet's stride-2
projection shortcut). An optional `residual` is added in the epilogue too: the end
of a ResNet bottleneck (conv3 + BN + add + ReLU) in one kernel, saving the residual
add's separate pass (write and re-read the conv output). Backward: the ReLU mask and
the bias gradient are one fused kernel (the residual's gradient is that masked
gradient); the input and weight gradients are PyTorch's convolution backward.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastconv import _backend, _checks, _tuning


def _check(x, weight, bias, stride, residual=None):
    if not _well_formed(x, weight, bias, stride, residual):
        _explain(x, weight, bias, stride, residual)


def _well_formed(x, weight, bias, stride, residual):
    """The common case, accepted in ~1 us (each tensor attribute read costs ~0.1 us);
    anything else goes through _explain, which names what is wrong."""
    if type(stride) is not int or stride <= 0 or x.dim() != 4:
        return False
    dtype, device, ws = x.dtype, x.device, weight.shape
    if dtype not in _checks.FLOAT_DTYPES or weight.dtype != dtype or weight.device != device:
        return False
    if not (len(ws) == 2 or (len(ws) == 4 and ws[2] == 1 and ws[3] == 1)) or ws[1] != x.shape[1]:
        return False
    if bias is not None and (bias.dtype != dtype or bias.device != device or bias.shape != ws[:1]):
        return False
    return residual is None or (residual.dtype == dtype and residual.device == device
                                and tuple(residual.shape) == _out_shape(x, weight, stride))


def _explain(x, weight, bias, stride, residual):
    """Raise the error that names the bad argument."""
    _checks.check_conv1x1(x, weight, bias)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride <= 0:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    if residual is not None:
        _checks.check_tensor(residual, "residual")
        _checks.check_same(residual, x, "residual", "x")
        if tuple(residual.shape) != _out_shape(x, weight, stride):
            raise ValueError(f"residual must have the output's shape {_out_shape(x, weight, stride)}, "
                             f"got {tuple(residual.shape)}")


def _out_shape(x, weight, stride):
    N, _, H, W = x.shape
    return (N, weight.shape[0], (H - 1) // stride + 1, (W - 1) // stride + 1)


def _forward(x, weight, bias, stride, relu, residual):
    """The op's work on checked arguments: the custom op's implementation, and the whole of
    an eager call that needs no autograd or tracing (conv1x1_relu's direct path)."""
    backend = _backend.resolve(x.device, "conv1x1_relu",
                               key=lambda: _tuning.conv_key(x, weight, stride, relu, residual))
    if backend == "torch":
        w4 = weight if weight.dim() == 4 else weight[:, :, None, None]
        if residual is None:
            y = F.conv2d(x, w4, bias, stride)
        else:  # one rounding of conv + bias + residual, as the kernels' fp32 epilogues
            x32, w32, b32 = (t if t is None or t.element_size() >= 4 else t.float() for t in (x, w4, bias))
            y = F.conv2d(x32, w32, b32, stride).add_(residual).to(x.dtype)
        y = y.relu_() if relu else y
        # a copy only if the conv library chose another layout than the rule for x
        layout = _checks.out_memory_format(x)
        return y if y.is_contiguous(memory_format=layout) else y.contiguous(memory_format=layout)
    out = _checks.empty_like_layout(x, _out_shape(x, weight, stride))
    # float32 follows PyTorch's convolution flag, as eager cuDNN does
    _backend.launchers(backend).conv1x1(x, weight, bias, out, stride, relu,
                                        torch.backends.cudnn.allow_tf32, residual)
    return out


@torch.library.custom_op("fastconv::conv1x1_relu", mutates_args=())
def conv1x1_relu_op(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                    stride: int = 1, relu: bool = True, residual: Optional[Tensor] = None) -> Tensor:
    _check(x, weight, bias, stride, residual)
    return _forward(x, weight, bias, stride, relu, residual)


@conv1x1_relu_op.register_fake
def _(x, weight, bias=None, stride=1, relu=True, residual=None):
    _check(x, weight, bias, stride, residual)
    return _checks.empty_like_layout(x, _out_shape(x, weight, stride))


@torch.library.custom_op("fastconv::relu_bias_backward", mutates_args=())
def relu_bias_backward_op(grad: Tensor, out: Tensor, relu: bool) -> tuple[Tensor, Tensor]:
    """(g, bias_grad): g = grad masked where out <= 0 (if relu), bias_grad = g summed over N, H, W."""
    backend = _backend.resolve(grad.device, "relu_bias_backward",
                               key=lambda: _tuning.tensor_key(grad) + (bool(relu),))
    g = _checks.empty_like_layout(out, out.shape)
    acc_dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32
    if backend == "torch":
        if relu:  # written straight into g, as relu_backward's torch path does
            torch.where(out <= 0, grad.new_zeros(()), grad, out=g)
        else:
            g.copy_(grad)
        return g, g.sum((0, 2, 3), dtype=acc_dtype).to(grad.dtype)
    bias_grad = torch.zeros(grad.shape[1], dtype=acc_dtype, device=grad.device)
    _backend.launchers(backend).relu_grad_bias(grad, out, g, bias_grad, relu)
    return g, bias_grad.to(grad.dtype)


@relu_bias_backward_op.register_fake
def _(grad, out, relu):
    return _checks.empty_like_layout(out, out.shape), grad.new_empty(grad.shape[1])


def _setup(ctx, inputs, output):
    x, weight, bias, stride, relu, residual = inputs
    ctx.stride, ctx.relu = stride, relu
    ctx.has_bias, ctx.has_residual = bias is not None, residual is not None
    ctx.save_for_backward(x, weight, *([output] if relu else []))


def _backward(ctx, grad):
    from fastconv.ops.residual import relu_backward_op

    x, weight, *out = ctx.saved_tensors
    out = out[0] if ctx.relu else None
    # needs_input_grad follows the arguments (x, weight, bias, stride, relu, residual) but
    # stops at the last tensor passed
    nig = ctx.needs_input_grad
    need_x, need_w = nig[0], nig[1]
    need_b = ctx.has_bias and nig[2]
    need_r = ctx.has_residual and nig[5]
    bias_grad = None
    if need_b:
        grad, bias_grad = relu_bias_backward_op(grad, out if ctx.relu else grad, ctx.relu)
    elif ctx.relu:
        grad = relu_backward_op(grad, out)
    x_grad = weight_grad = None
    if need_x or need_w:
        # Both gradients in one call of PyTorch's convolution backward (cuDNN on a GPU, as
        # eager's): a strided conv's input gradient comes back with its zeros written by the
        # conv library (no zeros_like + scatter), and grad and x are read in their own layouts
        # (no permutes to pixel-major copies).
        w4 = weight if weight.dim() == 4 else weight[:, :, None, None]
        s = ctx.stride
        x_grad, w4_grad, _ = torch.ops.aten.convolution_backward(
            grad, x, w4, None, [s, s], [0, 0], [1, 1], False, [0, 0], 1, [need_x, need_w, False])
        weight_grad = None if w4_grad is None else w4_grad.reshape(weight.shape)
    return x_grad, weight_grad, bias_grad, None, None, grad if need_r else None


conv1x1_relu_op.register_autograd(_backward, setup_context=_setup)


def conv1x1_relu(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                 stride: int = 1, relu: bool = True, residual: Optional[Tensor] = None) -> Tensor:
    """relu(conv2d(x, weight, bias, stride) + residual) for a 1x1 kernel, all in one kernel.

    x: [N, Cin, H, W], any strides. weight: [Cout, Cin, 1, 1] or [Cout, Cin].
    bias: [Cout] or None. relu=False gives the plain 1x1 conv. residual: None, or a
    tensor of the output's shape added before the ReLU (a ResNet block's shortcut).
    float32 follows torch.backends.cudnn.allow_tf32 (TF32 when True), as eager
    convolution does.
    """
    if not (isinstance(x, Tensor) and isinstance(weight, Tensor) and type(stride) is int
            and (bias is None or isinstance(bias, Tensor))
            and (residual is None or isinstance(residual, Tensor))):
        _explain(x, weight, bias, stride, residual)  # our TypeError/ValueError, not the schema's
    if _backend.eager_direct(x, weight, bias, residual):  # checked once: here or in the op
        _check(x, weight, bias, stride, residual)
        return _forward(x, weight, bias, stride, relu, residual)
    return conv1x1_relu_op(x, weight, bias, stride, relu, residual)
