"""Triton kernels for TensorFlow-"SAME" max and average pooling, forward and backward.

The padding is never materialised: a window cell outside the input is masked
out of the load. Max ignores those cells; average divides by the number of real
cells in the window (TF semantics).

Tiling: a program owns a [BLOCK_COLS, BLOCK_C] tile of one image for a band of
BLOCK_ROWS rows (the backward: one [BLOCK_ROWS, BLOCK_COLS, BLOCK_C] tile). The tile's
contiguous axis is the tensor's unit-stride one (channels in NHWC, columns in NCHW), written
as a literal 1 so Triton proves contiguity and emits 16-byte vector accesses (8 bf16 channels
per thread).

Napkin math (forward, k x k stride s, 16-bit, per output element): minimum DRAM
traffic = 2 B written + 2 * s^2 B read (each input element once; s = 1: 2 B).
The forward reads each input row of its band once from L1/L2 (KW shifted
loads), takes the row maximum (or sum) over the window's columns and combines
the KH rows of each output row in registers ("separable max"): (BLOCK_ROWS - 1)
* s + k input rows per BLOCK_ROWS output rows instead of k per output row.
Eager `F.pad(-inf)` + `max_pool2d` first writes and re-reads a padded copy:
about 3x the input bytes.

Backward (a gather, no atomics; per input-gradient element): writes 2 B and
reads, per window containing it (ceil(k/s)^2 of them, from L1/L2), the output
gradient (2 B) and for max the window's argmax (int32, 4 B, written by the
forward kernel run with an index). Minimum DRAM traffic: 2 B + (2 + 4) / s^2 B.
"""
import triton
import triton.language as tl

from fastconv._triton.utils import acc_type, cdiv, next_power_of_2, on_device

# Which axis of a tensor has unit stride. The kernels write that stride as the
# literal 1 (contiguity Triton can prove: vector loads); UNIT_NONE reads through
# every stride (the strided fallback).
UNIT_C: tl.constexpr = tl.constexpr(0)  # NHWC (channels_last)
UNIT_W: tl.constexpr = tl.constexpr(1)  # NCHW
UNIT_NONE: tl.constexpr = tl.constexpr(2)


@triton.jit
def _tile_offsets(col, c, s_col, s_c, UNIT: tl.constexpr):
    """64-bit element offsets of the [cols, channels] tile (col [B, 1] int64, c [1, BC])
    within one row."""
    if UNIT == UNIT_C:
        offs = col * s_col + c
    elif UNIT == UNIT_W:
        offs = col + c.to(tl.int64) * s_c
    else:
        offs = col * s_col + c.to(tl.int64) * s_c
    return offs


@triton.jit
def _real_cells(start, K: tl.constexpr, size):
    """How many of the K window cells from `start` (negative: in the padding) lie in [0, size):
    one axis of a SAME average's divisor. At least 1, so masked lanes never divide by 0."""
    return tl.maximum(tl.minimum(start + K, size) - tl.maximum(start, 0), 1)


