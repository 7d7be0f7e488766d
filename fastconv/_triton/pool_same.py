"""Triton kernels for TensorFlow-"SAME" max and average pooling, forward and backward.

The padding is never materialised: a window cell outside the input is masked
out of the load. Max ignores those cells; average divides by the number of real
cells in the window (TF semantics).

Napkin math (forward, k x k stride s, 16-bit): read the input once from DRAM
(2 B per input element; overlapping windows hit L1/L2) + write 2 B per output
element. Eager `F.pad(-inf)` + `max_pool2d` first writes and re-reads a padded
copy: ~3x the input bytes.
"""
import triton
import triton.language as tl

from fastconv._triton.elementwise import acc_type, nchw_index


@triton.jit
def _pool_fwd_kernel(x_ptr, out_ptr, idx_ptr, numel, C, H, W, OH, OW,
                     sx_n, sx_c, sx_h, sx_w, pad_h, pad_w, SH, SW,
                     KH: tl.constexpr, KW: tl.constexpr, IS_MAX: tl.constexpr,
                     WRITE_IDX: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                     ACC: tl.constexpr, BLOCK: tl.constexpr):
    # Each program owns BLOCK consecutive elements of the dense output; each
    # element walks its KH x KW window (unrolled), reading x through its strides.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    n, c, oh, ow = nchw_index(offs, C, OH, OW, CHANNELS_LAST)
    base = x_ptr + n * sx_n + c * sx_c
    h0 = oh * SH - pad_h
    w0 = ow * SW - pad_w
    if IS_MAX:
        acc = tl.full([BLOCK], float("-inf"), ACC)
        idx = tl.full([BLOCK], -1, tl.int32)
    else:
        acc = tl.zeros([BLOCK], ACC)
    for kh in tl.static_range(KH):
        for kw in tl.static_range(KW):
            h = h0 + kh
            w = w0 + kw
            real = mask & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            v = tl.load(base + h * sx_h + w * sx_w, mask=real, other=0.0).to(ACC)
            if IS_MAX:
                # As PyTorch: the first maximum in scan order wins, a NaN always
                # wins (so NaN propagates), and an all -inf window keeps its first real cell.
                take = real & ((v > acc) | (v != v) | (idx < 0))
                acc = tl.where(take, v, acc)
                idx = tl.where(take, kh * KW + kw, idx)
            else:
                acc += v
    if IS_MAX:
        if WRITE_IDX:
            tl.store(idx_ptr + offs, idx, mask=mask)
    else:
        rows = tl.minimum(h0 + KH, H) - tl.maximum(h0, 0)
        cols = tl.minimum(w0 + KW, W) - tl.maximum(w0, 0)
        acc = acc / tl.maximum(rows * cols, 1).to(ACC)  # >= 1 real cell; the max guards masked lanes
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pool_bwd_kernel(g_ptr, idx_ptr, gin_ptr, numel, C, H, W, OH, OW,
                     sg_n, sg_c, sg_h, sg_w, si_n, si_c, si_h, si_w, pad_h, pad_w, SH, SW,
                     KH: tl.constexpr, KW: tl.constexpr, CAND_H: tl.constexpr,
                     CAND_W: tl.constexpr, IS_MAX: tl.constexpr,
                     CHANNELS_LAST: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # Gather, no atomics: each program owns BLOCK elements of the dense input
    # gradient; each element visits the (at most CAND_H x CAND_W = ceil(k/s)^2)
    # windows that contain it and sums their gradient (max: only where it was
    # the window's argmax, read from idx).
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    n, c, h, w = nchw_index(offs, C, H, W, CHANNELS_LAST)
    oh_last = (h + pad_h) // SH  # the last window row that starts at or above h
    ow_last = (w + pad_w) // SW
    acc = tl.zeros([BLOCK], ACC)
    for i in tl.static_range(CAND_H):
        for j in tl.static_range(CAND_W):
            oh = oh_last - i
            ow = ow_last - j
            dh = h - (oh * SH - pad_h)  # position of (h, w) inside window (oh, ow)
            dw = w - (ow * SW - pad_w)
            hit = mask & (oh >= 0) & (oh < OH) & (ow >= 0) & (ow < OW) & (dh < KH) & (dw < KW)
            g = tl.load(g_ptr + n * sg_n + c * sg_c + oh * sg_h + ow * sg_w,
                        mask=hit, other=0.0).to(ACC)
            if IS_MAX:
                arg = tl.load(idx_ptr + n * si_n + c * si_c + oh * si_h + ow * si_w,
                              mask=hit, other=-1)
                acc += tl.where(arg == dh * KW + dw, g, 0.0)
            else:
                h0 = oh * SH - pad_h
                w0 = ow * SW - pad_w
                rows = tl.minimum(h0 + KH, H) - tl.maximum(h0, 0)
                cols = tl.minimum(w0 + KW, W) - tl.maximum(w0, 0)
                acc += g / tl.maximum(rows * cols, 1).to(ACC)  # g = 0 off-window; no 0/0
    tl.store(gin_ptr + offs, acc.to(gin_ptr.dtype.element_ty), mask=mask)


BLOCK = 512  # 4 warps x 4 elements per thread; each element does KH*KW loads


def pool_forward(x, out, idx, geometry, is_max):
    """Pool x into the dense `out`; with idx (int32, out's shape and layout), also the argmax."""
    if out.numel() == 0:
        return out
    (kh, kw), (sh, sw), (ph, pw) = geometry
    N, C, H, W = x.shape
    OH, OW = out.shape[2:]
    grid = (triton.cdiv(out.numel(), BLOCK),)
    _pool_fwd_kernel[grid](x, out, idx if idx is not None else out, out.numel(), C, H, W, OH, OW,
                           *x.stride(), ph, pw, sh, sw, KH=kh, KW=kw, IS_MAX=is_max,
                           WRITE_IDX=idx is not None, CHANNELS_LAST=not out.is_contiguous(), ACC=acc_type(x),
                           BLOCK=BLOCK, num_warps=4)
    return out


def pool_backward(grad_out, grad_in, idx, geometry, is_max):
    """grad_in (dense, x's shape) from grad_out (any strides) and, for max, the argmax idx."""
    if grad_in.numel() == 0:
        return grad_in
    (kh, kw), (sh, sw), (ph, pw) = geometry
    N, C, H, W = grad_in.shape
    OH, OW = grad_out.shape[2:]
    grid = (triton.cdiv(grad_in.numel(), BLOCK),)
    idx = idx if idx is not None else grad_out  # not read by the average kernel
    _pool_bwd_kernel[grid](grad_out, idx, grad_in, grad_in.numel(), C, H, W, OH, OW,
                           *grad_out.stride(), *idx.stride(), ph, pw, sh, sw,
                           KH=kh, KW=kw, CAND_H=triton.cdiv(kh, sh), CAND_W=triton.cdiv(kw, sw),
                           IS_MAX=is_max, CHANNELS_LAST=not grad_in.is_contiguous(), ACC=acc_type(grad_in),
                           BLOCK=BLOCK, num_warps=4)
    return grad_in
