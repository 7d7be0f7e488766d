"""The tensor-core GEMM's data movement, emulated lane by lane against A @ B.T (CPU, no GPU).

The GEMM (csrc/gemm_*.cuh) has never run where it is built. This file replays, in numpy, what
each thread of one block does, with the index math copied from the C++ (the functions below
carry the C++ names): the cp.async producers of the operand tiles (swizzled shared memory, K
tails zero-filled, rows past the operand's end read from its first row, NCHW's 8-byte copies),
the TF32 rounding of each thread's own chunks, the ldmatrix / ldmatrix.trans lane roles, the
mma.sync fragment layouts of m16n8k16 and m16n8k8 (PTX ISA, "Matrix fragments for mma.m16n8k16
/ m16n8k8"), the last K block's skipped K steps and the epilogue's swizzled staging. A wrong
swizzle, lane role, fragment order or skipped K step gives a wrong product here. Values are
small integers, so every product is exact in fp16/fp32.
"""
import numpy as np
import pytest

# (bm, bn, warps_m, warps_n, stages, x_copy_bytes) as csrc/gemm_tile_size.h
TILES = {"kTileLarge": (128, 128, 2, 4, 3, 16), "kTileNarrow": (128, 64, 2, 2, 4, 16),
         "kTileSmallM": (64, 128, 2, 2, 3, 16), "kTileNchw": (128, 128, 2, 4, 3, 16),
         "kTileNchw8": (128, 128, 2, 4, 3, 8)}
LANES = np.arange(32)


class Config:
    """GemmConfig<T, S> (csrc/gemm_config.h)."""

    def __init__(self, elem, tile):
        self.elem = elem  # bytes per element: 2 (fp16) or 4 (TF32)
        self.BM, self.BN, self.WARPS_M, self.WARPS_N, self.STAGES, self.X_COPY = TILES[tile]
        self.THREADS = 32 * self.WARPS_M * self.WARPS_N
        self.VEC, self.BK = 16 // elem, 128 // elem
        self.WM, self.WN = self.BM // self.WARPS_M, self.BN // self.WARPS_N
        self.MT, self.NT, self.KSTEPS, self.KSTEP = self.WM // 16, self.WN // 8, 4, 2 * (16 // elem)


def swizzle(row, chunk, row_bytes):
    return row * row_bytes + ((chunk ^ (row & 7)) << 4)


def cp_async(smem, dst, src_bytes_view, size):
    """cp.async of `size` bytes: the source bytes given, zeros for the rest."""
    smem[dst:dst + size] = 0
    smem[dst:dst + len(src_bytes_view)] = np.frombuffer(src_bytes_view, np.uint8)


class KMajorTile:
    """Rows of K-contiguous values (x's pixels in NHWC, weight rows): rows[r] is row r's bytes
    (Cin * elem of them), None past the operand's end."""

    def __init__(self, cfg, rows_total, rows):
        self.cfg, self.ROWS, self.rows = cfg, rows_total, rows
        self.ITERS, self.RPI = rows_total * 8 // cfg.THREADS, cfg.THREADS // 8
        self.STAGE_BYTES = rows_total * 128

    def thread_chunks(self, tid):
        """(smem offset, tile row, chunk) of each copy of thread tid: dst_ + i * RPI * 128."""
        chunk, row0 = tid % 8, tid // 8
        dst = swizzle(row0, chunk, 128)
        return [(dst + i * self.RPI * 128, row0 + i * self.RPI, chunk) for i in range(self.ITERS)]

    def load(self, smem, stage, kb, row_bytes):
        for tid in range(self.cfg.THREADS):
            for dst, r, chunk in self.thread_chunks(tid):
                k = kb * 128 + chunk * 16
                nbytes = min(max(row_bytes - k, 0), 16)
                koff = k if nbytes > 0 else 0
                row = self.rows[r] if self.rows[r] is not None else self.rows[0]  # clamped to row 0
                cp_async(smem, stage + dst, row[koff:koff + nbytes], 16)

    def round_tf32(self, smem, stage, seen):
        for tid in range(self.cfg.THREADS):
            for dst, _, _ in self.thread_chunks(tid):
                round_tf32_chunk(smem, stage + dst)
                seen.append(stage + dst)

    @staticmethod
    def a_fragment(smem, stage, row0, ks):
        lane = LANES
        return ldmatrix_x4(smem, stage + swizzle(row0 + (lane & 7) + ((lane >> 3) & 1) * 8, 2 * ks + (lane >> 4), 128))

    @staticmethod
    def b_fragments(smem, stage, col0, ks):
        lane = LANES
        r = ldmatrix_x4(smem, stage + swizzle(col0 + (lane & 7) + (lane >> 4) * 8, 2 * ks + ((lane >> 3) & 1), 128))
        return r[:, 0:2], r[:, 2:4]


