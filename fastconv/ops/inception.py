"""fastconv::conv1x1_relu_split(_into): an Inception block's 1x1 convs, each as one GEMM.

    relu(conv1x1(A, weight, bias)), its output channels split in order over 1..3 outputs
    A = x                             (pool=False: sibling 1x1 convs on one input)
    A = max_pool3x3_stride1_same(x)   (pool=True: the branch max pool fused into the
                                       pool projection's operand load; the pooled
                                       tensor never exists)

The sibling form runs an Inception block's branch1, 3x3-reduce and 5x5-reduce convs as
one launch over their concatenated weights: x is read once, not three times.
`conv1x1_relu_split` returns new tensors and has autograd; `conv1x1_relu_split_into`
writes into tensors the caller passes (channel slices of the block's output buffer:
no torch.cat) and is for inference. Backward: the ReLU mask and the bias gradient as
conv1x1_relu's; the pool's gradient goes to each window's argmax (the first maximum in
scan order, NaN wins, as PyTorch), recomputed from x; the GEMM's gradients are torch
matmuls. The CUDA C++ backend has no kernel for this yet: it raises.
"""
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastconv import _backend, _checks, _tuning
from fastconv.ops.conv1x1 import relu_bias_backward_op
from fastconv.ops.pool_same import max_pool2d_same_op, pool2d_same_backward_op
from fastconv.ops.residual import relu_backward_op

MAX_OUTPUTS = 3  # branch1 and the two reductions; the Triton kernel has 3 output pointers
_POOL = ([3, 3], [1, 1])  # the fused pool: 3x3, stride 1, SAME (pads one cell each side)


def _check(x, weight, bias, sizes):
    _checks.check_conv1x1(x, weight, bias)
    ints = all(isinstance(c, (int, torch.SymInt)) and not isinstance(c, bool) for c in sizes)
    if not 1 <= len(sizes) <= MAX_OUTPUTS or not ints or any(c <= 0 for c in sizes):
        raise ValueError(f"sizes must be 1 to {MAX_OUTPUTS} positive ints, got {sizes!r}")
    if sum(sizes) != weight.shape[0]:
        raise ValueError(f"sizes {list(sizes)} must add up to weight's {weight.shape[0]} output channels")


def _check_outs(x, outs):
    if not isinstance(outs, (list, tuple)) or not outs:
        raise TypeError(f"outs must be a non-empty list of tensors, got {type(outs).__name__}")
    N, _, H, W = x.shape
    for i, o in enumerate(outs):
        _checks.check_tensor(o, f"outs[{i}]", ndim=4)
        _checks.check_same(o, x, f"outs[{i}]", "x")
        if (o.shape[0], *o.shape[2:]) != (N, H, W):
            raise ValueError(f"outs[{i}] must be [{N}, C, {H}, {W}] (x's batch and size), "
                             f"got {tuple(o.shape)}")
    return [o.shape[1] for o in outs]


def _run(x, weight, bias, outs, pool):
    """Write relu(conv1x1(A, weight, bias)) into outs, split by channels."""
    backend = _backend.resolve(x.device, "conv1x1_relu_split", key=lambda: _tuning.split_key(x, weight, pool))
    if backend == "cuda":
        raise NotImplementedError("fastconv backend 'cuda' cannot run conv1x1_relu_split: "
                                  "no CUDA C++ kernel yet (use 'triton' or 'torch')")
    if backend == "triton":
        from fastconv._triton.pool_conv1x1 import conv1x1_split
        # float32 follows PyTorch's convolution flag, as eager cuDNN does
        conv1x1_split(x, weight, bias, outs, pool, torch.backends.cudnn.allow_tf32)
        return
    # torch: pool with PyTorch's padding 1 (equal to SAME for 3x3 stride 1: padded cells
    # never win), one conv over all columns, then the ReLU written into each output.
    a = F.max_pool2d(x, 3, 1, 1) if pool else x
    y = F.conv2d(a, weight if weight.dim() == 4 else weight[:, :, None, None], bias)
    lo = 0
    for o in outs:
        torch.clamp_min(y[:, lo:lo + o.shape[1]], 0, out=o)  # keeps NaN, as relu
        lo += o.shape[1]


@torch.library.custom_op("fastconv::conv1x1_relu_split_into", mutates_args=("outs",))
def conv1x1_relu_split_into_op(x: Tensor, weight: Tensor, bias: Optional[Tensor],
                               outs: List[Tensor], pool: bool) -> None:
    _check(x, weight, bias, _check_outs(x, outs))
    _run(x, weight, bias, outs, pool)


@conv1x1_relu_split_into_op.register_fake
def _(x, weight, bias, outs, pool):
    _check(x, weight, bias, _check_outs(x, outs))


@torch.library.custom_op("fastconv::conv1x1_relu_split", mutates_args=())
def conv1x1_relu_split_op(x: Tensor, weight: Tensor, bias: Optional[Tensor],
                          sizes: List[int], pool: bool) -> List[Tensor]:
    outs = _fake_split(x, weight, bias, sizes, pool)
    _run(x, weight, bias, outs, pool)
    return outs


@conv1x1_relu_split_op.register_fake
def _fake_split(x, weight, bias, sizes, pool):
    _check(x, weight, bias, sizes)
    N, _, H, W = x.shape
    return [_checks.empty_like_layout(x, (N, c, H, W)) for c in sizes]


def _setup(ctx, inputs, output):
    x, weight, bias, _, ctx.pool = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight, *output)


