"""Triton kernel for an Inception block's 1x1 convs: one GEMM, columns split over outputs,
optionally with the branch's 3x3 max pool computed inside the GEMM's operand load.

    out[m, j] = relu(sum_k A[m, k] * w[j, k] + bias[j]),  m = (n, h, w) a pixel
    A = x                              (A_PLAIN: the sibling 1x1 convs)
    A = maxpool3x3_s1_same(x)          (A_MAX3X3: the pool projection)

Columns [0, END0) go to out0, [END0, END1) to out1, [END1, COUT) to out2, each a
[N, c, H, W] tensor read through its own strides: a channel slice of the block's
output buffer (no torch.cat) or a tensor of its own (a reduction feeding a 3x3 conv).

A_MAX3X3 loads each A tile as the max over the pixel's 3x3 window: 9 masked loads of
the neighbouring pixels' channels (cells outside the image are -inf, so they never
win; NaN wins, as PyTorch). The neighbours' rows are the tile's own rows shifted by
one pixel or one image row, so they come from L1/L2: DRAM reads x about once, and the
pooled tensor is never written.

Napkin math, GoogLeNet inception3a (x: 192 x 28 x 28, 16-bit, batch 128: x is 38.5 MB,
200 KB per 1x1-output channel): eager reads x three times for branch1 and the two
reductions (115.6 MB) and writes 176 channels; the sibling GEMM reads x once (38.5 MB):
77 MB saved. Eager's pool reads x and writes the pooled tensor, the projection reads it
back (115.6 MB); the fused projection reads x once (38.5 MB): 77 MB saved. The 1x1
branch (64 ch) and the pool projection (32 ch) are written into the block output
directly, saving torch.cat's read + write of them (2 x 19.3 MB = 38.5 MB). Total about
193 MB per block forward (the 3x3 branches are still copied once: 2 x 32.1 MB).
FLOPs are unchanged (the pool's 8 compares per element are free beside the GEMM).
"""
import torch
import triton
import triton.language as tl

from fastconv._triton.conv1x1 import _tile_coords, _whole
from fastconv._triton.utils import (
    INT32_LIMIT,
    acc_type,
    cdiv,
    dot_precision,
    needs_int64,
    next_power_of_2,
    on_device,
    vector,
)

# How the GEMM's A tile is loaded (a named constexpr mode).
A_PLAIN = tl.constexpr(0)   # x itself
A_MAX3X3 = tl.constexpr(1)  # the 3x3 stride-1 SAME max pool of x, computed in the load

MAX_OUTPUTS = 3  # the kernel's output pointers: branch1 and the two reductions


