// Fused 1x1 convolution + bias (+ residual) + ReLU: a GEMM over pixels with the epilogue fused.
//   out[m, j] = relu(sum_k x[m, k] * w[j, k] + bias[j]),  m = (n, oh, ow) reading x[n, :, oh*s, ow*s]
// This file holds the dispatch rule (conv1x1) and the fallback kernels; the fast path is the
// cp.async + ldmatrix + mma.sync GEMM of conv1x1_gemm.cu.
//
// Which kernel runs (conv1x1_kernel_name says it; csrc/README.md has the rule's reasons):
//   - fp16/bf16, or fp32 with TF32 allowed, x and weight K-contiguous (channel stride 1:
//     channels_last, stride 1 or 2, channel-contiguous views) with 16-byte aligned rows:
//     the tensor-core GEMM, tile shape from choose_tile (gemm_tile_size.h).
//   - other 16-bit / TF32 cases (NCHW or channel-strided x, Cin * elem not a multiple of 16
//     bytes in NHWC, misaligned views): conv1x1_wmma below, read through strides (no copy).
//   - IEEE fp32 and fp64: conv1x1_simt below.
// Rows are pixels in the fallbacks too, so one kernel serves NCHW and NHWC: each row's pixel
// offset is computed once per block, channels are walked through x's channel stride.
// Napkin math (16-bit, Cin 192 -> Cout 64): 384 B read + 128 B written per pixel, 48 FLOP/B:
// memory-bound on an H100 (ridge ~266 FLOP/B). The fused epilogue saves eager's ReLU pass
// (256 B per pixel).
//
// Fallback roles: load_tile (global -> shared through strides, converting to the MMA type),
// the mainloop (WMMA: fp16/bf16 16x16x16, TF32 16x16x8; or SIMT 4x4 register tiles),
// store_epilogue (accumulators -> shared -> bias, ReLU, one rounding, strided stores).
#include <mma.h>

#include "common.cuh"
#include "conv1x1_gemm.h"