def _backward(ctx, grads):
    x, weight, *outs = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad[:2]
    need_b = ctx.has_bias and ctx.needs_input_grad[2]
    # the outputs as one [N, Cout, H, W] GEMM result again (backward only: one copy)
    grad = torch.cat([torch.zeros_like(o) if g is None else g for g, o in zip(grads, outs)], 1)
    out = torch.cat(outs, 1)
    bias_grad = None
    if need_b:
        grad, bias_grad = relu_bias_backward_op(grad, out, True)
    else:
        grad = relu_backward_op(grad, out)
    cout, cin = weight.shape[:2]
    w2d = weight.reshape(cout, cin)
    g = grad.permute(0, 2, 3, 1)  # [N, H, W, Cout]: pixels x output channels
    x_grad = weight_grad = None
    if need_x:
        a_grad = (g @ w2d).permute(0, 3, 1, 2)
        x_grad = pool2d_same_backward_op(a_grad, x, *_POOL, True) if ctx.pool else a_grad
    if need_w:
        a = max_pool2d_same_op(x, *_POOL) if ctx.pool else x  # recomputed, as the forward never stored it
        weight_grad = (g.reshape(-1, cout).t() @ a.permute(0, 2, 3, 1).reshape(-1, cin))
        weight_grad = weight_grad.reshape(weight.shape)
    return x_grad, weight_grad, bias_grad, None, None


conv1x1_relu_split_op.register_autograd(_backward, setup_context=_setup)


def stack_weights(pairs):
    """(weight [sum Cout, Cin], bias [sum Cout]) of sibling 1x1 convs, from their (weight,
    bias) pairs (a None bias is zeros), written into one new tensor each: no torch.cat."""
    cin = pairs[0][0].shape[1]
    weight = pairs[0][0].new_empty(sum(w.shape[0] for w, _ in pairs), cin)
    bias = weight.new_empty(weight.shape[0])
    lo = 0
    for w, b in pairs:
        rows = slice(lo, lo + w.shape[0])
        weight[rows].copy_(w.reshape(w.shape[0], cin))
        if b is None:
            bias[rows].zero_()
        else:
            bias[rows].copy_(b)
        lo += w.shape[0]
    return weight, bias


def stack_weights_cached(owner, pairs):
    """stack_weights(pairs), kept on `owner` while the pairs are the same tensors (cached
    folds: a refold makes new ones), never when they carry autograd graphs."""
    keys = [t for pair in pairs for t in pair]
    cached = owner.__dict__.get("_fastconv_stacked")
    if cached is not None and len(cached[0]) == len(keys) and all(a is b for a, b in zip(cached[0], keys)):
        return cached[1]
    stacked = stack_weights(pairs)
    if not any(t is not None and t.requires_grad for t in keys):
        owner.__dict__["_fastconv_stacked"] = (keys, stacked)
    return stacked


def has_kernels(device):
    """Whether the backend that runs on `device` has these ops' kernels (not yet "cuda")."""
    return _backend.resolve(device, "conv1x1_relu_split") in ("torch", "triton")


def _types_ok(x, weight, bias):
    return (isinstance(x, Tensor) and isinstance(weight, Tensor)
            and (bias is None or isinstance(bias, Tensor)))


def conv1x1_relu_split(x: Tensor, weight: Tensor, bias: Optional[Tensor], sizes,
                       pool: bool = False) -> List[Tensor]:
    """relu(conv1x1(x, weight, bias)) as one GEMM, its channels split into tensors of
    `sizes` channels (1 to 3 of them): sibling 1x1 convs on one input read it once.

    x: [N, Cin, H, W], any strides. weight: [sum(sizes), Cin(, 1, 1)], the convs'
    weights stacked. bias: [sum(sizes)] or None. pool=True computes the 3x3 stride-1
    SAME max pool of x inside the GEMM's operand load first (see pool_conv1x1_relu).
    """
    if not _types_ok(x, weight, bias) or not isinstance(sizes, (list, tuple)):
        _check(x, weight, bias, sizes if isinstance(sizes, (list, tuple)) else [sizes])
    return conv1x1_relu_split_op(x, weight, bias, list(sizes), pool)


def pool_conv1x1_relu(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """relu(conv1x1(max_pool2d_same(x, 3, 1), weight, bias)): an Inception block's pool
    projection, the pool computed in the GEMM's operand load (never written to memory).

    x: [N, Cin, H, W], any strides. weight: [Cout, Cin(, 1, 1)]. bias: [Cout] or None.
    The pool is 3x3 stride 1 with one padded cell each side (TF SAME = PyTorch's
    MaxPool2d(3, 1, padding=1)): padded cells never win, NaN propagates.
    """
    if not _types_ok(x, weight, bias):
        _check(x, weight, bias, [1])
    return conv1x1_relu_split_op(x, weight, bias, [weight.shape[0]], True)[0]


def conv1x1_relu_split_into(x: Tensor, weight: Tensor, bias: Optional[Tensor], outs,
                            pool: bool = False) -> None:
    """conv1x1_relu_split written into `outs` (1 to 3 tensors [N, c_i, H, W], any strides,
    e.g. channel slices of a concatenation buffer) instead of new tensors. No autograd:
    for inference: raises if x, weight or bias requires grad while grad mode is on (no graph
    would be recorded; use conv1x1_relu_split, or torch.no_grad()). outs must not overlap x."""
    if not _types_ok(x, weight, bias):
        _check(x, weight, bias, [1])
    if torch.is_grad_enabled():
        for name, t in (("x", x), ("weight", weight), ("bias", bias)):
            if t is not None and t.requires_grad:
                raise RuntimeError(f"conv1x1_relu_split_into has no autograd, but {name} requires grad "
                                   "with grad mode on: use conv1x1_relu_split (differentiable), or call "
                                   "it under torch.no_grad() / torch.inference_mode()")
    conv1x1_relu_split_into_op(x, weight, bias, list(outs) if isinstance(outs, tuple) else outs, pool)