@triton.jit
def _pool_fwd_kernel(x_ptr, out_ptr, idx_ptr, C, H, W, OH, OW, n_bands, n_strips,
                     sx_n, sx_c, sx_h, sx_w, so_n, so_c, so_h, so_w, pad_h, pad_w,
                     # window geometry
                     KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                     # modes
                     IS_MAX: tl.constexpr, WRITE_IDX: tl.constexpr, X_UNIT: tl.constexpr,
                     OUT_UNIT: tl.constexpr, ACC: tl.constexpr,
                     # tile
                     BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr, BLOCK_C: tl.constexpr):
    # Scheduler: program (image n, band of BLOCK_ROWS output rows, column strip) x channel
    # strip; neighbouring strips of a band run together and share their edge columns in L2.
    pid = tl.program_id(0)
    strip = pid % n_strips
    n = (pid // (n_strips * n_bands)).to(tl.int64)
    oh0 = (pid // n_strips % n_bands) * BLOCK_ROWS
    ow = strip * BLOCK_COLS + tl.arange(0, BLOCK_COLS)[:, None]
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    c_ok = c < C
    x_img = x_ptr + n * sx_n
    h_top = oh0 * SH - pad_h  # the first input row of the band's first window
    w_left = ow * SW - pad_w  # each output column's first window column

    # The KW window columns of each output column: masks, and offsets as those of the
    # first plus kw * sx_w (a scalar: one tile of 64-bit offsets in registers, not KW).
    x_cols = _tile_offsets(w_left.to(tl.int64), c, sx_w, sx_c, X_UNIT)
    col_ok = ()
    for kw in tl.static_range(KW):
        w = w_left + kw
        col_ok = col_ok + ((w >= 0) & (w < W) & c_ok,)

    # Mainloop: each input row of the band once. Row reduction over the KW window
    # columns (shifted loads, served by L1), kept per row in `vals` (and the
    # winning column in `args`); an output row is finished as soon as its last
    # input row is in, so only about KH row tiles are live at a time.
    vals = ()
    args = ()
    for i in tl.static_range((BLOCK_ROWS - 1) * SH + KH):
        h = h_top + i
        row = x_img + h.to(tl.int64) * sx_h
        row_ok = (h >= 0) & (h < H)
        for kw in tl.static_range(KW):
            # != 0: Triton 3.9's interpreter broadcasts a scalar comparison (row_ok) as int32
            # data, which a mask cannot be; compiled, `i1 != 0` folds away.
            real = (row_ok & col_ok[kw]) != 0
            if IS_MAX:
                v = tl.load(row + kw * sx_w + x_cols, mask=real, other=float("-inf"))
                if kw == 0:
                    best = v
                    if WRITE_IDX:
                        arg = tl.where(real, 0, -1)  # the winning column; -1: no real cell yet
                elif WRITE_IDX:
                    # As PyTorch: the first maximum in scan order wins, a NaN always wins
                    # (so NaN propagates), an all -inf window keeps its first real cell.
                    take = real & ((v > best) | (v != v) | (arg < 0))
                    best = tl.where(take, v, best)
                    arg = tl.where(take, kw, arg)
                else:
                    best = tl.maximum(best, v, propagate_nan=tl.PropagateNan.ALL)
            else:
                v = tl.load(row + kw * sx_w + x_cols, mask=real, other=0.0).to(ACC)
                if kw == 0:
                    best = v
                else:
                    best += v
        vals = vals + (best,)
        if WRITE_IDX:
            args = args + (arg,)

        # Epilogue: output row (i - KH + 1) / SH has all its window rows, i - KH + 1 ... i.
        if i >= KH - 1:
            if (i - KH + 1) % SH == 0:
                acc = vals[i - KH + 1]
                if WRITE_IDX:
                    acc_arg = args[i - KH + 1]  # the window's first row: its column is the index
                for kh in tl.static_range(1, KH):
                    v = vals[i - KH + 1 + kh]
                    if WRITE_IDX:
                        row_arg = args[i - KH + 1 + kh]
                        take = (row_arg >= 0) & ((v > acc) | (v != v) | (acc_arg < 0))
                        acc = tl.where(take, v, acc)
                        acc_arg = tl.where(take, kh * KW + row_arg, acc_arg)
                    elif IS_MAX:
                        acc = tl.maximum(acc, v, propagate_nan=tl.PropagateNan.ALL)
                    else:
                        acc += v
                oh = oh0 + (i - KH + 1) // SH
                if not IS_MAX:
                    acc = acc / (_real_cells(h_top + i - KH + 1, KH, H) * _real_cells(w_left, KW, W)).to(ACC)
                out_ok = ((oh < OH) & (ow < OW) & c_ok) != 0  # != 0: as `real` above
                out_offs = n * so_n + oh.to(tl.int64) * so_h + _tile_offsets(
                    ow.to(tl.int64), c, so_w, so_c, OUT_UNIT)
                tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=out_ok)
                if WRITE_IDX:
                    tl.store(idx_ptr + out_offs, acc_arg, mask=out_ok)  # idx has out's strides


@triton.jit
def _pool_bwd_kernel(g_ptr, idx_ptr, gin_ptr, C, H, W, OH, OW, n_bands, n_strips,
                     sg_n, sg_c, sg_h, sg_w, si_n, si_c, si_h, si_w, so_n, so_c, so_h, so_w,
                     pad_h, pad_w,
                     # window geometry; CAND_*: windows containing a cell, per axis (ceil(k / s))
                     KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                     CAND_H: tl.constexpr, CAND_W: tl.constexpr,
                     # modes
                     IS_MAX: tl.constexpr, G_UNIT: tl.constexpr, I_UNIT: tl.constexpr,
                     OUT_UNIT: tl.constexpr, ACC: tl.constexpr,
                     # tile
                     BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr, BLOCK_C: tl.constexpr):
    # Gather, no atomics: a program owns a [BLOCK_ROWS, BLOCK_COLS, BLOCK_C] tile of the
    # input gradient; each cell sums the gradient of the windows containing it (max: only
    # those whose argmax, read from idx, is this cell). No reuse across rows to exploit
    # here, so the rows are a tile axis (one set of instructions for all of them).
    # Scheduler: as the forward's, (image, band of rows, column strip) x channel strip.
    pid = tl.program_id(0)
    strip = pid % n_strips
    n = (pid // (n_strips * n_bands)).to(tl.int64)
    h = (pid // n_strips % n_bands) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)[:, None, None]
    w = strip * BLOCK_COLS + tl.arange(0, BLOCK_COLS)[None, :, None]
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, None, :]
    c_ok = c < C
    # The CAND_W candidate window columns of each cell: masks, the cell's column inside
    # the window (max) or the window's real columns (average); offsets as those of the
    # last window plus -j * stride (a scalar: one tile of 64-bit offsets per tensor).
    ow_last = (w + pad_w) // SW  # the last window column that starts at or left of w
    g_cols = _tile_offsets(ow_last.to(tl.int64), c, sg_w, sg_c, G_UNIT)
    if IS_MAX:
        i_cols = _tile_offsets(ow_last.to(tl.int64), c, si_w, si_c, I_UNIT)
    col_ok = ()
    col_pos = ()
    for j in tl.static_range(CAND_W):
        ow = ow_last - j
        w0 = ow * SW - pad_w
        col_ok = col_ok + ((ow >= 0) & (ow < OW) & (w - w0 < KW) & c_ok,)
        if IS_MAX:
            col_pos = col_pos + (w - w0,)
        else:
            col_pos = col_pos + (_real_cells(w0, KW, W),)
    oh_last = (h + pad_h) // SH  # the last window row that starts at or above h
    acc = tl.zeros([BLOCK_ROWS, BLOCK_COLS, BLOCK_C], ACC)
    for i in tl.static_range(CAND_H):
        oh = oh_last - i
        h0 = oh * SH - pad_h
        row_ok = (oh >= 0) & (oh < OH) & (h - h0 < KH)
        g_rows = g_ptr + n * sg_n + oh.to(tl.int64) * sg_h
        if IS_MAX:
            i_rows = idx_ptr + n * si_n + oh.to(tl.int64) * si_h
            row_pos = (h - h0) * KW  # the cell's row inside window row oh, as idx counts
        else:
            real_rows = _real_cells(h0, KH, H)
        for j in tl.static_range(CAND_W):
            hit = row_ok & col_ok[j]
            g = tl.load(g_rows - j * sg_w + g_cols, mask=hit, other=0.0).to(ACC)
            if IS_MAX:
                arg = tl.load(i_rows - j * si_w + i_cols, mask=hit, other=-1)
                acc += tl.where(arg == row_pos + col_pos[j], g, 0.0)
            else:
                acc += g / (real_rows * col_pos[j]).to(ACC)  # g = 0 off-window
    out_offs = n * so_n + h.to(tl.int64) * so_h + _tile_offsets(w.to(tl.int64), c, so_w, so_c, OUT_UNIT)
    tl.store(gin_ptr + out_offs, acc.to(gin_ptr.dtype.element_ty), mask=(h < H) & (w < W) & c_ok)


VECTOR = 16  # bytes a thread moves per access
MAX_WARPS = 4
TILE_BYTES = MAX_WARPS * 32 * VECTOR  # a program's tile per row: one vector per thread
MAX_C_BYTES = 128  # channels of an NHWC tile: a whole cache line per pixel
MAX_COLS = 128  # columns of an NCHW tile


def _unit(t):
    """The unit-stride axis of t: channels, columns or none."""
    _, sc, _, sw = t.stride()
    return (UNIT_C if sc == 1 else UNIT_W if sw == 1 else UNIT_NONE).value


def _tiles(C, rows, cols, unit, band, elem_size):
    """(BLOCK_ROWS, BLOCK_COLS, BLOCK_C, num_warps) of a program for `rows` x `cols`
    positions per image, elements of `elem_size` bytes.

    The tile spans the unit-stride axis first, so that each thread moves whole
    16-byte vectors: NHWC takes up to a cache line of channels (a divisor of C where
    one exists, so no strip is half empty) and fills TILE_BYTES with columns; NCHW
    (and strided) takes up to MAX_COLS columns and fills the rest with channels. A
    tile that small images leave smaller gets fewer warps, not shorter vectors.
    `band` rows per program: the forward reads (band - 1) * s + k input rows for
    `band` output rows (the more, the less re-read), the backward amortises its
    index math; the image's rows are split into equal bands so none is mostly empty.
    """
    tile = TILE_BYTES // elem_size
    if unit == UNIT_C.value:
        widest, vec = MAX_C_BYTES // elem_size, VECTOR // elem_size
        divisors = [b for b in (widest, widest // 2, widest // 4, widest // 8) if b >= vec and C % b == 0]
        block_c = divisors[0] if divisors else min(widest, next_power_of_2(C))
        block_cols = min(next_power_of_2(cols), max(1, tile // block_c))
    else:
        block_cols = min(next_power_of_2(cols), MAX_COLS)
        block_c = min(next_power_of_2(C), max(1, tile // block_cols))
    block_rows = cdiv(rows, cdiv(rows, band))
    num_warps = min(MAX_WARPS, max(1, block_cols * block_c * elem_size // (32 * VECTOR)))
    return block_rows, block_cols, block_c, num_warps


def _band(stride):
    """Output rows per forward program. Stride 1: 8 output rows read 10 input rows (k = 3),
    1.25 reads per row; stride 2: 4 output rows read 9, 2.25 (the floor is 2). Bigger bands
    add unrolled code, not speed."""
    return 8 if stride == 1 else 4


# The argmax pass (the max pool's backward) keeps a winner index beside each value: strided, it
# takes 2-row bands, 2.5 reads per row (4 rows spilled 4 B in Triton 3.6's ptxas at some
# shapes; fastconv.static).
ARGMAX_BAND = 2


BACKWARD_BAND = 4  # input-gradient rows of a backward tile (a power of 2): shares the column math


def _backward_tiles(C, H, W, unit, elem_size):
    """(BLOCK_ROWS, BLOCK_COLS, BLOCK_C, num_warps) of the backward's 3-D tile: the forward's
    row tile (_tiles) split over up to BACKWARD_BAND rows, taking the rows from the axis
    that is not contiguous (columns in NHWC, channels in NCHW), so vectors stay whole."""
    rows = min(next_power_of_2(H), BACKWARD_BAND)
    _, cols, block_c, num_warps = _tiles(C, 1, W, unit, 1, elem_size)
    tile = TILE_BYTES // elem_size
    if unit == UNIT_C.value:
        cols = min(cols, max(1, tile // (block_c * rows)))
    else:
        block_c = min(block_c, max(1, tile // (cols * rows)))
    return rows, cols, block_c, num_warps


def pool_forward(x, out, idx, geometry, is_max):
    """Pool x into the dense `out`; with idx (int32, out's shape and strides), also the argmax."""
    if out.numel() == 0:
        return out
    if idx is not None and idx.stride() != out.stride():
        raise ValueError(f"idx must have out's strides {out.stride()}, got {idx.stride()}")
    (kh, kw), (sh, sw), (ph, pw) = geometry
    N, C, H, W = x.shape
    OH, OW = out.shape[2:]
    unit = _unit(x)
    band = ARGMAX_BAND if idx is not None and sh > 1 else _band(sh)
    block_rows, block_cols, block_c, num_warps = _tiles(C, OH, OW, unit, band, x.element_size())
    n_bands, n_strips = cdiv(OH, block_rows), cdiv(OW, block_cols)
    grid = (N * n_bands * n_strips, cdiv(C, block_c))  # axis 1 is limited to 65535
    with on_device(x):
        _pool_fwd_kernel[grid](x, out, idx if idx is not None else out, C, H, W, OH, OW, n_bands, n_strips,
                               *x.stride(), *out.stride(), ph, pw,
                               KH=kh, KW=kw, SH=sh, SW=sw, IS_MAX=is_max, WRITE_IDX=idx is not None,
                               X_UNIT=unit, OUT_UNIT=_unit(out), ACC=acc_type(x),
                               BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols, BLOCK_C=block_c, num_warps=num_warps)
    return out


def pool_backward(grad_out, grad_in, idx, geometry, is_max):
    """grad_in (dense, x's shape) from grad_out (any strides) and, for max, the argmax idx."""
    if grad_in.numel() == 0:
        return grad_in
    (kh, kw), (sh, sw), (ph, pw) = geometry
    N, C, H, W = grad_in.shape
    OH, OW = grad_out.shape[2:]
    unit = _unit(grad_in)
    block_rows, block_cols, block_c, num_warps = _backward_tiles(C, H, W, unit, grad_in.element_size())
    n_bands, n_strips = cdiv(H, block_rows), cdiv(W, block_cols)
    grid = (N * n_bands * n_strips, cdiv(C, block_c))
    idx = idx if idx is not None else grad_out  # not read by the average kernel
    with on_device(grad_in):
        _pool_bwd_kernel[grid](grad_out, idx, grad_in, C, H, W, OH, OW, n_bands, n_strips,
                               *grad_out.stride(), *idx.stride(), *grad_in.stride(), ph, pw,
                               KH=kh, KW=kw, SH=sh, SW=sw, CAND_H=cdiv(kh, sh), CAND_W=cdiv(kw, sw),
                               IS_MAX=is_max, G_UNIT=_unit(grad_out), I_UNIT=_unit(idx), OUT_UNIT=unit,
                               ACC=acc_type(grad_in), BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols,
                               BLOCK_C=block_c, num_warps=num_warps)
    return grad_in