namespace fastconv {
namespace {

using namespace nvcuda;

// Block tile: BM pixels x 64 output channels, K step 32, 256 threads. Tensor cores: BM 128,
// 8 warps as 4 (pixels) x 2 (channels), each warp 32x32 = 2x2 WMMA tiles. SIMT: BM 64, each
// thread a 4x4 register tile. Shared memory stays under the 48 KB static limit: the
// accumulator tile reuses the input tiles' space.
constexpr int BN = 64, BK = 32, THREADS = 256;
constexpr int PAD = 8;  // shifts rows across banks

struct Geom {
  int64_t M, cout, cin, OH, OW, stride;
  Shape4 xst, ost, rst;  // x, out and residual strides
  int64_t w_o, w_i;      // weight strides [Cout, Cin]
  int64_t bias_s;        // bias stride
};

// MMA element type: the tensor type for 16-bit inputs, float (rounded to TF32) for fp32.
template <typename T> struct Mma { using type = T; static constexpr int K = 16; };
template <> struct Mma<float> { using type = wmma::precision::tf32; static constexpr int K = 8; };
template <typename T> struct Smem { using type = T; };
template <> struct Smem<float> { using type = float; };

// Per-block row bookkeeping: the x, out and residual offsets of each of the BM pixels
// (-1: past M).
template <int BM>
__device__ void row_offsets(const Geom& g, int64_t m0, int64_t* x_row, int64_t* o_row, int64_t* r_row) {
  for (int r = threadIdx.x; r < BM; r += THREADS) {
    const int64_t m = m0 + r;
    if (m < g.M) {
      const int64_t n = m / (g.OH * g.OW), oh = (m / g.OW) % g.OH, ow = m % g.OW;
      x_row[r] = n * g.xst.d[0] + oh * g.stride * g.xst.d[2] + ow * g.stride * g.xst.d[3];
      o_row[r] = n * g.ost.d[0] + oh * g.ost.d[2] + ow * g.ost.d[3];
      r_row[r] = n * g.rst.d[0] + oh * g.rst.d[2] + ow * g.rst.d[3];
    } else {
      x_row[r] = o_row[r] = r_row[r] = -1;
    }
  }
}

// Input stage: A[r][k] = x[row r, channel k0 + k], B[k][j] = w[j0 + j, k0 + k], zero outside.
// The faster-varying index follows the unit-stride dimension so warps read coalesced.
template <int BM, typename T, typename S>
__device__ void load_tile(const Geom& g, const T* __restrict__ x, const T* __restrict__ w,
                          const int64_t* x_row, int64_t k0, int64_t j0, S* As, int lda, S* Bs,
                          int ldb) {
  using A = typename Acc<T>::type;
  const bool k_fast = g.xst.d[1] == 1;
  for (int i = threadIdx.x; i < BM * BK; i += THREADS) {
    const int r = k_fast ? i / BK : i % BM, k = k_fast ? i % BK : i / BM;
    const int64_t kk = k0 + k;
    A v = A(0);
    if (x_row[r] >= 0 && kk < g.cin) v = to_acc<A>(x[x_row[r] + kk * g.xst.d[1]]);
    As[r * lda + k] = from_acc<S>(v);
  }
  const bool wk_fast = g.w_i == 1;
  for (int i = threadIdx.x; i < BK * BN; i += THREADS) {
    const int k = wk_fast ? i % BK : i / BN, j = wk_fast ? i / BK : i % BN;
    const int64_t kk = k0 + k, jj = j0 + j;
    A v = A(0);
    if (kk < g.cin && jj < g.cout) v = to_acc<A>(w[jj * g.w_o + kk * g.w_i]);
    Bs[k * ldb + j] = from_acc<S>(v);
  }
}

// Epilogue: C (accumulators in shared memory, [BM][ldc]) + bias + residual, ReLU, one
// rounding, store.
template <int BM, typename T, typename A>
__device__ void store_epilogue(const Geom& g, const A* Cs, int ldc, const int64_t* o_row,
                               const int64_t* r_row, int64_t j0, const T* __restrict__ bias,
                               const T* __restrict__ res, bool relu, T* __restrict__ out) {
  const bool j_fast = g.ost.d[1] == 1;  // NHWC out: channels contiguous
  for (int i = threadIdx.x; i < BM * BN; i += THREADS) {
    const int r = j_fast ? i / BN : i % BM, j = j_fast ? i % BN : i / BM;
    const int64_t jj = j0 + j;
    if (o_row[r] < 0 || jj >= g.cout) continue;
    A v = Cs[r * ldc + j];
    if (bias != nullptr) v += to_acc<A>(bias[jj * g.bias_s]);
    if (res != nullptr) v += to_acc<A>(res[r_row[r] + jj * g.rst.d[1]]);
    if (relu && v < A(0)) v = A(0);  // NaN stays NaN, as torch.relu
    out[o_row[r] + jj * g.ost.d[1]] = from_acc<T>(v);
  }
}

// Tensor-core kernel: fp16 / bf16 (fp32 accumulate), or fp32 inputs rounded to TF32.
template <typename T>
__global__ void __launch_bounds__(THREADS, 1) conv1x1_wmma(const T* __restrict__ x, const T* __restrict__ w,
                                                           const T* __restrict__ bias, const T* __restrict__ res,
                                                           T* __restrict__ out, Geom g, bool relu) {
  constexpr int BM = 128;
  using S = typename Smem<T>::type;
  using M = typename Mma<T>::type;
  constexpr int WK = Mma<T>::K;
  constexpr int lda = BK + PAD, ldb = BN + PAD, ldc = BN + 4;
  constexpr int in_bytes = (BM * lda + BK * ldb) * sizeof(S), c_bytes = BM * ldc * sizeof(float);
  __shared__ __align__(32) unsigned char smem[in_bytes > c_bytes ? in_bytes : c_bytes];
  __shared__ int64_t x_row[BM], o_row[BM], r_row[BM];
  S* As = reinterpret_cast<S*>(smem);
  S* Bs = As + BM * lda;
  float* Cs = reinterpret_cast<float*>(smem);

  const int64_t m0 = int64_t(blockIdx.x) * BM, j0 = int64_t(blockIdx.y) * BN;
  const int warp = threadIdx.x / 32, wm = warp % 4, wn = warp / 4;
  row_offsets<BM>(g, m0, x_row, o_row, r_row);

  wmma::fragment<wmma::accumulator, 16, 16, WK, float> acc[2][2];
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int b = 0; b < 2; ++b) wmma::fill_fragment(acc[a][b], 0.0f);

