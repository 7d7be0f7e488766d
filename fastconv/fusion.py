"""When a PyTorch layer pattern equals a fastconv op, and how to run it as one.

Shared by the reference architectures (fastconv.models) and the converter
(fastconv.convert): BatchNorm folding, the 1x1-conv check, and the exact
condition under which an nn.MaxPool2d / nn.AvgPool2d computes SAME pooling.
"""
import math

import torch
from torch import nn

from fastconv import ops
from fastconv.ops.pool_same import same_geometry


def is_fusable_conv1x1(conv):
    """A 1x1 nn.Conv2d that conv1x1_relu computes exactly (why not, or None)."""
    if type(conv) is not nn.Conv2d:
        return "not an nn.Conv2d"
    if conv.kernel_size != (1, 1):
        return f"{conv.kernel_size[0]}x{conv.kernel_size[1]} conv"
    if conv.groups != 1:
        return "grouped conv"
    if conv.dilation != (1, 1):
        return "dilated conv"
    if conv.padding not in ((0, 0), "valid") or conv.padding_mode != "zeros":
        return "padded 1x1 conv"
    if conv.stride[0] != conv.stride[1]:
        return "unequal strides"
    return None


def bn_foldable(bn):
    """BatchNorm folds into the conv only when it uses its running statistics."""
    return (isinstance(bn, nn.BatchNorm2d) and not bn.training and bn.track_running_stats
            and bn.running_mean is not None)


def fold_bn(weight, bias, bn):
    """(weight, bias) of conv followed by eval-mode `bn`, computed in fp32:
    w' = w * g / sqrt(var + eps), b' = (b - mean) * g / sqrt(var + eps) + beta."""
    scale = torch.rsqrt(bn.running_var.float() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.float()
    shift = -bn.running_mean.float() * scale
    if bias is not None:
        shift = shift + bias.float() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.float()
    w = weight.float() * scale.view(-1, *([1] * (weight.dim() - 1)))
    return w.to(weight.dtype), shift.to(weight.dtype)


def conv1x1_bn_act(x, conv, bn=None, relu=True, residual=None):
    """relu(bn(conv(x)) [+ residual]) for a 1x1 conv on fastconv's fused op: BN folded
    into the conv and the residual added in its epilogue in eval mode; in train mode BN
    runs as its own layer (batch statistics), then residual_add or the ReLU."""
    if bn is not None and not bn_foldable(bn):
        y = bn(ops.conv1x1_relu(x, conv.weight, conv.bias, conv.stride[0], relu=False))
        if residual is not None:
            return ops.residual_add(y, residual, relu)
        return torch.relu(y) if relu else y
    weight, bias = (conv.weight, conv.bias) if bn is None else fold_bn(conv.weight, conv.bias, bn)
    return ops.conv1x1_relu(x, weight, bias, conv.stride[0], relu, residual)


def _torch_pool_windows(size, k, s, p, ceil_mode):
    """(output size, first window start) of PyTorch's pooling along one dimension."""
    rounding = math.ceil if ceil_mode else math.floor
    out = rounding((size + 2 * p - k) / s) + 1
    if ceil_mode and (out - 1) * s >= size + p:  # the last window must start inside
        out -= 1
    return out, -p


def pool_is_same(size_hw, kernel_size, stride, padding, ceil_mode, is_max=True,
                 count_include_pad=True, dilation=1):
    """True when a PyTorch pool of these settings gives exactly SAME pooling on
    inputs of spatial size `size_hw`: the same windows at the same positions, and
    (average) no padded cell counted."""
    pair = (lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v))
    ks, ss, ps, ds = pair(kernel_size), pair(stride or kernel_size), pair(padding), pair(dilation)
    if ds != (1, 1):
        return False
    (_, _, same_before), same_out, _ = same_geometry(*size_hw, ks, ss)
    for size, k, s, p, o, before in zip(size_hw, ks, ss, ps, same_out, same_before):
        out, start = _torch_pool_windows(size, k, s, p, ceil_mode)
        if out != o or start != -before:
            return False
        if not is_max and p > 0 and count_include_pad:
            return False
    return True
