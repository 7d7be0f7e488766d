"""Triton kernels for the fused 1x1 convolution + bias (+ residual) + ReLU, and its bias/ReLU backward.

A 1x1 conv with stride s is a GEMM over the subsampled pixels:
    out[m, j] = relu(sum_k x[m, k] * w[j, k] + bias[j] [+ r[m, j]])
with m = (n, oh, ow) reading x[n, :, oh*s, ow*s]. Rows are pixels, so one
kernel serves NCHW and NHWC: a row's pixel offset is computed once per tile and
the channel dimension is walked through x's channel stride.

Roles (as flash-attention's hopper kernels name them):
  scheduler  `_tile_coords`: grouped tile order; split-K adds a grid axis over K.
  mainloop   `_conv1x1_kernel`: [BLOCK_M, BLOCK_K] x [BLOCK_K, BLOCK_N] steps, loaded through
             TMA tensor descriptors (cached, `_descriptor`) when x is a dense NHWC [M, K]
             matrix (stride 1, 16-byte aligned rows) on a Hopper GPU, else through masked
             pointers. IEEE float32 (an FMA dot) never uses TMA: it spilled there.
  epilogue   `_epilogue`: bias, residual, ReLU on the fp32 accumulator, one rounding, one
             store along channels (16-byte vectors for NHWC when Cout is a multiple of 8:
             N_VEC). With 128 accumulators per thread it runs one column half at a time (the
             whole tile spilled). With split-K the partial sums go to an fp32
             workspace and `_splitk_epilogue_kernel` adds them in a fixed order
             (deterministic) before the same epilogue.
Offsets are int32 unless a tensor spans 2**31 elements (INDEX_64): int64 offsets for every
output element spilled the big epilogues. Launches run on the tensors' device. Tile
configurations come from one function (`gemm_configs`; `ieee_configs` for IEEE float32),
pruned by shared memory and shape (`early_config_prune`); which one runs is
`choose_config`'s business (table, this process's tuning, or the rule `heuristic_config`).
What the compiler makes of each config for sm_90: `python -m fastconv.static`.

Napkin math (bf16, batch 128, 224x224 nets; B = bytes of x + w + out [+ r], H100 ridge ~266
FLOP/B, H200 ~190; "tiles" at 128x128 vs 132 SMs):
  Cin=256 56x56 -> 64      M=401k  FLOP/B  51  memory-bound   3136 tiles
  Cin=64 56x56 -> 256 +r   M=401k  FLOP/B  28  memory-bound   6272 tiles
  Cin=192 28x28 -> 64      M=100k  FLOP/B  48  memory-bound    784 tiles
  Cin=512 28x28 -> 128     M=100k  FLOP/B 102  memory-bound    784 tiles
  Cin=1024 14x14 -> 256    M=25k   FLOP/B 204  at the ridge    392 tiles
  Cin=2048 7x7 -> 512      M=6.3k  FLOP/B 384  compute-bound   196 tiles (1.5 waves)
  Cin=832 7x7 -> 384       M=6.3k  FLOP/B 252  compute-bound   147 tiles (1.1 waves; 64x64
                                                                tiles: 588, 4.5 waves)
  Cin=832 7x7 -> 128       M=6.3k  FLOP/B 109  memory-bound     49 tiles: 37% of the SMs; split-K 4
                                                                -> 196 tiles, but +M*N*8 B of fp32
                                                                partials per slice (2x the bytes):
                                                                the tuner decides
Memory-bound classes want big BLOCK_N (read x once: Cout <= 256 in one column tile) and deep
pipelines; compute-bound ones want 128x256 / 256x128 tiles with BLOCK_K 64 and 8 warps; the
small-pixel ones want more tiles (split-K) than 132 SMs.
"""
import contextlib
import functools
import json
import os
import threading
from dataclasses import asdict, dataclass

import torch
import triton
import triton.language as tl

from fastconv import _tuning
from fastconv._launcher_contract import triton_interpreting
from fastconv._triton.utils import (
    acc_type,
    capability,
    cdiv,
    dot_precision,
    needs_int64,
    next_power_of_2,
    on_device,
    vector,
)

try:  # host-side TMA descriptors: triton >= 3.4 (3.6 on the GPU machine, 3.8 here)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton: pointer loads only
    TensorDescriptor = None

# How the mainloop loads its tiles (named constexpr modes).
LOAD_POINTERS = tl.constexpr(0)
LOAD_TMA = tl.constexpr(1)


