"""What a layer provably computes: the checks the patterns make on modules, by type and
configuration (never by name). Third-party layers are recognized only as the exact
classes whose forward was read (timm's, torchvision's), looked up only if the model's
code imported them."""
import collections
import sys

from torch import nn

from fastconv import fusion

_KNOWN = {  # class name: its defining module
    "Conv2dSame": "timm.layers.conv2d_same",        # a dynamic zero pad to SAME, then the conv
    "BatchNormAct2d": "timm.layers.norm_act",       # F.batch_norm as BatchNorm2d's, drop, act
    "MaxPool2dSame": "timm.layers.pool2d_same",     # a dynamic -inf pad to SAME, then the pool
    "AvgPool2dSame": "timm.layers.pool2d_same",     # a dynamic zero pad (counted), then the pool
    "DropPath": "timm.layers.drop",                 # stochastic depth: the identity in eval
    "StochasticDepth": "torchvision.ops.stochastic_depth",  # likewise
}


def is_type(module, name):
    """type(module) is that known class (its library is looked up only if already imported)."""
    defined_in = sys.modules.get(_KNOWN[name])
    return defined_in is not None and type(module) is getattr(defined_in, name, None)


def conv1x1_reason(conv):
    """Why this module is not a dense 1x1 conv the fused op computes exactly (None if it is)."""
    if is_type(conv, "Conv2dSame"):
        # For a 1x1 kernel with dilation 1 the SAME pad is max((ceil(in/s) - 1) * s + 1 - in, 0)
        # = 0 on every size: a plain conv.
        if conv.kernel_size == (1, 1) and conv.dilation == (1, 1) and conv.padding == (0, 0):
            return None if conv.groups == 1 else "grouped conv"
    elif isinstance(conv, nn.Conv2d) and type(conv) is not nn.Conv2d:
        return f"{type(conv).__name__}: a conv subclass with its own forward"
    return fusion.is_fusable_conv1x1(conv)


def fold_reason(conv):
    """Why a BN after this conv cannot be folded into its weights (None if it can): any
    kernel, stride, padding, dilation or groups of nn.Conv2d and timm's Conv2dSame; not a
    subclass with a forward of its own (weight standardization, ...)."""
    if type(conv) is nn.Conv2d or is_type(conv, "Conv2dSame"):
        return None
    return f"{type(conv).__name__}: a conv subclass with its own forward"


def describe_conv(conv):
    """"3x3 conv", "3x3 depthwise conv", "1x1 grouped conv", ... for the report."""
    kh, kw = conv.kernel_size
    kind = ("depthwise " if conv.groups == conv.in_channels else "grouped ") if conv.groups > 1 else ""
    kind += "dilated " if conv.dilation != (1, 1) else ""
    padded = conv.padding not in ((0, 0), "valid") or conv.padding_mode != "zeros"
    kind += "padded " if (kh, kw) == (1, 1) and padded else ""  # (a kxk conv pads as a rule)
    return f"{kh}x{kw} {kind}conv"


class NormPlan(collections.namedtuple("NormPlan", "relu act")):
    """How a foldable norm layer ends: relu (its activation is a ReLU: into the epilogue),
    act (any other activation module: runs after the folded conv; None if none)."""


NO_NORM = NormPlan(False, None)


def norm_plan(norm):
    """The NormPlan of a norm layer the converter folds, or the reason it does not (a str)."""
    if type(norm) is nn.BatchNorm2d:
        return NO_NORM
    if is_type(norm, "BatchNormAct2d"):
        if type(norm.drop) is not nn.Identity:
            return f"norm-act layer with a {type(norm.drop).__name__} after the norm"
        if type(norm.act) is nn.Identity:
            return NO_NORM
        if type(norm.act) is nn.ReLU:
            return NormPlan(True, None)
        return NormPlan(False, norm.act)
    return f"{type(norm).__name__}: not a BatchNorm2d (or timm BatchNormAct2d) to fold"


def norm_pattern(norm):
    """" + BN", " + BN-act(SiLU)", ... for the report."""
    if type(norm) is nn.BatchNorm2d:
        return " + BN"
    plan = norm_plan(norm)
    return " + BN-act" + ("(ReLU)" if plan.relu else f"({type(plan.act).__name__})" if plan.act else "")


def is_norm(module):
    return isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))


def is_pool(module):
    return type(module) in (nn.MaxPool2d, nn.AvgPool2d) or is_type(module, "MaxPool2dSame") \
        or is_type(module, "AvgPool2dSame")


def is_drop(module):
    """Stochastic depth (torchvision's StochasticDepth, timm's DropPath): the identity in eval
    mode, so an add after it can go into a conv's epilogue there."""
    return is_type(module, "StochasticDepth") or is_type(module, "DropPath")


def pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)
