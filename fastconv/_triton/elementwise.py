"""Triton kernels for the residual add (+ReLU) and the ReLU backward.

Napkin math (per output element, 16-bit dtypes): read a (2 B) + read b (2 B) +
write out (2 B) = 6 B; no reuse, so the floor is bytes / copy bandwidth.
Eager `relu(x + r)` runs two passes (add: 6 B, relu: 4 B) = 10 B per element.
"""
import triton
import triton.language as tl

import torch

def acc_type(t):
    """Arithmetic dtype of the kernels: fp32 (fp64 for float64 tensors, so gradcheck can run)."""
    return tl.float64 if t.dtype == torch.float64 else tl.float32


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
    # OP: fastconv._backend.BINARY_ADD (0), BINARY_ADD_RELU (1), BINARY_RELU_GRAD (2)
    if OP == 2:  # ReLU backward: a = grad, b = relu output; as torch, 0 where out <= 0
        y = tl.where(b <= 0.0, 0.0, a)
    else:
        y = a + b
        if OP == 1:  # written so that NaN stays NaN, as torch.relu does
            y = tl.where(y < 0.0, 0.0, y)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def _block(t):
    # 32 bytes per thread per tensor at 4 warps (128 threads): 16-bit -> 2048, fp32 -> 1024.
    return 32 * 128 // t.element_size()


def binary(a, b, out, op):
    """out = op(a, b) elementwise; `out` is dense (NCHW or NHWC), a and b any strides."""
    numel = out.numel()
    if numel == 0:
        return out
    N, C, H, W = out.shape
    channels_last = not out.is_contiguous()
    dense = a.stride() == out.stride() and b.stride() == out.stride()
    block = _block(out)
    grid = (triton.cdiv(numel, block),)
    _binary_kernel[grid](a, b, out, numel, C, H, W, *a.stride(), *b.stride(),
                         OP=op, DENSE=dense, CHANNELS_LAST=channels_last,
                         ACC=acc_type(out), BLOCK=block, num_warps=4)
    return out
