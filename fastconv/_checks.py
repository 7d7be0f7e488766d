"""Argument checks shared by the ops, and the output-layout rule."""
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(t, name, ndim=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor "
                        f"(float16, bfloat16, float32 or float64), got {t.dtype}")
    ranks = (ndim,) if isinstance(ndim, int) else ndim
    if ndim is not None and t.dim() not in ranks:
        raise ValueError(f"{name} must be a {' or '.join(f'{r}-D' for r in ranks)} tensor, "
                         f"got shape {tuple(t.shape)}")


def check_same(t, ref, name, ref_name):
    """`t` must share `ref`'s dtype and device."""
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}")


def check_conv1x1(x, weight, bias):
    """x [N, Cin, H, W], weight [Cout, Cin] or [Cout, Cin, 1, 1], bias [Cout] or None: the
    arguments every 1x1 conv op takes, each error naming the argument."""
    check_tensor(x, "x", ndim=4)
    check_tensor(weight, "weight", ndim=(2, 4))
    check_same(weight, x, "weight", "x")
    if weight.dim() == 4 and tuple(weight.shape[2:]) != (1, 1):
        raise ValueError(f"weight must be a 1x1 kernel [Cout, Cin, 1, 1], got {tuple(weight.shape)}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight has {weight.shape[1]} input channels but x has {x.shape[1]} "
                         f"(weight {tuple(weight.shape)}, x {tuple(x.shape)})")
    if bias is not None:
        check_tensor(bias, "bias", ndim=1)
        check_same(bias, x, "bias", "x")
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have {weight.shape[0]} elements (Cout), got {bias.shape[0]}")


def pair(v, name):
    """An int or a pair of ints, each >= 1, as a list of two ints."""
    if type(v) is int and v > 0:  # the common case first: asked on every pool call
        return [v, v]
    vals = [v, v] if isinstance(v, int) else list(v) if isinstance(v, (list, tuple)) else [v]
    if len(vals) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in vals):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    if min(vals) <= 0:
        raise ValueError(f"{name} must be positive, got {v!r}")
    return vals


def out_memory_format(x):
    """The layout eager PyTorch gives the output of a conv/pool/add on `x`.

    Channels-last when x's strides are ordered like NHWC (channel stride the
    smallest), contiguous NCHW otherwise; a tensor contiguous in both (C == 1 or
    H == W == 1) counts as NCHW, as in PyTorch's suggest_memory_format.
    """
    if x.dim() == 4 and not x.is_contiguous():
        sn, sc, sh, sw = x.stride()
        if x.is_contiguous(memory_format=torch.channels_last) or sc < sw <= sh <= sn:
            return torch.channels_last
    return torch.contiguous_format


def empty_like_layout(x, shape, dtype=None):
    """A new tensor of `shape` on x's device (and dtype), in the layout eager would give."""
    return torch.empty(shape, dtype=dtype or x.dtype, device=x.device,
                       memory_format=out_memory_format(x))