  for (int64_t k0 = 0; k0 < g.cin; k0 += BK) {
    __syncthreads();  // row offsets ready / previous tile consumed
    load_tile<BM, T, S>(g, x, w, x_row, k0, j0, As, lda, Bs, ldb);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk += WK) {
      wmma::fragment<wmma::matrix_a, 16, 16, WK, M, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, WK, M, wmma::row_major> fb[2];
#pragma unroll
      for (int a = 0; a < 2; ++a) {
        wmma::load_matrix_sync(fa[a], As + (wm * 32 + a * 16) * lda + kk, lda);
        wmma::load_matrix_sync(fb[a], Bs + kk * ldb + wn * 32 + a * 16, ldb);
        if constexpr (sizeof(S) == 4) {  // TF32: round the fp32 inputs
#pragma unroll
          for (int t = 0; t < fa[a].num_elements; ++t) fa[a].x[t] = wmma::__float_to_tf32(fa[a].x[t]);
#pragma unroll
          for (int t = 0; t < fb[a].num_elements; ++t) fb[a].x[t] = wmma::__float_to_tf32(fb[a].x[t]);
        }
      }
#pragma unroll
      for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int b = 0; b < 2; ++b) wmma::mma_sync(acc[a][b], fa[a], fb[b], acc[a][b]);
    }
  }
  __syncthreads();  // the input tiles become the accumulator tile
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int b = 0; b < 2; ++b)
      wmma::store_matrix_sync(Cs + (wm * 32 + a * 16) * ldc + wn * 32 + b * 16, acc[a][b], ldc,
                              wmma::mem_row_major);
  __syncthreads();
  store_epilogue<BM, T, float>(g, Cs, ldc, o_row, r_row, j0, bias, res, relu, out);
}

// SIMT kernel for IEEE fp32 and fp64: each thread accumulates a 4 (pixels) x 4 (channels)
// register tile of the 64 x 64 block tile.
template <typename T>
__global__ void __launch_bounds__(THREADS, 1) conv1x1_simt(const T* __restrict__ x, const T* __restrict__ w,
                                                           const T* __restrict__ bias, const T* __restrict__ res,
                                                           T* __restrict__ out, Geom g, bool relu) {
  constexpr int BM = 64;
  constexpr int lda = BK + 1, ldb = BN + PAD, ldc = BN + 1;
  constexpr int in_bytes = (BM * lda + BK * ldb) * sizeof(T), c_bytes = BM * ldc * sizeof(T);
  __shared__ __align__(16) unsigned char smem[in_bytes > c_bytes ? in_bytes : c_bytes];
  __shared__ int64_t x_row[BM], o_row[BM], r_row[BM];
  T* As = reinterpret_cast<T*>(smem);
  T* Bs = As + BM * lda;
  T* Cs = reinterpret_cast<T*>(smem);

  const int64_t m0 = int64_t(blockIdx.x) * BM, j0 = int64_t(blockIdx.y) * BN;
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;  // rows tr + 16 * a, cols tc + 16 * b
  row_offsets<BM>(g, m0, x_row, o_row, r_row);
  T acc[4][4] = {};
  for (int64_t k0 = 0; k0 < g.cin; k0 += BK) {
    __syncthreads();
    load_tile<BM, T, T>(g, x, w, x_row, k0, j0, As, lda, Bs, ldb);
    __syncthreads();
#pragma unroll 4
    for (int k = 0; k < BK; ++k) {
      T bv[4];
#pragma unroll
      for (int b = 0; b < 4; ++b) bv[b] = Bs[k * ldb + tc + 16 * b];
#pragma unroll
      for (int a = 0; a < 4; ++a) {
        const T av = As[(tr + 16 * a) * lda + k];
#pragma unroll
        for (int b = 0; b < 4; ++b) acc[a][b] = fma(av, bv[b], acc[a][b]);
      }
    }
  }
  __syncthreads();
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int b = 0; b < 4; ++b) Cs[(tr + 16 * a) * ldc + tc + 16 * b] = acc[a][b];
  __syncthreads();
  store_epilogue<BM, T, T>(g, Cs, ldc, o_row, r_row, j0, bias, res, relu, out);
}