@dataclass(frozen=True)
class GemmConfig:
    """One tile configuration of the 1x1-conv GEMM (what a tuning table stores)."""
    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3

    def as_dict(self):
        return asdict(self)


def gemm_configs():
    """The candidates, as in Triton's matmul tutorial: (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages).
    Big tiles for the compute-bound deep layers, wide-N for the memory-bound ones (x read once),
    deep K steps with 3-5 stages to keep the tensor cores fed; split-K 2 and 4 for small-pixel
    layers whose tile count is under the SM count."""
    tiles = [(128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 128, 8, 3),
             (256, 64, 64, 8, 4), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (128, 128, 32, 4, 5),
             (64, 256, 32, 4, 4), (64, 64, 128, 4, 3), (64, 64, 64, 4, 5), (128, 32, 128, 4, 3),
             (256, 32, 64, 4, 4)]
    configs = [GemmConfig(m, n, k, 8, 1, w, s) for m, n, k, w, s in tiles]
    configs += [GemmConfig(128, 128, 64, 8, sk, 8, 4) for sk in (2, 4)]
    configs += [GemmConfig(64, 128, 64, 8, sk, 4, 4) for sk in (2, 4)]
    return configs


# Shared memory per block on sm_90 (H100/H200): 227 KiB; used where the device cannot be asked.
SMEM_BYTES_SM90 = 232448


def pipeline_smem(c, elem_bytes):
    """Shared memory of a config's pipeline: num_stages x (A tile + B tile + an 8-byte TMA
    barrier). The compiled kernels use at most this (the static gate checks every config)."""
    return c.num_stages * ((c.block_m + c.block_n) * c.block_k * elem_bytes + 8)


def ieee_configs():
    """The candidates for IEEE float32 (TF32 off): tl.dot is then FMAs on CUDA cores, with the
    operands in registers beside the accumulators. ptxas (sm_90) spills at 64 accumulators
    per thread with BLOCK_K 32 (128x128, 8 warps) but not with BLOCK_K 16 or 32 accumulators."""
    return [GemmConfig(128, 128, 16, 8, 1, 8, 3), GemmConfig(128, 64, 32, 8, 1, 4, 3),
            GemmConfig(64, 64, 32, 8, 1, 4, 3)]


def tuning_candidates(dtype, tf32, smem_bytes=SMEM_BYTES_SM90):
    """The configs the tuner may try for `dtype` (TF32 or not) on a device with `smem_bytes` of
    shared memory per block: the shape-independent part of early_config_prune."""
    configs = ieee_configs() if dtype == torch.float32 and not tf32 else gemm_configs()
    return [c for c in configs if pipeline_smem(c, dtype.itemsize) <= smem_bytes]


def early_config_prune(configs, m, n, k, elem_bytes, smem_bytes=SMEM_BYTES_SM90, sms=132, limit=6):
    """The short list to try for one shape class (Triton's `early_config_prune` role):
    drop configs whose pipeline (stages x (A tile + B tile)) overflows shared memory, whose
    tiles are much larger than the matrix (a 256-row tile on a 49-row problem), and split-K
    where the plain tiles already fill the SMs or a split would have under two K steps; keep
    at most `limit`: the ones whose tile count best fills whole waves first, and the biggest tile."""
    def fits(c):
        if pipeline_smem(c, elem_bytes) > smem_bytes:
            return False
        if c.block_n > max(32, next_power_of_2(n)) or c.block_k > max(32, next_power_of_2(k)):
            return False
        if c.block_m > max(64, next_power_of_2(m)):
            return False
        if c.split_k > 1:
            tiles = cdiv(m, c.block_m) * cdiv(n, c.block_n)
            return tiles < sms and k // c.split_k >= 2 * c.block_k
        return True

    def waste(c):  # idle SM-slots over all waves in 10% steps; then bigger tiles (fewer re-reads)
        tiles = cdiv(m, c.block_m) * cdiv(n, c.block_n) * c.split_k
        waves = cdiv(tiles, sms)
        return round(10 * (waves * sms - tiles) / (waves * sms)), -c.block_m * c.block_n, c.split_k

    ranked = sorted(filter(fits, configs), key=waste)
    short = ranked[:limit]
    biggest = min(ranked, key=lambda c: (-c.block_m * c.block_n, c.split_k), default=None)
    if biggest is not None and biggest not in short:  # compute-bound classes want it even if
        short[-1] = biggest                             # it leaves SMs idle in the last wave
    return short


