"""The modules a converted model runs.

Each holds references to the layers it replaces - those stay registered at their paths,
so module paths, parameter names and state dicts do not change - and runs them as they
were wherever the fused form would not be exact: train mode (BatchNorm's batch
statistics), unbatched input, sizes on which a pool is not SAME, a backend without the
kernels, autograd for the out= forms.
"""
import sys

import torch
import torch.nn.functional as F
from torch import nn

from fastconv import _checks, fusion, ops
from fastconv.convert.layers import NO_NORM, is_type, norm_plan
from fastconv.nn import FusedAvgPool2d, FusedMaxPool2d, ResidualAdd
from fastconv.ops.inception import has_kernels, stack_weights_cached
from fastconv.ops.pool_same import same_geometry

# --- conv + norm + activation -------------------------------------------------------

def conv1x1_norm_act(x, conv, norm, relu, act, residual=None, drop=None):
    """relu(drop(act(norm(conv(x)))) [+ residual]) with the 1x1 conv on the fused op.
    relu: a ReLU in the epilogue (the norm's own or the one after it); act: the norm's other
    activation; drop: stochastic depth before the add (the identity in eval mode). Eval mode
    folds the norm and the residual into one kernel; train mode runs the norm as its layer
    (batch statistics), then residual_add or the ReLU."""
    if x.dim() != 4:  # unbatched: the layers as they were
        y = nn.Conv2d.forward(conv, x)
        y = norm(y) if norm is not None else y
        return _add_relu(drop(y) if drop is not None else y, residual, relu)
    if residual is not None and (not _residual_fits(x, conv, residual) or (drop is not None and drop.training)):
        y = conv1x1_norm_act(x, conv, norm, False, act)
        return _add_relu(drop(y) if drop is not None else y, residual, relu)
    if norm is None or fusion.bn_foldable(norm):
        y = fusion.conv1x1_bn_act(x, conv, norm, relu, residual)
        return act(y) if act is not None else y
    if type(norm) is nn.BatchNorm2d:
        return fusion.conv1x1_bn_act(x, conv, norm, relu, residual)
    # A norm-act layer in train mode: the conv alone, the layer (norm, drop, act) as it is.
    y = norm(fusion.conv1x1_bn_act(x, conv, None, False))
    if residual is not None:
        return ops.residual_add(y, residual, relu)
    return torch.relu(y) if relu else y


def conv_norm_act(x, conv, norm, relu, act):
    """relu(act(norm(conv(x)))) for any conv a norm folds into (layers.fold_reason): in eval
    mode one convolution with the norm folded into its weights (cached by fusion.folded), as
    deployment tools run it; otherwise the conv, then the norm layer as it is."""
    if fusion.bn_foldable(norm):
        y = conv_with(conv, x, *fusion.folded(conv, norm))
        y = act(y) if act is not None else y
        return y.relu_() if relu else y  # the conv's output is ours; its backward does not read it
    y = norm(conv_with(conv, x, conv.weight, conv.bias))
    return torch.relu(y) if relu else y  # out of place: a norm-act's ReLU saved its output