// ReLU mask + bias gradient over the pixels (n, h, w) of each channel: grad_in = grad, zeroed
// where y <= 0 (relu), and bias_grad[c] += the sum of grad_in[:, c]. The host merges pixel dims
// that run into each other in all three tensors (dense ones: (h, w), or all three), so a block
// walks whole runs of w, and steps from row to row (n, h) with a carry: no division per element
// or per row. Threads run along the contiguous axis of grad_in (coalesced loads and stores in
// both layouts):
//   kChannelsFast (NHWC): a warp = 32 channels at one pixel; the 8 warps take every 8th pixel.
//   otherwise (NCHW):     a warp = 32 pixels of a run of one channel; 8 warps = 8 channels.
// Each thread sums its channel over its pixels; one atomic per channel per block.
struct GradGeometry {
  int64_t N, C, H, W, w_chunk;  // sizes after merging; w_chunk: columns per block
  Shape4 gs, ys, is;            // strides (n, c, h, w) of grad, y and grad_in
};

// Row r (< 65536: a block or grid index) of the N x H rows as (n, h), without a 64-bit
// division: none where H > r, a 32-bit one otherwise.
struct Row { int64_t n, h; };
__device__ __forceinline__ Row split_row(unsigned r, int64_t H) {
  if (H > r) return {0, r};
  const unsigned h32 = static_cast<unsigned>(H);
  return {r / h32, r % h32};
}

template <typename T, bool kChannelsFast>
__global__ void __launch_bounds__(256) relu_grad_bias_kernel(const T* __restrict__ grad, const T* __restrict__ y,
                                                             T* __restrict__ grad_in, typename Acc<T>::type* bias_grad,
                                                             GradGeometry g, bool relu) {
  using A = typename Acc<T>::type;
  const int tx = threadIdx.x, ty = threadIdx.y;  // blockDim = (32, 8)
  const int64_t c = kChannelsFast ? int64_t(blockIdx.x) * 32 + tx : int64_t(blockIdx.x) * 8 + ty;
  const int first = kChannelsFast ? ty : tx, step = kChannelsFast ? 8 : 32;
  const int64_t chunk = int64_t(blockIdx.z) * g.w_chunk, w0 = chunk + first;
  const int64_t w1 = chunk + g.w_chunk < g.W ? chunk + g.w_chunk : g.W;
  A sum = A(0);
  if (c < g.C) {
    // rows blockIdx.y, + gridDim.y, ...: (n, h) stepped with a carry, no division per row
    const Row rows_step = split_row(gridDim.y, g.H);
    for (Row row = split_row(blockIdx.y, g.H); row.n < g.N;) {
      const int64_t n = row.n, h = row.h;
      row.n += rows_step.n;
      row.h += rows_step.h;
      if (row.h >= g.H) {
        row.h -= g.H;
        ++row.n;
      }
      const T* gp = grad + offset(g.gs, n, c, h, w0);
      const T* yp = y + offset(g.ys, n, c, h, w0);
      T* ip = grad_in + offset(g.is, n, c, h, w0);
      for (int64_t w = w0; w < w1; w += step) {
        T v = *gp;
        if (relu && to_acc<A>(*yp) <= A(0)) v = from_acc<T>(A(0));
        *ip = v;
        sum += to_acc<A>(v);
        gp += step * g.gs.d[3];
        yp += step * g.ys.d[3];
        ip += step * g.is.d[3];
      }
    }
  }
  if constexpr (kChannelsFast) {  // the 8 warps' partial sums of the same 32 channels
    __shared__ A part[8][32];
    part[ty][tx] = sum;
    __syncthreads();
    if (ty == 0 && c < g.C) {
#pragma unroll
      for (int i = 1; i < 8; ++i) sum += part[i][tx];
      atomicAdd(bias_grad + c, sum);
    }
  } else {  // one channel per warp
#pragma unroll
    for (int m = 16; m > 0; m /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, m);
    if (tx == 0 && c < g.C) atomicAdd(bias_grad + c, sum);
  }
}

}  // namespace