@triton.jit
def _load_a(x_ptr, n, h, w, ks, row_ok, k_ok, H, W, sx_n, sx_c, sx_h, sx_w,
            A_LOAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """The [BLOCK_M, BLOCK_K] A tile: x's channels ks at pixels (n, h, w), or their 3x3 max."""
    ok = row_ok[:, None] & k_ok[None, :]
    if A_LOAD == A_PLAIN:
        a = tl.load(x_ptr + (n * sx_n + h * sx_h + w * sx_w)[:, None] + ks[None, :] * sx_c,
                    mask=ok, other=0.0)
    else:
        a = tl.full((BLOCK_M, BLOCK_K), float("-inf"), x_ptr.dtype.element_ty)
        for i in tl.static_range(3):
            for j in tl.static_range(3):
                hh = h + (i - 1)
                ww = w + (j - 1)
                real = row_ok & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
                v = tl.load(x_ptr + (n * sx_n + hh * sx_h + ww * sx_w)[:, None] + ks[None, :] * sx_c,
                            mask=real[:, None] & k_ok[None, :], other=float("-inf"))
                a = tl.where((v > a) | (v != v), v, a)  # a NaN, once taken, is never replaced
        # masked lanes hold -inf: zero them, or -inf * 0 (a masked weight) poisons the sum
        a = tl.where(ok, a, 0.0)
    return a  # one return: Triton compiles a return inside an if poorly


@triton.jit
def _store_columns(o_ptr, n, h, w, so_n, so_c, so_h, so_w, acc, cols, row_ok, lo, hi, N_VEC: tl.constexpr):
    """Store the (rounded) accumulator's columns [lo, hi) as channels 0.. of o (any strides;
    N_VEC > 1: lo, hi and o's pixel rows are whole 16-byte vectors)."""
    lo, hi = _whole(lo, N_VEC), _whole(hi, N_VEC)
    mask = row_ok[:, None] & ((cols >= lo) & (cols < hi))[None, :]
    o_rows = n * _whole(so_n, N_VEC) + h * _whole(so_h, N_VEC) + w * _whole(so_w, N_VEC)
    tl.store(o_ptr + o_rows[:, None] + (cols - lo)[None, :] * so_c, acc, mask=mask)


@triton.jit
def _split_gemm_kernel(
        # pointers
        x_ptr, w_ptr, b_ptr, o0_ptr, o1_ptr, o2_ptr,
        # sizes: M = N*H*W pixels; out0 gets columns [0, END0), out1 [END0, END1), out2 the
        # rest (the launcher passes COUT for the ends of absent outputs)
        M, COUT, CIN, H, W, END0, END1,
        # strides
        sx_n, sx_c, sx_h, sx_w, sw_o, sw_i,
        s0_n, s0_c, s0_h, s0_w, s1_n, s1_c, s1_h, s1_w, s2_n, s2_c, s2_h, s2_w,
        # meta-parameters
        A_LOAD: tl.constexpr, NUM_OUT: tl.constexpr, HAS_BIAS: tl.constexpr, INDEX_64: tl.constexpr,
        N_VEC: tl.constexpr,
        PRECISION: tl.constexpr, ACC: tl.constexpr, USE_DOT: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # Scheduler: the 1x1 conv's grouped program order (weight column tiles stay hot in L2).
    pid_m, pid_n = _tile_coords(tl.program_id(0), M, COUT, BLOCK_M, BLOCK_N, GROUP_M)

    # rows: BLOCK_M pixels; cols: BLOCK_N output channels of the GEMM.
    if INDEX_64:
        rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    else:  # int32 offsets: half the registers of the epilogue's 2-D address tensors
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n = rows // (H * W)
    h = (rows // W) % H
    w = rows % W
    row_ok = rows < M
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < COUT

    # Mainloop: A tile (x or its pooled max) times a [BLOCK_K, BLOCK_N] tile of w^T, fp32.
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, CIN, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < CIN
        a = _load_a(x_ptr, n, h, w, ks, row_ok, k_ok, H, W, sx_n, sx_c, sx_h, sx_w, A_LOAD,
                    BLOCK_M, BLOCK_K)
        b = tl.load(w_ptr + ks[:, None] * sw_i + cols[None, :] * sw_o,
                    mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if USE_DOT:
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        else:  # float64 (gradcheck): no tl.dot fp64 path on every Triton; small tiles
            acc += tl.sum(a.to(ACC)[:, :, None] * b.to(ACC)[None, :, :], axis=1)

    # Epilogue: bias and ReLU in fp32, one rounding; each column to the output that owns it.
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(ACC)[None, :]
    acc = tl.where(acc < 0.0, 0.0, acc)  # keeps NaN, as torch.relu
    # Only the outputs this column tile overlaps store (a runtime branch each: the three
    # stores' 2-D address tensors are then never live together, which spilled registers).
    first_col = pid_n * BLOCK_N
    out = acc.to(o0_ptr.dtype.element_ty)
    if first_col < END0:
        _store_columns(o0_ptr, n, h, w, s0_n, s0_c, s0_h, s0_w, out, cols, row_ok, 0, END0, N_VEC)
    if NUM_OUT > 1:
        if (first_col < END1) & (first_col + BLOCK_N > END0):
            _store_columns(o1_ptr, n, h, w, s1_n, s1_c, s1_h, s1_w, out, cols, row_ok, END0, END1, N_VEC)
    if NUM_OUT > 2:
        if first_col + BLOCK_N > END1:
            _store_columns(o2_ptr, n, h, w, s2_n, s2_c, s2_h, s2_w, out, cols, row_ok, END1, COUT, N_VEC)


def _config(m, cout, cin, dtype, pool, num_out, pixel_vectors=True):
    """(BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages). As the plain 1x1 conv:
    128 pixel rows feed the tensor cores, BLOCK_K=32 keeps 3 stages in shared memory. One
    output: up to 128 columns per tile (a pool projection's 32..128 in one tile, the pool
    computed once). Several outputs: 64 columns, since ptxas (sm_90, bf16, 8 warps, int32
    offsets) spills the three masked stores of a 128x128 tile (~650 B/thread) but not of a
    128x64 one (224 registers). The pooled load stages its 9 neighbour tiles through shared
    memory (cp.async), so it gets 2 stages of BLOCK_K 16: 9 x 128 x 16 per stage, 43 KB in
    bf16 and 90 KB in fp32 where BLOCK_K 32 took 90 KB and 180 KB (and spilled in TF32).
    Without pixel_vectors (NCHW or strided x: scalar loads, each with its own address) 64 pixel
    rows: 128 spilled. float64 (gradcheck only) multiplies through a [M, K, N] product: small
    tiles."""
    if dtype == torch.float64:
        return 32, 32, 8, 8, 4, 1
    block_n = min(max(next_power_of_2(cout), 16), 128 if num_out == 1 else 64)
    block_k = min(max(next_power_of_2(cin), 16), 16 if pool else 32)
    block_m = 128 if m >= 128 and pixel_vectors else 64
    return block_m, block_n, block_k, 8, 8 if block_m * block_n >= 8192 else 4, 2 if pool else 3


def conv1x1_split(x, weight, bias, outs, pool, tf32):
    """outs[i] = relu(conv1x1(A, weight, bias))'s columns, split in order over `outs`
    (1..3 tensors [N, c_i, H, W], any strides, sum c_i = Cout); A = x, or with `pool`
    its 3x3 stride-1 SAME max pool. weight [Cout, Cin(, 1, 1)]; tf32: float32 may round to TF32."""
    w2d = weight if weight.dim() == 2 else weight[:, :, 0, 0]
    N, CIN, H, W = x.shape
    COUT, M = w2d.shape[0], N * H * W
    if M == 0 or COUT == 0:
        return outs
    ends = [o.shape[1] for o in outs]
    ends = [sum(ends[:i + 1]) for i in range(len(ends))] + [COUT] * (MAX_OUTPUTS - len(ends))
    padded = list(outs) + [outs[0]] * (MAX_OUTPUTS - len(outs))  # unused pointers: never stored
    bm, bn, bk, group_m, warps, stages = _config(M, COUT, CIN, x.dtype, pool, len(outs), x.stride(1) == 1)
    grid = (cdiv(M, bm) * cdiv(COUT, bn),)
    with on_device(x):
        _split_gemm_kernel[grid](
            x, w2d, bias if bias is not None else w2d, *padded,
            M, COUT, CIN, H, W, ends[0], ends[1],
            *x.stride(), *w2d.stride(), *(s for o in padded for s in o.stride()),
            A_LOAD=A_MAX3X3 if pool else A_PLAIN, NUM_OUT=len(outs), HAS_BIAS=bias is not None,
            INDEX_64=M >= INT32_LIMIT or needs_int64([x, *outs]), N_VEC=min(vector(o, *ends) for o in outs),
            PRECISION=dot_precision(x.dtype, tf32), ACC=acc_type(x), USE_DOT=x.dtype != torch.float64,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group_m, num_warps=warps, num_stages=stages)
    return outs