def conv_with(conv, x, weight, bias):
    """conv's own convolution with these weights (timm's Conv2dSame pads to SAME first)."""
    same_pad = conv.same_pad if isinstance(conv, _ConvNorm) else is_type(conv, "Conv2dSame")
    if same_pad:
        conv2d_same = sys.modules["timm.layers.conv2d_same"].conv2d_same
        return conv2d_same(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return nn.Conv2d._conv_forward(conv, x, weight, bias)


def _add_relu(y, residual, relu):
    y = y + residual if residual is not None else y
    return torch.relu(y) if relu else y


def _residual_fits(x, conv, residual):
    """The residual is what the epilogue can add: a tensor of the output's shape, dtype and device."""
    s = conv.stride[0]
    shape = (x.shape[0], conv.out_channels, (x.shape[2] - 1) // s + 1, (x.shape[3] - 1) // s + 1)
    return (isinstance(residual, torch.Tensor) and tuple(residual.shape) == shape and residual.dtype == x.dtype
            and residual.device == x.device)


class _ConvNorm(nn.Conv2d):
    """A conv holding the original conv's parameters (the same Parameter objects, same names)
    and a reference to the norm layer after it, which stays registered where it was."""

    def __init__(self, conv, bn, relu):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                         padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                         bias=conv.bias is not None, padding_mode=conv.padding_mode, device="meta")
        self.weight, self.bias = conv.weight, conv.bias
        self.same_pad = is_type(conv, "Conv2dSame")  # timm's TF SAME conv: pads in its forward
        self.__dict__["bn"] = bn  # not a child: it is registered at its own path
        plan = norm_plan(bn) if bn is not None else NO_NORM
        self.relu, self.norm_relu = relu, plan.relu
        self.__dict__["act"] = plan.act  # a child of the norm layer

    def output_size(self, h, w):
        """The output's (height, width) for an input of h x w."""
        if self.same_pad:
            return tuple(-(-size // s) for size, s in zip((h, w), self.stride))
        if self.padding == "same":
            return h, w
        pads = (0, 0) if self.padding == "valid" else self.padding
        return tuple((size + 2 * p - d * (k - 1) - 1) // s + 1 for size, p, d, k, s in
                     zip((h, w), pads, self.dilation, self.kernel_size, self.stride))

    def ends_in_relu(self):
        """Its output is a ReLU's, nothing after it (what a concatenation slice can take)."""
        return (self.relu or self.norm_relu) and self.act is None

    def extra_repr(self):
        act = f", act={type(self.act).__name__}" if self.act is not None else ""
        return super().extra_repr() + f", bn={self.bn is not None}, relu={self.relu or self.norm_relu}{act}"


class Conv1x1BNAct(_ConvNorm):
    """relu(drop(act(bn(conv1x1(x)))) [+ residual]) on the fused kernel. Eval mode folds the
    norm into the conv and the residual into its epilogue; train mode runs the norm as a
    layer so its batch statistics are right. With `into` (a concatenation buffer, see
    ConcatBuffer), a 1x1 conv + ReLU writes its channel slice of that buffer."""

    def __init__(self, conv, bn=None, relu=False):
        super().__init__(conv, bn, relu)
        self.__dict__["drop"] = None  # stochastic depth before an add in the epilogue

    def takes_residual(self):
        """An add after it can go into the epilogue: nothing comes between the norm and it."""
        return not (self.relu or self.norm_relu or self.act is not None or self.drop is not None)

    def forward(self, x, residual=None, into=None):
        if into is not None and into[0] is not None and x.dim() == 4:
            slot = _slot(into[0], into[1], x, self.out_channels, self.output_size(*x.shape[-2:]))
            if slot is not None:
                return self._write(x, slot)
        return conv1x1_norm_act(x, self, self.bn, self.relu or self.norm_relu, self.act, residual, self.drop)

    def _write(self, x, slot):
        if self.stride == (1, 1) and self.ends_in_relu() and _foldable(self) and has_kernels(x.device):
            ops.conv1x1_relu_split_into(x, *_folded(self), [slot])
            return slot
        return slot.copy_(self(x))


class ConvBN(_ConvNorm):
    """relu(act(bn(conv(x)))) for a conv of any kernel, stride, padding, dilation or groups:
    eval mode folds the norm into its weights (one convolution); train mode runs the conv and
    the norm layer. With `into` (see ConcatBuffer) it writes its channel slice of a
    concatenation buffer, the ReLU being the one copy."""

    def forward(self, x, into=None):
        relu = self.relu or self.norm_relu
        if into is None or into[0] is None or x.dim() != 4:
            return conv_norm_act(x, self, self.bn, relu, self.act)
        y = conv_norm_act(x, self, self.bn, False, self.act)
        slot = _slot(into[0], into[1], y, y.shape[1], y.shape[-2:])
        if slot is None:
            return y.relu_() if relu else y
        return torch.clamp_min(y, 0, out=slot) if relu else slot.copy_(y)  # clamp_min keeps NaN, as relu


# --- residual adds and pools ----------------------------------------------------------

class GuardedResidualAdd(ResidualAdd):
    """residual_add where it applies (same shape, dtype, device, 4-D); eager otherwise."""

    def forward(self, x, residual):
        if (x.dim() == 4 and x.shape == residual.shape and x.dtype == residual.dtype
                and x.device == residual.device and x.is_floating_point()):
            return ops.residual_add(x, residual, True)
        return torch.relu(x + residual)


class SamePool(nn.Module):
    """A pool whose result is TF SAME pooling (given `is_same(height, width)`) on the fused
    kernel, and the original module everywhere else (unbatched, non-float or other sizes)."""

    def __init__(self, original, is_max, kernel_size, stride, is_same):
        super().__init__()
        self.__dict__["original"] = original  # stateless: held, not registered
        self.is_max, self.kernel_size, self.stride = is_max, kernel_size, stride
        self.__dict__["is_same"] = is_same

    def forward(self, x):
        if x.dim() == 4 and x.is_floating_point() and self.is_same(*x.shape[-2:]):
            op = ops.max_pool2d_same if self.is_max else ops.avg_pool2d_same
            return op(x, self.kernel_size, self.stride)
        return self.original(x)

    def extra_repr(self):
        return (f"{'max' if self.is_max else 'avg'}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, else {type(self.original).__name__}")


class PaddedMaxPool(nn.Module):
    """max_pool2d(F.pad(x, pads, value=-inf), k, s): SAME max pooling on the sizes whose
    SAME padding is `pads`, eager padding and pooling on the others."""

    def __init__(self, pads, kernel_size, stride):
        super().__init__()
        self.pads, self.kernel_size, self.stride = tuple(pads), kernel_size, stride

    def forward(self, x):
        if x.dim() == 4 and x.is_floating_point() and same_pads(*x.shape[-2:], self.kernel_size,
                                                                self.stride) == self.pads:
            return ops.max_pool2d_same(x, self.kernel_size, self.stride)
        return F.max_pool2d(F.pad(x, self.pads, value=float("-inf")), self.kernel_size, self.stride)

    def extra_repr(self):
        return f"pads={self.pads}, kernel_size={self.kernel_size}, stride={self.stride}"


def same_pads(h, w, kernel_size, stride):
    """SAME padding in F.pad's order (left, right, top, bottom)."""
    (_, _, (top, left)), _, (rows, cols) = same_geometry(h, w, kernel_size, stride)
    return (left, cols - left, top, rows - top)


def always(h, w):
    return True


class NoSamePadding:
    """(h, w) -> True where SAME pooling pads nothing (a picklable predicate)."""

    def __init__(self, kernel_size, stride):
        self.kernel_size, self.stride = kernel_size, stride

    def __call__(self, h, w):
        return not any(same_pads(h, w, self.kernel_size, self.stride))


# --- nn.Sequential by position --------------------------------------------------------

class FusedSequential(nn.Sequential):
    """An nn.Sequential whose runs of conv [+ norm] [+ ReLU] run fused: a dense 1x1 conv on
    fastconv's op, any conv with its norm folded in eval. The modules stay as they were at
    their indices, so code that indexes or unpacks the container, and the state dict, see
    no change. runs: {index of the conv: (end index, has a norm, relu, act, dense 1x1)}."""

    def forward(self, x):
        mods, i = list(self), 0
        while i < len(mods):
            run = self.__dict__["runs"].get(i)
            if run is not None and x.dim() == 4:
                end, has_norm, relu, act, dense = run
                norm = mods[i + 1] if has_norm else None
                x = conv1x1_norm_act(x, mods[i], norm, relu, act) if dense else \
                    conv_norm_act(x, mods[i], norm, relu, act)
                i = end
            else:
                x = mods[i](x)
                i += 1
        return x


# --- Inception: sibling 1x1 convs, the pool projection, concatenation without torch.cat

def _foldable(conv):
    return conv.bn is None or fusion.bn_foldable(conv.bn)


def _folded(conv):
    """(weight, bias) of a Conv1x1BNAct with its BN folded in (eval; cached by fusion.folded)."""
    return (conv.weight, conv.bias) if conv.bn is None else fusion.folded(conv, conv.bn)


def _slot(buf, lo, x, channels, hw):
    """The slice [:, lo:lo + channels] of a concatenation buffer that a branch computing
    from x writes, or None: no buffer, or one the branch's output ([N, channels, *hw], x's
    dtype and device) would not fit (the concatenation then falls back to torch.cat)."""
    if buf is None or lo is None or buf.dtype != x.dtype or buf.device != x.device:
        return None
    slot = buf[:, lo:lo + channels]
    return slot if tuple(slot.shape) == (x.shape[0], channels, *hw) else None


class SiblingConv1x1ReLU(nn.Module):
    """Sibling 1x1 conv [+ BN] + ReLU modules on one input as one GEMM; returns their
    outputs. With `into` = (buffer, offsets), the outputs with an offset are written into
    their slices of a concatenation buffer (no copy), the others into new tensors."""

    def __init__(self, convs):
        super().__init__()
        self.__dict__["convs"] = list(convs)  # references: they stay registered where they were

    def output_size(self, h, w):
        return h, w

    def forward(self, x, into=None):
        convs = self.convs
        sizes = [c.out_channels for c in convs]
        buf, offsets = into if into is not None else (None, [None] * len(convs))
        slots = [_slot(buf, lo, x, c, x.shape[-2:]) if x.dim() == 4 else None for lo, c in zip(offsets, sizes)]
        if x.dim() == 4 and all(_foldable(c) for c in convs) and has_kernels(x.device):
            weight, bias = stack_weights_cached(self, [_folded(c) for c in convs])
            if not any(s is not None for s in slots):
                return tuple(ops.conv1x1_relu_split(x, weight, bias, sizes))
            N, _, H, W = x.shape
            outs = [s if s is not None else _checks.empty_like_layout(x, (N, c, H, W)) for s, c in zip(slots, sizes)]
            ops.conv1x1_relu_split_into(x, weight, bias, outs)
            return tuple(outs)
        return tuple(c(x) if s is None else s.copy_(c(x)) for c, s in zip(convs, slots))


class PoolConv1x1ReLU(nn.Module):
    """3x3/1 max pool (padding 1) -> 1x1 conv [+ BN] + ReLU, the pool in the GEMM's load;
    with `into` (see ConcatBuffer), written into its slice of a concatenation buffer."""

    def __init__(self, pool, conv):
        super().__init__()
        self.__dict__["pool"], self.__dict__["conv"] = pool, conv

    def output_size(self, h, w):
        return h, w

    def forward(self, x, into=None):
        slot = _slot(*into, x, self.conv.out_channels, x.shape[-2:]) if into is not None and x.dim() == 4 else None
        if x.dim() == 4 and _foldable(self.conv) and has_kernels(x.device):
            if slot is None:
                return ops.pool_conv1x1_relu(x, *_folded(self.conv))
            ops.conv1x1_relu_split_into(x, *_folded(self.conv), [slot], pool=True)
            return slot
        y = self.conv(self.pool(x))
        return y if slot is None else slot.copy_(y)


class ReLUInto(nn.Module):
    """The ReLU ending a concatenation's branch (after anything but a fused conv) written
    into its slice of the buffer: the ReLU is the branch's one copy."""

    def forward(self, x, into=None):
        slot = _slot(*into, x, x.shape[1], x.shape[-2:]) if into is not None and x.dim() == 4 else None
        return torch.relu(x) if slot is None else torch.clamp_min(x, 0, out=slot)  # keeps NaN, as relu


class ConcatBuffer(nn.Module):
    """The output of a channel concatenation, allocated before its branches run so that each
    writes its own slice (ConcatInto then has nothing left to copy): [N, channels, H, W], the
    spatial size that of its first branch (`anchor`, a module with output_size). With `into`,
    a slice of an enclosing concatenation's buffer (nested concatenations). None - the
    branches then run as written and torch.cat joins them - with autograd (the writes are
    out= ops), in train mode, under autocast, and for input that is not 4-D."""

    def __init__(self, channels, anchor):
        super().__init__()
        self.channels = channels
        self.__dict__["anchor"] = anchor  # held: it stays registered where it is

    def output_size(self, h, w):
        return self.anchor.output_size(h, w)

    def forward(self, x, into=None):
        if (self.training or torch.is_grad_enabled() or x.dim() != 4
                or torch.is_autocast_enabled(x.device.type)):
            return None
        hw = self.anchor.output_size(*x.shape[-2:])
        if into is not None:
            slot = _slot(*into, x, self.channels, hw)
            if slot is not None:
                return slot
        return _checks.empty_like_layout(x, (x.shape[0], self.channels, *hw))

    def extra_repr(self):
        return f"channels={self.channels}"


def _written(part, buf, lo):
    """part is the slice buf[:, lo:lo + part.shape[1]] (its branch wrote it there). Asked
    of the tensors' metadata: slicing buf to compare would cost a dispatch per part."""
    return (part.dtype == buf.dtype and part.device == buf.device and part.stride() == buf.stride()
            and part.shape[0] == buf.shape[0] and part.shape[2:] == buf.shape[2:]
            and lo + part.shape[1] <= buf.shape[1]
            and part.data_ptr() == buf.data_ptr() + lo * buf.stride(1) * buf.element_size())


class ConcatInto(nn.Module):
    """torch.cat(parts, 1) into `buf` (ConcatBuffer) whose slices the branches wrote: copies
    the parts not written there yet (one copy each, as torch.cat makes) and returns buf;
    torch.cat itself where there is no buffer or a part does not fit it (the written slices
    hold the right values: they are parts too)."""

    def forward(self, buf, parts):
        if buf is None:
            return torch.cat(parts, 1)
        lo = 0
        for part in parts:
            if part.dim() != 4:
                return torch.cat(parts, 1)
            if not _written(part, buf, lo):
                slot = buf[:, lo:lo + part.shape[1]]
                if part.shape != slot.shape or part.dtype != buf.dtype or part.device != buf.device:
                    return torch.cat(parts, 1)
                slot.copy_(part)
            lo += part.shape[1]
        return buf if lo == buf.shape[1] else torch.cat(parts, 1)


FUSED = (Conv1x1BNAct, ConvBN, ResidualAdd, FusedMaxPool2d, FusedAvgPool2d, FusedSequential, SamePool,
         PaddedMaxPool, SiblingConv1x1ReLU, PoolConv1x1ReLU, ReLUInto, ConcatBuffer, ConcatInto)


def is_fused(module):
    return isinstance(module, FUSED)