namespace {

Geom fallback_geometry(const Conv1x1Args& a) {
  Geom g;
  // ceil(H / stride), 0 for H = 0 (as Python's (H - 1) // s + 1; C++ division truncates)
  g.OH = (a.x_sizes.d[2] + a.stride - 1) / a.stride;
  g.OW = (a.x_sizes.d[3] + a.stride - 1) / a.stride;
  g.M = a.x_sizes.d[0] * g.OH * g.OW;
  g.cout = a.cout;
  g.cin = a.x_sizes.d[1];
  g.stride = a.stride;
  g.xst = a.x_strides;
  g.ost = a.out_strides;
  g.rst = a.res_strides;
  g.w_o = a.w_stride_o;
  g.w_i = a.w_stride_i;
  g.bias_s = a.bias_stride;
  return g;
}

ConvGemmParams gemm_params(const Conv1x1Args& a) {
  const Geom g = fallback_geometry(a);
  ConvGemmParams p;
  p.x = a.x; p.w = a.w; p.bias = a.bias; p.residual = a.residual; p.out = a.out;
  p.M = g.M; p.cin = g.cin; p.cout = g.cout; p.OH = g.OH; p.OW = g.OW; p.stride = g.stride;
  p.xs_n = g.xst.d[0]; p.xs_c = g.xst.d[1]; p.xs_h = g.xst.d[2]; p.xs_w = g.xst.d[3];
  p.w_o = g.w_o; p.w_i = g.w_i; p.bias_s = g.bias_s;
  p.os_n = g.ost.d[0]; p.os_c = g.ost.d[1]; p.os_h = g.ost.d[2]; p.os_w = g.ost.d[3];
  p.rs_n = g.rst.d[0]; p.rs_c = g.rst.d[1]; p.rs_h = g.rst.d[2]; p.rs_w = g.rst.d[3];
  p.relu = a.relu;
  // The NHWC epilogue's vector accesses along channels: channel-contiguous, aligned base and
  // pixel strides (16 bytes, else 8; the NCHW GEMM sets its own, along pixels).
  const int64_t N = a.x_sizes.d[0];
  const auto width = [&](const void* ptr, const Shape4& st) {
    return widest_vector([&](int bytes) {
      const int64_t vec = bytes / dtype_size(a.dtype);
      return vec > 0 && st.d[1] == 1 && aligned(ptr, bytes) && multiple_of(st.d[0], N, vec) &&
             multiple_of(st.d[2], g.OH, vec) && multiple_of(st.d[3], g.OW, vec);
    });
  };
  p.vec_out = width(a.out, g.ost);
  p.vec_res = a.residual != nullptr ? width(a.residual, g.rst) : 0;
  return p;
}

enum class Kernel { mma_large, mma_narrow, mma_small_m, mma_nchw, mma_nchw8, wmma, simt };

Kernel choose_kernel(const Conv1x1Args& a, const ConvGemmParams& p, int sms) {
  if (conv1x1_gemm_supported(p, a.dtype, a.tf32)) {
    switch (choose_tile(p.M, p.cout, sms)) {
      case TileKind::large: return Kernel::mma_large;
      case TileKind::narrow: return Kernel::mma_narrow;
      case TileKind::small_m: return Kernel::mma_small_m;
    }
  }
  switch (conv1x1_gemm_nchw_copy_bytes(p, a.dtype)) {
    case 16: return Kernel::mma_nchw;
    case 8: return Kernel::mma_nchw8;
    default: break;
  }
  const bool tensor_cores = a.dtype == DType::f16 || a.dtype == DType::bf16 || (a.dtype == DType::f32 && a.tf32);
  return tensor_cores ? Kernel::wmma : Kernel::simt;
}

}  // namespace

const char* conv1x1_kernel_name(const Conv1x1Args& args, int sms) {
  switch (choose_kernel(args, gemm_params(args), sms)) {
    case Kernel::mma_large: return "mma_128x128";
    case Kernel::mma_narrow: return "mma_128x64";
    case Kernel::mma_small_m: return "mma_64x128";
    case Kernel::mma_nchw: return "mma_nchw_128x128";
    case Kernel::mma_nchw8: return "mma_nchw8_128x128";
    case Kernel::wmma: return "wmma";
    case Kernel::simt: return "simt";
  }
  return "?";
}