@functools.lru_cache(maxsize=4096)  # asked on every call that uses the rule: a few us saved
def heuristic_config(m, n, k, dtype, tf32=True, pixel_vectors=True):
    """The rule when nothing was measured (and the pinned config of the interpreter and CI):
    128 pixel rows per tile keep the tensor cores fed, the output-channel tile covers Couts up
    to 128 in one pass (x read once), BLOCK_K 32 keeps 3 stages in shared memory for every
    dtype (16 for IEEE float32, whose FMA dot holds its operands in registers: see
    ieee_configs). Without pixel_vectors (NCHW or strided: every access a scalar with its own
    address) 64x64 tiles: larger ones spilled. tl.dot needs dimensions >= 16; float64
    multiplies without tl.dot: small tiles."""
    if dtype == torch.float64:
        return GemmConfig(32, 32, 8, 8, 1, 4, 1)
    block_n = min(max(next_power_of_2(n), 16), 128 if pixel_vectors else 64)
    block_k = min(max(next_power_of_2(k), 16), 16 if dtype == torch.float32 and not tf32 else 32)
    block_m = 128 if m >= 128 and pixel_vectors else 64
    return GemmConfig(block_m, block_n, block_k, 8, 1, 8 if block_n >= 128 else 4, 3)


@triton.jit
def _tile_coords(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped program order (Triton's matmul tutorial): GROUP_M row tiles share each
    weight column tile while it is hot in L2."""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * num_n)
    first_m = group * GROUP_M
    group_size = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % group_size
    pid_n = (pid % (GROUP_M * num_n)) // group_size
    return pid_m, pid_n


@triton.jit
def _whole(v, VEC: tl.constexpr):
    """v, which the launcher checked is a multiple of VEC, written so that the compiler can
    prove it (Triton proves divisibility by 16 only; 16-byte accesses need VEC = 16 B)."""
    return v // VEC * VEC


@triton.jit
def _epilogue(acc, rows, cols, M, COUT, OH, OW, b_ptr, r_ptr, out_ptr,
              so_n, so_c, so_h, so_w, sr_n, sr_c, sr_h, sr_w,
              HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, RELU: tl.constexpr, ACC: tl.constexpr,
              N_VEC: tl.constexpr):
    """Bias, residual and ReLU on the fp32 accumulator [rows, cols]; one rounding, one store.
    N_VEC > 1: COUT and the pixel rows of out (and r) are whole 16-byte vectors."""
    n = rows // (OH * OW)
    oh = (rows // OW) % OH
    ow = rows % OW
    mask = (rows < M)[:, None] & (cols < _whole(COUT, N_VEC))[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=cols < COUT, other=0.0).to(ACC)[None, :]
    if HAS_RES:
        r_rows = n * _whole(sr_n, N_VEC) + oh * _whole(sr_h, N_VEC) + ow * _whole(sr_w, N_VEC)
        acc += tl.load(r_ptr + r_rows[:, None] + cols[None, :] * sr_c, mask=mask, other=0.0).to(ACC)
    if RELU:
        acc = tl.where(acc < 0.0, 0.0, acc)  # keeps NaN, as torch.relu
    o_rows = n * _whole(so_n, N_VEC) + oh * _whole(so_h, N_VEC) + ow * _whole(so_w, N_VEC)
    tl.store(out_ptr + o_rows[:, None] + cols[None, :] * so_c, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _conv1x1_kernel(x_ptr, x_desc, w_ptr, w_desc, b_ptr, r_ptr, out_ptr, part_ptr,
                    # dimensions; K_PER_SPLIT: channels per split-K slice (a multiple of BLOCK_K)
                    M, COUT, CIN, OH, OW, STRIDE, K_PER_SPLIT,
                    sx_n, sx_c, sx_h, sx_w, sw_o, sw_i, so_n, so_c, so_h, so_w,
                    sr_n, sr_c, sr_h, sr_w,
                    # epilogue and precision
                    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, RELU: tl.constexpr,
                    PRECISION: tl.constexpr, ACC: tl.constexpr, USE_DOT: tl.constexpr, LOAD: tl.constexpr,
                    # addressing: 64-bit offsets; K_VEC / N_VEC: the K (input channel) and N (output
                    # channel) axes in whole 16-byte vectors of elements (1: no such promise)
                    INDEX_64: tl.constexpr, K_VEC: tl.constexpr, N_VEC: tl.constexpr,
                    # epilogue in two column halves (with 128 accumulators per thread the whole
                    # tile's reached 255 registers and spilled, with a residual or in Triton 3.6)
                    EPILOGUE_HALVES: tl.constexpr,
                    # tiles; PARTIAL: split-K (store fp32 partial sums)
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    GROUP_M: tl.constexpr, PARTIAL: tl.constexpr):
    pid_m, pid_n = _tile_coords(tl.program_id(0), M, COUT, BLOCK_M, BLOCK_N, GROUP_M)
    k_lo = tl.program_id(1) * K_PER_SPLIT
    k_hi = tl.minimum(_whole(CIN, K_VEC), k_lo + K_PER_SPLIT)

    # rows: BLOCK_M output pixels -> their base offsets in x. int32 unless a tensor reaches
    # 2^31 elements: int64 row offsets of every output element spilled the big epilogues.
    if INDEX_64:
        rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    else:
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n = rows // (OH * OW)
    x_rows = (n * _whole(sx_n, K_VEC) + ((rows // OW) % OH) * STRIDE * _whole(sx_h, K_VEC)
              + (rows % OW) * STRIDE * _whole(sx_w, K_VEC))
    row_ok = rows < M
    col_ok = cols < COUT

    # Mainloop: a [BLOCK_M, BLOCK_K] pixel-by-channel tile of x times a [BLOCK_K, BLOCK_N]
    # tile of w^T, accumulated in fp32. TMA zero-fills past the matrix edges.
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        if LOAD == LOAD_TMA:
            a = x_desc.load([pid_m * BLOCK_M, k0])
            b = w_desc.load([pid_n * BLOCK_N, k0]).T
        else:
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < k_hi
            a = tl.load(x_ptr + x_rows[:, None] + ks[None, :] * sx_c,
                        mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(w_ptr + ks[:, None] * sw_i + cols[None, :] * _whole(sw_o, K_VEC),
                        mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if USE_DOT:
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        else:  # float64 (gradcheck): tl.dot has no fp64 path on every Triton; small tiles
            acc += tl.sum(a.to(ACC)[:, :, None] * b.to(ACC)[None, :, :], axis=1)

    if PARTIAL:  # split-K: this slice's partial sum, [SPLIT_K, M, COUT] fp32, stored along channels
        cout = _whole(COUT, N_VEC)
        offs = tl.program_id(1).to(rows.dtype) * M * cout + rows[:, None] * cout + cols[None, :]
        tl.store(part_ptr + offs, acc, mask=row_ok[:, None] & (cols < cout)[None, :])
    elif EPILOGUE_HALVES:  # one half of the columns at a time: half the addresses and residual live
        halves = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N // 2)
        _epilogue(halves[0], rows, cols, M, COUT, OH, OW, b_ptr, r_ptr, out_ptr, so_n, so_c, so_h, so_w,
                  sr_n, sr_c, sr_h, sr_w, HAS_BIAS, HAS_RES, RELU, ACC, N_VEC)
        _epilogue(halves[1], rows, cols + BLOCK_N // 2, M, COUT, OH, OW, b_ptr, r_ptr, out_ptr, so_n, so_c, so_h,
                  so_w, sr_n, sr_c, sr_h, sr_w, HAS_BIAS, HAS_RES, RELU, ACC, N_VEC)
    else:
        _epilogue(acc, rows, cols, M, COUT, OH, OW, b_ptr, r_ptr, out_ptr, so_n, so_c, so_h, so_w,
                  sr_n, sr_c, sr_h, sr_w, HAS_BIAS, HAS_RES, RELU, ACC, N_VEC)


@triton.jit
def _splitk_epilogue_kernel(part_ptr, b_ptr, r_ptr, out_ptr, M, COUT, OH, OW, SLICE,
                            so_n, so_c, so_h, so_w, sr_n, sr_c, sr_h, sr_w,
                            HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, RELU: tl.constexpr,
                            ACC: tl.constexpr, INDEX_64: tl.constexpr, N_VEC: tl.constexpr,
                            SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # The split-K reduction: partial sums added in split order (the same bits every run);
    # SLICE = M * COUT elements between two slices (an int64 argument when it needs one).
    if INDEX_64:
        rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    else:
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cout = _whole(COUT, N_VEC)
    mask = (rows < M)[:, None] & (cols < cout)[None, :]
    parts = part_ptr + rows[:, None] * cout + cols[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for _ in range(SPLIT_K):
        acc += tl.load(parts, mask=mask, other=0.0).to(ACC)
        parts += _whole(SLICE, N_VEC)
    _epilogue(acc, rows, cols, M, COUT, OH, OW, b_ptr, r_ptr, out_ptr, so_n, so_c, so_h, so_w,
              sr_n, sr_c, sr_h, sr_w, HAS_BIAS, HAS_RES, RELU, ACC, N_VEC)


class _Address:
    """What a TensorDescriptor reads of its tensor (the address, the dtype), without holding the
    tensor: a cached descriptor never keeps an activation alive."""
    __slots__ = ("address", "dtype")

    def __init__(self, address, dtype):
        self.address, self.dtype = address, dtype

    def data_ptr(self):
        return self.address


_descriptors = {}  # (address, dtype, shape, strides, block) -> TensorDescriptor, oldest first
DESCRIPTOR_CACHE_SIZE = 512  # a ResNet-50 forward uses ~150 (weights and its activations)


def _descriptor(t, shape, strides, block):
    """A TMA descriptor of t viewed as `shape`/`strides` in `block` tiles, from the cache. The key
    is everything the descriptor encodes, so an entry is never stale: a new tensor at a freed
    address with the same geometry needs exactly the descriptor cached for the old one."""
    key = (t.data_ptr(), t.dtype, shape, strides, block)
    desc = _descriptors.get(key)
    if desc is None:
        if len(_descriptors) >= DESCRIPTOR_CACHE_SIZE:
            del _descriptors[next(iter(_descriptors))]
        base = t if _INTERPRETING else _Address(key[0], t.dtype)  # the interpreter reads the tensor
        desc = _descriptors[key] = TensorDescriptor(base, list(shape), list(strides), list(block))
    return desc


def _tma_views(x, w2d, stride, config, precision=None):
    """(x as a [M, Cin] descriptor, w as a [Cout, Cin] descriptor), or None where TMA cannot
    read them: no descriptors in this Triton, a GPU before Hopper (no TMA: Triton lowers
    descriptor loads to scalar ones on sm_80), float64 or IEEE float32 (the FMA dot on TMA tiles
    compiled to 10-70 KB of spills per thread), a strided 1x1 conv, x not dense NHWC, w not
    row-major, or rows / base not 16-byte aligned."""
    N, C, H, W = x.shape
    es = x.element_size()
    if (TensorDescriptor is None or capability(x.device)[0] < 9 or x.numel() == 0 or precision == "ieee"
            or x.dtype == torch.float64
            or (stride != 1 and H * W > 1) or x.stride() != (H * W * C, 1, W * C, C) or w2d.stride(1) != 1
            or (C * es) % 16 or (w2d.stride(0) * es) % 16 or x.data_ptr() % 16 or w2d.data_ptr() % 16):
        return None
    return (_descriptor(x, (N * H * W, C), (C, 1), (config.block_m, config.block_k)),
            _descriptor(w2d, tuple(w2d.shape), w2d.stride(), (config.block_n, config.block_k)))


def launch(x, weight, bias, out, stride, relu, tf32, residual, config, use_tma=True):
    """conv1x1 with an explicit GemmConfig (what tests, the tuner and the table pin)."""
    w2d = weight if weight.dim() == 2 else weight[:, :, 0, 0]
    N, COUT, OH, OW = out.shape
    M, CIN = N * OH * OW, x.shape[1]
    if out.numel() == 0:
        return out
    c = config
    precision = dot_precision(x.dtype, tf32)
    descs = _tma_views(x, w2d, stride, c, precision) if use_tma else None
    # K per split, a whole number of BLOCK_K steps so TMA blocks never straddle two slices
    k_per_split = cdiv(cdiv(CIN, c.split_k), c.block_k) * c.block_k
    split_k = cdiv(CIN, k_per_split)
    part = torch.empty((split_k, M, COUT), dtype=torch.float32, device=x.device) if split_k > 1 else out
    res = residual if residual is not None else out  # not read without a residual
    b = bias if bias is not None else w2d
    k_vec = min(vector(x, CIN), vector(w2d))  # both: unit stride along Cin
    n_vec = vector(out, COUT) if residual is None else min(vector(out, COUT), vector(residual, COUT))
    flags = dict(HAS_BIAS=bias is not None, HAS_RES=residual is not None, RELU=relu, ACC=acc_type(x),
                 INDEX_64=needs_int64([x, out, residual, part if split_k > 1 else None]), N_VEC=n_vec)
    grid = (cdiv(M, c.block_m) * cdiv(COUT, c.block_n), split_k)
    acc_per_thread = c.block_m * c.block_n // (32 * c.num_warps)
    with on_device(x):
        _conv1x1_kernel[grid](x, descs[0] if descs else x, w2d, descs[1] if descs else w2d, b, res, out, part,
                              M, COUT, CIN, OH, OW, stride, k_per_split,
                              *x.stride(), *w2d.stride(), *out.stride(), *res.stride(),
                              PRECISION=precision, USE_DOT=x.dtype != torch.float64,
                              LOAD=(LOAD_TMA if descs else LOAD_POINTERS).value, K_VEC=k_vec,
                              EPILOGUE_HALVES=acc_per_thread >= 128,
                              BLOCK_M=c.block_m, BLOCK_N=c.block_n, BLOCK_K=c.block_k, GROUP_M=c.group_m,
                              PARTIAL=split_k > 1, num_warps=c.num_warps, num_stages=c.num_stages, **flags)
        if split_k > 1:  # 64x64 tiles: 16 KB of fp32 partials per split, enough programs to fill the GPU
            grid = (cdiv(M, 64), cdiv(COUT, 64))
            _splitk_epilogue_kernel[grid](part, b, res, out, M, COUT, OH, OW, M * COUT, *out.stride(),
                                          *res.stride(), SPLIT_K=split_k, BLOCK_M=64, BLOCK_N=64, num_warps=4,
                                          **flags)
    return out


# --- which config runs: pinned > table > tuned (this process, or the on-disk cache) > rule -------

_tuned = {}  # (device index, shape class) -> GemmConfig: tuned, or the rule a capture fixed
# A shape class outside the table is tuned on its first eager call over this many candidates
# (each a compile, ~1-5 s, the first time this Triton cache sees it); FASTCONV_AUTOTUNE=0 uses
# the rule. FASTCONV_TUNED_CACHE=path keeps what this process tuned for the next one.
FIRST_USE_CANDIDATES = 3
AUTOTUNE_ON_FIRST_USE = os.environ.get("FASTCONV_AUTOTUNE", "1") != "0"
TUNED_CACHE = os.environ.get("FASTCONV_TUNED_CACHE")
_on_disk = None  # (arch, shape class) -> GemmConfig, read from TUNED_CACHE on first need
_pins = threading.local()
_INTERPRETING = triton_interpreting()  # fixed once triton is imported


@contextlib.contextmanager
def pinned_config(config):
    """Run every conv1x1 (a GemmConfig) or relu_grad_bias (a GradConfig) inside the block
    with `config` (tests, the tuner); None pins nothing."""
    previous = getattr(_pins, "config", None)
    _pins.config = config
    try:
        yield
    finally:
        _pins.config = previous


def choose_config(x, weight, out, stride, relu, residual, tune=True, tf32=None):
    """(GemmConfig, why) for a call: a pinned config; the tuning table's entry for the shape
    class; the config this process (or the on-disk cache) holds for it; else the rule. A shape
    class gets one config per process: it is tuned on its first eager call (a short list, on a
    GPU, never in the interpreter), and a first call inside CUDA-graph capture or torch.compile
    fixes the rule's config instead (no timing there, and the graph and eager calls then run
    the same kernel). tf32: float32 may use TF32 (default: torch.backends.cudnn.allow_tf32)."""
    pin = getattr(_pins, "config", None)
    if isinstance(pin, GemmConfig):
        return pin, "pinned"
    if x.device.type != "cuda" or x.dtype == torch.float64 or _INTERPRETING:
        return _rule(x, out, tf32), "rule (no tuning in the interpreter or for float64)"
    if x.stride(1) != 1:
        return _rule(x, out, tf32), "rule (not tuned: pixels of an NCHW input are not contiguous; auto runs cuDNN)"
    key = _tuning.conv_key(x, weight, stride, relu, residual)
    entry = _tuning.lookup(x.device, "conv1x1_relu", key)
    if entry is not None and entry.get("config"):
        return GemmConfig(**entry["config"]), "tuning table"
    slot = (x.device.index, key)
    known = _tuned.get(slot) or _load_tuned(x.device, key, slot)
    if known is not None:
        return known, "tuned in this process"
    if torch.cuda.is_current_stream_capturing() or torch.compiler.is_compiling():
        _tuned[slot] = _rule(x, out, tf32)
        return _tuned[slot], "rule (fixed by a first call under capture or compile)"
    if not tune or not AUTOTUNE_ON_FIRST_USE:
        return _rule(x, out, tf32), "rule (not tuned yet)"
    _tuned[slot] = autotune(x, weight, out, stride, relu, residual, limit=FIRST_USE_CANDIDATES)[0]
    _save_tuned(x.device, key, _tuned[slot])
    return _tuned[slot], "tuned in this process"


def _rule(x, out, tf32):
    N, COUT, OH, OW = out.shape
    return heuristic_config(N * OH * OW, COUT, x.shape[1], x.dtype,
                            torch.backends.cudnn.allow_tf32 if tf32 is None else tf32,
                            pixel_vectors=x.stride(1) == 1 and out.stride(1) == 1)


def _read_tuned_cache():
    """{(arch, shape class): GemmConfig} of the on-disk cache ({} without one)."""
    if not os.path.isfile(TUNED_CACHE):
        return {}
    with open(TUNED_CACHE) as f:
        return {(e["arch"], _tuning._as_key(e["key"])): GemmConfig(**e["config"]) for e in json.load(f)["entries"]}


def _load_tuned(device, key, slot):
    """The on-disk cache's config for this device's arch and shape class (copied into _tuned),
    or None. The file is read once per process."""
    global _on_disk
    if not TUNED_CACHE:
        return None
    if _on_disk is None:
        _on_disk = _read_tuned_cache()
    config = _on_disk.get((_tuning.arch(device), key))
    if config is not None:
        _tuned[slot] = config
    return config


def _save_tuned(device, key, config):
    """Add a tuned config to the on-disk cache, merged with what other processes wrote since
    (written whole, then renamed: a reader never sees half a file)."""
    if not TUNED_CACHE:
        return
    entries = _read_tuned_cache()
    entries[_tuning.arch(device), key] = config
    tmp = f"{TUNED_CACHE}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"format": 1, "entries": [{"arch": a, "key": k, "config": c.as_dict()}
                                            for (a, k), c in entries.items()]}, f)
    os.replace(tmp, TUNED_CACHE)


def _device_limits(device):
    """(shared memory bytes per block, SM count) of a CUDA device."""
    props = triton.runtime.driver.active.utils.get_device_properties(device.index)
    return props["max_shared_mem"], props["multiprocessor_count"]


def autotune(x, weight, out, stride, relu, residual, limit=6):
    """(fastest GemmConfig, {config: median ms}) over the short list for this call's shape,
    each timed as the full call (GEMM and split-K reduction). Our own loop rather than
    @triton.autotune: split-K's second kernel and workspace must be inside the timed call,
    and the choice must be readable (tables, fastconv.explain)."""
    from triton.testing import do_bench

    N, COUT, OH, OW = out.shape
    M, CIN = N * OH * OW, x.shape[1]
    tf32 = torch.backends.cudnn.allow_tf32
    smem, sms = _device_limits(x.device)
    short = early_config_prune(tuning_candidates(x.dtype, tf32, smem), M, COUT, CIN, x.element_size(), smem, sms,
                               limit)
    bias = torch.zeros(COUT, dtype=x.dtype, device=x.device)
    scratch = torch.empty_like(out)
    times = {}
    for c in short:
        fn = lambda c=c: launch(x, weight, bias, scratch, stride, relu, tf32, residual, c)  # noqa: E731
        try:
            times[c] = do_bench(fn, warmup=5, rep=20, return_mode="median")
        except Exception:  # e.g. out of shared memory or registers on this card: not a candidate
            continue
    best = min(times, key=times.get) if times else _rule(x, out, tf32)
    return best, times


def conv1x1(x, weight, bias, out, stride, relu, tf32, residual=None):
    """out (dense NCHW/NHWC) = [relu](conv1x1(x, weight [Cout, Cin(, 1, 1)], bias, stride)
    [+ residual (out's shape, any strides)]); tf32: float32 may be rounded to TF32 in the dot."""
    config, _ = choose_config(x, weight, out, stride, relu, residual, tf32=tf32)
    return launch(x, weight, bias, out, stride, relu, tf32, residual, config)


# --- backward: ReLU mask + bias gradient ---------------------------------------------------------

@dataclass(frozen=True)
class GradConfig:
    """Tile of the bias/ReLU backward: BLOCK_P pixels x BLOCK_C channels."""
    block_p: int
    block_c: int
    num_warps: int = 4

    def as_dict(self):
        return asdict(self)


def grad_configs():
    """Candidates: 2K-8K elements per program (8-32 KB of fp32 in flight), channel widths 32-128
    (whole 64-256 B NHWC row segments; one partial bias sum per channel per program)."""
    return [GradConfig(p, c, w) for p, c, w in
            [(64, 64, 4), (128, 64, 8), (32, 128, 4), (64, 128, 8), (128, 32, 4), (256, 32, 8)]]


def grad_config(C):
    """The rule: 4096-element tiles, channels up to 64 wide. Memory-bound: 2 reads + 1 write
    per element (6 B at 16-bit), the bias sum rides along."""
    block_c = min(next_power_of_2(C), 64)
    return GradConfig(4096 // block_c, block_c, 4)


def choose_grad_config(grad, relu):
    """(GradConfig, why): a pinned one, the table's entry for the shape class, else the rule.
    Not tuned on first use: a memory-bound kernel whose rule is within a few % (the tuner
    measures the list)."""
    pin = getattr(_pins, "config", None)
    if isinstance(pin, GradConfig):
        return pin, "pinned"
    if grad.device.type == "cuda" and not _INTERPRETING:
        entry = _tuning.lookup(grad.device, "relu_bias_backward", _tuning.tensor_key(grad) + (bool(relu),))
        if entry is not None and entry.get("config"):
            return GradConfig(**entry["config"]), "tuning table"
    return grad_config(grad.shape[1]), "rule"


@triton.jit
def _relu_grad_bias_kernel(g_ptr, y_ptr, gin_ptr, part_ptr, P, C, H, W,
                           sg_n, sg_c, sg_h, sg_w, sy_n, sy_c, sy_h, sy_w,
                           si_n, si_c, si_h, si_w, RELU: tl.constexpr, ACC: tl.constexpr,
                           BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # A [BLOCK_P pixels, BLOCK_C channels] tile: mask the gradient by the ReLU output (y > 0),
    # store it, and store its column sums as row program_id(0) of the [tiles, C] fp32 partial
    # sums (no atomics: the launcher adds the rows up in a fixed order, so the bias gradient
    # has the same bits every run).
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    n = p // (H * W)
    h = (p // W) % H
    w = p % W
    mask = (p < P)[:, None] & (c < C)[None, :]
    g = tl.load(g_ptr + (n * sg_n + h * sg_h + w * sg_w)[:, None] + c[None, :] * sg_c,
                mask=mask, other=0.0).to(ACC)
    if RELU:
        y = tl.load(y_ptr + (n * sy_n + h * sy_h + w * sy_w)[:, None] + c[None, :] * sy_c,
                    mask=mask, other=0.0).to(ACC)
        g = tl.where(y <= 0.0, 0.0, g)
    g = g.to(gin_ptr.dtype.element_ty)
    tl.store(gin_ptr + (n * si_n + h * si_h + w * si_w)[:, None] + c[None, :] * si_c, g, mask=mask)
    tl.store(part_ptr + tl.program_id(0) * C + c, tl.sum(g.to(ACC), axis=0), mask=c < C)


def launch_grad(grad, y, grad_in, bias_grad, relu, config):
    """relu_grad_bias with an explicit GradConfig."""
    N, C, H, W = grad.shape
    if grad.numel() == 0:
        return
    grid = (cdiv(N * H * W, config.block_p), cdiv(C, config.block_c))
    # the partial sums: 4 B per tile and channel, written and read once: 8 / (6 * BLOCK_P) of the
    # pass's bytes at 16-bit (2% at 64-pixel tiles)
    part = torch.empty((grid[0], C), dtype=bias_grad.dtype, device=grad.device)
    with on_device(grad):
        _relu_grad_bias_kernel[grid](grad, y, grad_in, part, N * H * W, C, H, W, *grad.stride(),
                                     *y.stride(), *grad_in.stride(), RELU=relu, ACC=acc_type(grad),
                                     BLOCK_P=config.block_p, BLOCK_C=config.block_c, num_warps=config.num_warps)
        bias_grad += part.sum(0)  # a reduction without atomics: deterministic


def autotune_grad(grad, y, relu, limit=None):
    """(fastest GradConfig, {config: median ms}) over the first `limit` of grad_configs()
    (the tuner's step)."""
    from triton.testing import do_bench

    grad_in = torch.empty_like(grad)
    bias_grad = torch.zeros(grad.shape[1], dtype=torch.float32, device=grad.device)
    times = {c: do_bench(lambda c=c: launch_grad(grad, y, grad_in, bias_grad, relu, c),
                         warmup=5, rep=20, return_mode="median") for c in grad_configs()[:limit]}
    return min(times, key=times.get), times


def relu_grad_bias(grad, y, grad_in, bias_grad, relu):
    """grad_in = grad * (y > 0) (or grad if not relu); bias_grad (fp32, zeroed) += its channel
    sums, the same bits every run (torch.use_deterministic_algorithms holds)."""
    launch_grad(grad, y, grad_in, bias_grad, relu, choose_grad_config(grad, relu)[0])
