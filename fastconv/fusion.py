"""When a PyTorch layer pattern equals a fastconv op, and how to run it as one.

Shared by the reference architectures (fastconv.models) and the converter
(fastconv.convert): BatchNorm folding, the 1x1-conv check, and the exact
condition under which an nn.MaxPool2d / nn.AvgPool2d computes SAME pooling.
"""
import functools
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
    """(weight, bias) of conv followed by eval-mode `bn`, computed in float32 (float64 for
    float64 weights) and returned in the weight's dtype:
    w' = w * g / sqrt(var + eps), b' = (b - mean) * g / sqrt(var + eps) + beta."""
    acc = torch.promote_types(weight.dtype, torch.float32)
    scale = torch.rsqrt(bn.running_var.to(acc) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(acc)
    shift = -bn.running_mean.to(acc) * scale
    if bias is not None:
        shift = shift + bias.to(acc) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(acc)
    w = weight.to(acc) * scale.view(-1, *([1] * (weight.dim() - 1)))
    return w.to(weight.dtype), shift.to(weight.dtype)


# The fold of an eval-mode conv + BN is cached on the conv (an attribute, not a buffer: never
# in a state_dict) and recomputed exactly when one of its sources changed:
#   - an in-place edit of a parameter or buffer, load_state_dict (copy_): the version counter;
#   - a parameter or buffer replaced (load_state_dict(assign=True), module surgery): identity;
#   - .to()/.half()/.double()/.cuda() (new storage under the same Parameter): the data pointer.
#     The cache holds an alias of each source, so a freed storage's address cannot come back
#     under a changed tensor; the old storage lives until the next eval forward refolds;
#   - a train-mode forward updates the running statistics without bumping their version
#     (native_batch_norm does not declare them mutated), but nn.BatchNorm's forward
#     increments num_batches_tracked in place, whose version is a source too;
#   - bn.eps reassigned: compared as a value.
# Not cached: under torch.compile (the fold is traced into the graph), and when autograd
# must see the fold (grad mode on and a source requires grad, e.g. an eval-mode model run
# without torch.no_grad()): then it is recomputed with its graph on every call, as before.
_FOLD_ATTR = "_fastconv_folded_bn"


class _FoldedBN:
    """A conv's cached (weight, bias) with BN folded in, and the stamps of its sources."""

    __slots__ = ("bn", "eps", "stamps", "weight", "bias")

    def __init__(self, bn, sources, weight, bias):
        self.bn, self.eps, self.weight, self.bias = bn, bn.eps, weight, bias
        self.stamps = [None if t is None else (t, t.detach(), t._version, t.data_ptr())
                       for t in sources]

    def fresh(self, bn, sources):
        if bn is not self.bn or bn.eps != self.eps:
            return False
        for t, stamp in zip(sources, self.stamps):
            if stamp is None:
                if t is not None:
                    return False
            elif t is not stamp[0] or t._version != stamp[2] or t.data_ptr() != stamp[3]:
                return False
        return True

    def __reduce__(self):  # a deepcopy or pickle of the module carries no cache
        return type(None), ()


def _fold_sources(conv, bn):
    return (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var,
            getattr(bn, "num_batches_tracked", None))


def folded(conv, bn):
    """(weight, bias) of `conv` followed by eval-mode `bn` (bn_foldable), folded once and
    cached on the conv until a source changes (see above)."""
    sources = _fold_sources(conv, bn)
    if torch.compiler.is_compiling() or (
            torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in sources)):
        return fold_bn(conv.weight, conv.bias, bn)
    entry = conv.__dict__.get(_FOLD_ATTR)
    if entry is None or not entry.fresh(bn, sources):
        # outside inference mode, so that a fold made there also serves later no-grad calls
        with torch.inference_mode(False), torch.no_grad():
            entry = _FoldedBN(bn, sources, *fold_bn(conv.weight, conv.bias, bn))
        conv.__dict__[_FOLD_ATTR] = entry
    return entry.weight, entry.bias


def conv1x1_bn_act(x, conv, bn=None, relu=True, residual=None):
    """relu(bn(conv(x)) [+ residual]) for a 1x1 conv on fastconv's fused op: BN folded
    (cached, see `folded`) into the conv and the residual added in its epilogue in eval
    mode; in train mode BN runs as its own layer (batch statistics), then residual_add or
    the ReLU."""
    if bn is not None and not bn_foldable(bn):
        y = bn(ops.conv1x1_relu(x, conv.weight, conv.bias, conv.stride[0], relu=False))
        if residual is not None:
            return ops.residual_add(y, residual, relu)
        return y.relu_() if relu else y  # BN's output is its own and not saved for backward
    weight, bias = (conv.weight, conv.bias) if bn is None else folded(conv, bn)
    return ops.conv1x1_relu(x, weight, bias, conv.stride[0], relu, residual)


def conv_bn_act(x, conv, bn, relu=True):
    """relu(bn(conv(x))) for any nn.Conv2d (the 3x3 and 7x7 convs of fastconv's models): in
    eval mode one convolution with BN folded into its weights (cached, see `folded`), as
    deployment tools run it; in train mode the two layers."""
    y = conv._conv_forward(x, *folded(conv, bn)) if bn_foldable(bn) else bn(conv(x))
    return y.relu_() if relu else y


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
    def pair(v):  # not _checks.pair: a padding of 0 is legal here
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    args = (tuple(size_hw), pair(kernel_size), pair(stride or kernel_size), pair(padding),
            ceil_mode, is_max, count_include_pad, pair(dilation))
    if torch.compiler.is_compiling() or not all(type(v) is int for v in args[0]):
        return _pool_is_same(*args)  # traced, or symbolic sizes: computed, not cached
    return _pool_is_same_cached(*args)


def _pool_is_same(size_hw, ks, ss, ps, ceil_mode, is_max, count_include_pad, ds):
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


# The fused pool modules ask on every call; a network has a few dozen pool shapes.
_pool_is_same_cached = functools.lru_cache(maxsize=1024)(_pool_is_same)