cudaError_t conv1x1(const Conv1x1Args& a, cudaStream_t stream) {
  const Geom g = fallback_geometry(a);
  if (g.M == 0 || g.cout == 0) return cudaSuccess;
  const ConvGemmParams p = gemm_params(a);
  int device = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  const Kernel kernel = choose_kernel(a, p, sms);
  switch (kernel) {
    case Kernel::mma_large: return conv1x1_gemm(p, a.dtype, TileKind::large, device, stream);
    case Kernel::mma_narrow: return conv1x1_gemm(p, a.dtype, TileKind::narrow, device, stream);
    case Kernel::mma_small_m: return conv1x1_gemm(p, a.dtype, TileKind::small_m, device, stream);
    case Kernel::mma_nchw: return conv1x1_gemm_nchw(p, a.dtype, 16, device, stream);
    case Kernel::mma_nchw8: return conv1x1_gemm_nchw(p, a.dtype, 8, device, stream);
    default: break;
  }
  const auto grid = [&](int bm) {
    return dim3(static_cast<unsigned>((g.M + bm - 1) / bm), static_cast<unsigned>((g.cout + BN - 1) / BN));
  };
  return dispatch(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T *xp = static_cast<const T*>(a.x), *wp = static_cast<const T*>(a.w);
    const T *bp = static_cast<const T*>(a.bias), *rp = static_cast<const T*>(a.residual);
    T* op = static_cast<T*>(a.out);
    if constexpr (sizeof(T) == 2) {  // 16-bit: always tensor cores
      conv1x1_wmma<T><<<grid(128), THREADS, 0, stream>>>(xp, wp, bp, rp, op, g, a.relu);
    } else if constexpr (sizeof(T) == 4) {
      if (kernel == Kernel::wmma)
        conv1x1_wmma<T><<<grid(128), THREADS, 0, stream>>>(xp, wp, bp, rp, op, g, a.relu);
      else
        conv1x1_simt<T><<<grid(64), THREADS, 0, stream>>>(xp, wp, bp, rp, op, g, a.relu);
    } else {
      conv1x1_simt<T><<<grid(64), THREADS, 0, stream>>>(xp, wp, bp, rp, op, g, a.relu);
    }
    return cudaGetLastError();
  });
}

namespace {

// Merges pixel dim `outer` into `inner` (sizes z, strides of grad, y, grad_in) where, in all
// three tensors, stepping `outer` is stepping `inner` past its end: the two walk as one run.
bool merge_dims(Shape4& z, Shape4 (&st)[3], int outer, int inner) {
  for (const Shape4& s : st)
    if (z.d[outer] > 1 && z.d[inner] > 1 && s.d[outer] != z.d[inner] * s.d[inner]) return false;
  for (Shape4& s : st)
    if (z.d[inner] == 1) s.d[inner] = s.d[outer];
  z.d[inner] *= z.d[outer];
  z.d[outer] = 1;
  return true;
}

}  // namespace

cudaError_t relu_grad_bias(const void* grad, const void* y, void* grad_in, void* bias_grad, DType dtype,
                           Shape4 sizes, Shape4 g_strides, Shape4 y_strides, Shape4 gi_strides, bool relu,
                           cudaStream_t stream) {
  const int64_t P = sizes.d[0] * sizes.d[2] * sizes.d[3];
  if (P == 0 || sizes.d[1] == 0) return cudaSuccess;
  Shape4 z = sizes, st[3] = {g_strides, y_strides, gi_strides};
  if (merge_dims(z, st, 2, 3)) merge_dims(z, st, 0, 3);  // (h, w) into one run, then n
  else merge_dims(z, st, 0, 2);                          // n into h: rows of w
  const bool channels_fast = z.d[1] > 1 && st[2].d[1] == 1;  // grad_in's channels contiguous (NHWC)
  GradGeometry g{z.d[0], z.d[1], z.d[2], z.d[3], 0, st[0], st[1], st[2]};
  // 256 columns a block: 32 (channels fast) or 8 (pixels fast) per thread and row, few atomics;
  // more where grid.z (at most 65535) would not cover them.
  g.w_chunk = g.W / 256 < 65535 ? 256 : (g.W + 65534) / 65535;
  const dim3 threads(32, 8);
  const dim3 grid(static_cast<unsigned>((g.C + (channels_fast ? 31 : 7)) / (channels_fast ? 32 : 8)),
                  static_cast<unsigned>(g.N * g.H < 65535 ? g.N * g.H : 65535),
                  static_cast<unsigned>((g.W + g.w_chunk - 1) / g.w_chunk));
  return dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = typename Acc<T>::type;
    const auto* gp = static_cast<const T*>(grad);
    const auto* yp = static_cast<const T*>(y);
    auto* ip = static_cast<T*>(grad_in);
    auto* bp = static_cast<A*>(bias_grad);
    if (channels_fast) relu_grad_bias_kernel<T, true><<<grid, threads, 0, stream>>>(gp, yp, ip, bp, g, relu);
    else relu_grad_bias_kernel<T, false><<<grid, threads, 0, stream>>>(gp, yp, ip, bp, g, relu);
    return cudaGetLastError();
  });
}

}  // namespace fastconv