class PixelMajorTile:
    """NCHW's x[n] as [K rows][pixels] (16-bit): image[k] is channel k's plane in bytes."""

    def __init__(self, cfg, image, pixels, p0):
        self.cfg, self.image, self.pixels, self.p0 = cfg, image, pixels, p0
        self.COPY, self.ROW_BYTES = cfg.X_COPY, cfg.BN * 2
        self.PIECES = self.ROW_BYTES // self.COPY
        self.RPI = cfg.THREADS // self.PIECES
        self.ITERS = cfg.BK // self.RPI
        self.STAGE_BYTES = cfg.BK * self.ROW_BYTES

    def load(self, smem, stage, kb, cin):
        for tid in range(self.cfg.THREADS):
            piece, row0 = tid % self.PIECES, tid // self.PIECES
            pix = self.p0 + piece * (self.COPY // 2)
            left = (self.pixels - pix) * 2
            nbytes = self.COPY if left >= self.COPY else max(left, 0)
            first = pix if nbytes > 0 else 0
            dst = swizzle(row0, piece * self.COPY // 16, self.ROW_BYTES) + piece * self.COPY % 16
            k0 = kb * self.cfg.BK + row0
            for i in range(self.ITERS):
                in_k = k0 + i * self.RPI < cin
                plane = self.image[k0 + i * self.RPI] if in_k else self.image[0]
                src = plane[2 * first:2 * first + (nbytes if in_k else 0)]
                cp_async(smem, stage + dst + i * self.RPI * self.ROW_BYTES, src, self.COPY)

    def b_fragments(self, smem, stage, col0, ks):
        lane = LANES
        r = ldmatrix_x4_trans(smem, stage + swizzle(16 * ks + (lane & 7) + ((lane >> 3) & 1) * 8,
                                                    col0 // 8 + (lane >> 4), self.ROW_BYTES))
        return r[:, 0:2], r[:, 2:4]


def _rows16(smem, addrs):
    assert np.all(addrs % 16 == 0), "ldmatrix rows are 16-byte aligned"
    return np.stack([smem[a:a + 16] for a in addrs])  # [32 lanes' rows][16 bytes]


def ldmatrix_x4(smem, addrs):
    """Register i of lane l: 32-bit word l % 4 of row l // 4 of tile i (rows from lanes 8i..8i+7)."""
    words = _rows16(smem, addrs).view(np.uint32).reshape(4, 8, 4)
    return words[:, LANES // 4, LANES % 4].T  # [lane][register]


def ldmatrix_x4_trans(smem, addrs):
    """Register i of lane l: elements (row 2 (l % 4), column l // 4) and (row 2 (l % 4) + 1, ...) of tile i."""
    h = _rows16(smem, addrs).view(np.uint16).reshape(4, 8, 8).astype(np.uint32)
    lo, hi = h[:, 2 * (LANES % 4), LANES // 4], h[:, 2 * (LANES % 4) + 1, LANES // 4]
    return (lo | hi << 16).T


def round_tf32_chunk(smem, addr):
    v = smem[addr:addr + 16].view(np.uint32)
    finite = np.abs(v.view(np.float32)) < np.inf
    v[finite] += 0x1000


def words_to_values(w, elem):
    """32-bit fragment words -> [..., values per word] (2 fp16 or 1 TF32, low half first); the
    mma ignores a TF32 value's 13 low bits."""
    if elem == 2:
        return np.ascontiguousarray(w, np.uint32).view(np.float16).reshape(*w.shape, 2).astype(np.float64)
    return (np.ascontiguousarray(w, np.uint32) & 0xFFFFE000).view(np.float32).reshape(*w.shape, 1).astype(np.float64)


def mma(acc, a, b, elem):
    """acc[32][4] += A (16 x K step) @ B (K step x 8), from fragments a[32][4], b[32][2] laid out
    as PTX's m16n8k16 (fp16) / m16n8k8 (TF32) in 32-bit words: a0 (row g, word t), a1 (g + 8, t),
    a2 (g, t + 4), a3 (g + 8, t + 4); b0 (word t, column g), b1 (t + 4, g); c0, c1 (g, 2t, 2t + 1),
    c2, c3 (g + 8, 2t, 2t + 1); g = lane / 4, t = lane % 4."""
    g, t = LANES // 4, LANES % 4
    A = np.zeros((16, 8), np.uint32)
    B = np.zeros((8, 8), np.uint32)
    A[g, t], A[g + 8, t], A[g, t + 4], A[g + 8, t + 4] = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
    B[t, g], B[t + 4, g] = b[:, 0], b[:, 1]
    Av = words_to_values(A, elem).reshape(16, -1)
    Bv = words_to_values(B.T, elem).reshape(8, -1)  # [column][K]
    C = Av @ Bv.T
    acc[:, 0] += C[g, 2 * t]
    acc[:, 1] += C[g, 2 * t + 1]
    acc[:, 2] += C[g + 8, 2 * t]
    acc[:, 3] += C[g + 8, 2 * t + 1]


def mainloop(cfg, a_tile, b_tile, cin, tf32):
    """Mainloop::run, one K block after another (the stage rotation only moves base addresses);
    returns acc[warp][mt][nt][lane][4] and the K steps each K block ran."""
    smem = np.zeros(cfg.STAGES * (a_tile.STAGE_BYTES + b_tile.STAGE_BYTES) + 16, np.uint8)
    a0, b0 = 0, cfg.STAGES * a_tile.STAGE_BYTES
    warps = cfg.WARPS_M * cfg.WARPS_N
    acc = np.zeros((warps, cfg.MT, cfg.NT, 32, 4))
    kblocks = -(-cin // cfg.BK)
    steps, rounded = [], []
    for kb in range(kblocks):
        st = kb % cfg.STAGES
        a_tile.load(smem, a0 + st * a_tile.STAGE_BYTES, kb, *(
            (cin * cfg.elem,) if isinstance(a_tile, KMajorTile) else (cin,)))
        b_tile.load(smem, b0 + st * b_tile.STAGE_BYTES, kb, *(
            (cin * cfg.elem,) if isinstance(b_tile, KMajorTile) else (cin,)))
        if tf32:
            a_tile.round_tf32(smem, a0 + st * a_tile.STAGE_BYTES, rounded)
            b_tile.round_tf32(smem, b0 + st * b_tile.STAGE_BYTES, rounded)
        last_k = cin - kb * cfg.BK
        ksteps = cfg.KSTEPS if kb < kblocks - 1 else (last_k + cfg.KSTEP - 1) // cfg.KSTEP
        steps.append(ksteps)
        for warp in range(warps):
            wm, wn = warp % cfg.WARPS_M, warp // cfg.WARPS_M
            for ks in range(ksteps):
                a = [a_tile.a_fragment(smem, a0 + st * a_tile.STAGE_BYTES, wm * cfg.WM + mt * 16, ks)
                     for mt in range(cfg.MT)]
                b = [None] * cfg.NT
                for nt in range(0, cfg.NT, 2):
                    b[nt], b[nt + 1] = b_tile.b_fragments(smem, b0 + st * b_tile.STAGE_BYTES,
                                                          wn * cfg.WN + nt * 8, ks)
                for mt in range(cfg.MT):
                    for nt in range(cfg.NT):
                        mma(acc[warp, mt, nt], a[mt], b[nt], cfg.elem)
    return acc, steps, rounded


def c_offset(cfg, r, c):
    """Epilogue::c_offset: 16-bit outputs swap the two float4 of column groups with bit 5 set."""
    ldc = cfg.BN + 8
    return r * ldc + (c ^ (((c >> 5) & 1) << 2) if cfg.VEC == 8 else c)


def epilogue(cfg, acc, rows_valid, cols_valid):
    """Epilogue::run's staging and reads: out[r][c] for the tile's valid rows and columns (NaN
    where no thread wrote), and the float2 writes' bank conflicts (max per half-warp phase)."""
    s = np.full(cfg.BM * (cfg.BN + 8), np.nan)
    g, t = LANES // 4, LANES % 4
    worst = 1
    for warp in range(acc.shape[0]):
        wm, wn = warp % cfg.WARPS_M, warp // cfg.WARPS_M
        for mt in range(cfg.MT):
            for nt in range(cfg.NT):
                r, c = wm * cfg.WM + mt * 16 + g, wn * cfg.WN + nt * 8 + 2 * t
                for half, rr in ((0, r), (2, r + 8)):
                    off = c_offset(cfg, rr, c)
                    s[off], s[off + 1] = acc[warp, mt, nt, :, half], acc[warp, mt, nt, :, half + 1]
                    for phase in (slice(0, 16), slice(16, 32)):  # 64-bit accesses: half warps
                        banks = np.concatenate([off[phase] % 32, (off[phase] + 1) % 32])
                        worst = max(worst, np.bincount(banks).max())
    out = np.full((cfg.BM, cfg.BN), np.nan)
    per_row = cfg.BN // cfg.VEC
    read_conflicts = 1
    for tid in range(cfg.THREADS):
        col, r0 = (tid % per_row) * cfg.VEC, tid // per_row
        if col >= cols_valid:
            continue
        for r in range(r0, cfg.BM, cfg.THREADS // per_row):
            if r >= rows_valid:
                break
            for v in range(0, cfg.VEC, 4):
                off = c_offset(cfg, r, col + v)
                out[r, col + v:col + v + 4] = s[off:off + 4]
    # 128-bit reads: quarter-warp phases of 8 threads, each reading float4 q of its columns
    for q in range(cfg.VEC // 4):
        for first in range(0, cfg.THREADS, 8):
            tids = np.arange(first, first + 8)
            offs = np.array([c_offset(cfg, tid // per_row, (tid % per_row) * cfg.VEC + 4 * q) for tid in tids])
            read_conflicts = max(read_conflicts, np.bincount((offs // 4) % 8).max())
    return out[:rows_valid, :cols_valid], worst, read_conflicts


def _values(shape, rng):
    return rng.integers(-3, 4, size=shape)


@pytest.mark.parametrize("tile", ["kTileLarge", "kTileNarrow", "kTileSmallM"])
@pytest.mark.parametrize("elem, cin", [(2, 72), (2, 20), (4, 40), (4, 18)])
def test_nhwc_block_is_a_times_b(tile, elem, cin):
    """One NHWC block with rows past M (read from row 0), columns past Cout, a K tail inside a
    chunk (Cin 20 fp16, 18 fp32) and a short last K block (Cin 72: 1 K step of 4; 40 fp32: 2)."""
    cfg, rng = Config(elem, tile), np.random.default_rng(0)
    m, cout = cfg.BM - 5, cfg.BN - 8
    dtype = np.float16 if elem == 2 else np.float32
    x, w = _values((m, cin), rng).astype(dtype), _values((cout, cin), rng).astype(dtype)
    a_tile = KMajorTile(cfg, cfg.BM, [x[r].tobytes() if r < m else None for r in range(cfg.BM)])
    b_tile = KMajorTile(cfg, cfg.BN, [w[j].tobytes() if j < cout else None for j in range(cfg.BN)])
    acc, steps, rounded = mainloop(cfg, a_tile, b_tile, cin, tf32=elem == 4)
    out, write_conflicts, read_conflicts = epilogue(cfg, acc, m, cout)
    np.testing.assert_array_equal(out, x.astype(np.float64) @ w.astype(np.float64).T)
    assert steps[-1] == -(-(cin - (len(steps) - 1) * cfg.BK) // cfg.KSTEP) < cfg.KSTEPS  # zeros skipped
    assert write_conflicts == 1 and read_conflicts == 1
    if elem == 4:  # every chunk of every stage rounded once per K block, by the thread that copied it
        per_block = (cfg.BM + cfg.BN) * 8
        assert len(rounded) == per_block * len(steps) and len(set(rounded[:per_block])) == per_block


@pytest.mark.parametrize("tile, pixels, cin", [("kTileNchw", 56, 72), ("kTileNchw", 60, 20),
                                               ("kTileNchw8", 196, 72), ("kTileNchw8", 38, 9)])
def test_nchw_block_is_w_times_x(tile, pixels, cin):
    """One NCHW block: weight rows past Cout, a pixel tail (a partial last copy where H x W is
    not a multiple of the copy), K rows past Cin zero-filled, 16- and 8-byte copies of x."""
    cfg, rng = Config(2, tile), np.random.default_rng(1)
    cout = cfg.BM - 8
    w = _values((cout, cin), rng).astype(np.float16)
    x = _values((cin, pixels), rng).astype(np.float16)
    a_tile = KMajorTile(cfg, cfg.BM, [w[r].tobytes() if r < cout else None for r in range(cfg.BM)])
    b_tile = PixelMajorTile(cfg, [x[k].tobytes() for k in range(cin)], pixels, p0=0)
    acc, steps, _ = mainloop(cfg, a_tile, b_tile, cin, tf32=False)
    out, write_conflicts, read_conflicts = epilogue(cfg, acc, cout, min(pixels, cfg.BN))
    np.testing.assert_array_equal(out, (w.astype(np.float64) @ x.astype(np.float64))[:, :cfg.BN])
    assert write_conflicts == 1 and read_conflicts == 1


def test_tf32_rounding_is_cvt_rna():
    """round_tf32_chunk then the mma's truncation equals round-to-nearest, ties away (cvt.rna),
    on ties, carries into the exponent, the largest finite values, infinities and NaN."""
    bits = np.array([0x3F800FFF, 0x3F801000, 0xBF801000, 0x3F802FFF, 0x007FF000, 0x7F7FF000,
                     0x7F7FEFFF, 0xFF7FF000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7FFFFFFF,
                     0x00000001, 0x80001000], np.uint32)
    smem = np.zeros(bits.size * 4 + 16, np.uint8)
    smem[:bits.size * 4] = bits.view(np.uint8)
    for addr in range(0, bits.size * 4, 16):
        round_tf32_chunk(smem, addr)
    got = smem[:bits.size * 4].view(np.uint32) & 0xFFFFE000
    x = bits.view(np.float32).astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        ulp = np.ldexp(1.0, np.frexp(np.abs(x))[1] - 11)  # the TF32 ulp of each value (10 bits kept)
        ulp = np.maximum(ulp, np.ldexp(1.0, -136))        # subnormals: a fixed ulp
        want = np.sign(x) * np.floor(np.abs(x) / ulp + 0.5) * ulp  # ties away from zero
    finite = np.isfinite(x)
    with np.errstate(over="ignore"):
        want32 = want[finite].astype(np.float32)
    np.testing.assert_array_equal(got[finite].view(np.float32), want32)
    assert np.isinf(got[bits == 0x7F800000].view(np.float32)).all()
    assert np.isnan(got[(bits == 0x7FC00000) | (bits == 0x7FFFFFFF)].view(np.float32)).all()
