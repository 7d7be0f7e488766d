"""Triton kernels for the residual add (+ReLU) and the ReLU backward.

Napkin math (per output element, 16-bit dtypes): read a (2 B) + read b (2 B) +
write out (2 B) = 6 B; no reuse, so the floor is bytes / copy bandwidth.
Eager `relu(x + r)` runs two passes (add: 6 B, relu: 4 B) = 10 B per element.
"""
import functools

import torch
import triton
import triton.language as tl

from fastconv import _launcher_contract as contract
from fastconv._triton.utils import acc_type, cdiv, on_device

# The op of _binary_kernel: the launchers' BINARY_* codes, named for the kernel.
ADD: tl.constexpr = tl.constexpr(contract.BINARY_ADD)
ADD_RELU: tl.constexpr = tl.constexpr(contract.BINARY_ADD_RELU)
RELU_GRAD: tl.constexpr = tl.constexpr(contract.BINARY_RELU_GRAD)


@triton.jit
def nchw_index(offs, C, H, W, CHANNELS_LAST: tl.constexpr):
    """(n, c, h, w) of the elements at flat positions `offs` of a dense
    NCHW (or, if CHANNELS_LAST, NHWC) tensor of sizes (., C, H, W)."""
    if CHANNELS_LAST:
        c = offs % C
        w = (offs // C) % W
        h = (offs // (C * W)) % H
        n = offs // (C * W * H)
    else:
        w = offs % W
        h = (offs // W) % H
        c = (offs // (W * H)) % C
        n = offs // (W * H * C)
    return n, c, h, w


@triton.jit
def _binary_kernel(a_ptr, b_ptr, out_ptr, numel, C, H, W,
                   sa_n, sa_c, sa_h, sa_w, sb_n, sb_c, sb_h, sb_w,
                   OP: tl.constexpr, DENSE: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                   ACC: tl.constexpr, BLOCK: tl.constexpr):
    # Each program owns BLOCK consecutive elements of the dense output `out`.
    # DENSE: a and b have out's strides, so flat offsets address all three and
    # the loads vectorise; otherwise a and b are read through their own strides.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    if DENSE:
        a_offs = offs
        b_offs = offs
    else:
        n, c, h, w = nchw_index(offs, C, H, W, CHANNELS_LAST)
        a_offs = n * sa_n + c * sa_c + h * sa_h + w * sa_w
        b_offs = n * sb_n + c * sb_c + h * sb_h + w * sb_w
    a = tl.load(a_ptr + a_offs, mask=mask).to(ACC)
    b = tl.load(b_ptr + b_offs, mask=mask).to(ACC)
    if OP == RELU_GRAD:  # a = grad, b = relu output; as torch, 0 where out <= 0
        y = tl.where(b <= 0.0, 0.0, a)
    else:
        y = a + b
        if OP == ADD_RELU:  # written so that NaN stays NaN, as torch.relu does
            y = tl.where(y < 0.0, 0.0, y)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


VECTOR = 16  # bytes per thread per access: one 128-bit load/store
NUM_WARPS = 4
MIN_WAVES = 4  # grid / programs resident at once; a ragged last wave then idles SMs <= ~1/4 of the run
RESIDENT = 2048 // (32 * NUM_WARPS)  # programs an SM holds at once (2048 threads per SM)


@functools.lru_cache
def _sm_count(device):
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132  # the interpreter: an H100/H200


def _block(numel, element_size, device):
    """Elements per program: each thread moves 16-byte vectors, 2 of them or 1.

    Large tensors take 2 per thread (32 B per tensor: the 56x56 layers ran at 99% of
    copy bandwidth so on an H200); a small one takes 1, so the grid still has
    MIN_WAVES waves of programs (128x2048x7x7 bf16: 12.8M elements in 2048-element
    programs are 6272 programs, 3 waves of 132 SMs x 16; in 1024-element ones, 6).
    """
    vec = VECTOR // element_size
    min_programs = MIN_WAVES * RESIDENT * _sm_count(device)
    for per_thread in (2, 1):
        block = vec * per_thread * 32 * NUM_WARPS
        if cdiv(numel, block) >= min_programs:
            break
    return block


def binary(a, b, out, op):
    """out = op(a, b) elementwise; `out` is dense (NCHW or NHWC), a and b any strides."""
    numel = out.numel()
    if numel == 0:
        return out
    N, C, H, W = out.shape
    channels_last = not out.is_contiguous()
    dense = a.stride() == out.stride() and b.stride() == out.stride()
    block = _block(numel, out.element_size(), out.device)
    grid = (cdiv(numel, block),)
    with on_device(out):
        _binary_kernel[grid](a, b, out, numel, C, H, W, *a.stride(), *b.stride(),
                             OP=op, DENSE=dense, CHANNELS_LAST=channels_last,
                             ACC=acc_type(out), BLOCK=block, num_warps=NUM_WARPS)
    return out
