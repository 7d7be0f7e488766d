// The two layouts of the 1x1 conv GEMM, as policies of the one kernel (conv1x1_gemm.cu): each
// says which scheduler orders the tiles, which operand tiles feed the mainloop, and, for the
// epilogue, where each row of the output tile lies in out and residual.
//   NhwcLayout: out[m, j] = sum_k x[m, k] * w[j, k]: rows = pixels m = (n, oh, ow), A = x
//     gathered by pixel (K-major: channel stride 1), B = weight rows, columns = output
//     channels (contiguous in an NHWC out). Any pixel strides and the conv stride.
//   NchwLayout: per image n, out[n][j][p] = sum_k w[j][k] * x[n][k][p]: rows = output
//     channels, A = weight rows, B = x[n] (pixel-major, ldmatrix.trans), columns = pixels
//     p = oh * W + ow (contiguous in a dense NCHW out). Stride 1, flat pixels in x, out, residual.
#pragma once

#include <cstdint>

#include "gemm_operands.cuh"
#include "gemm_params.h"
#include "gemm_scheduler.cuh"

namespace fastconv {

// The element offsets of an NHWC tile's BM pixels in x (the gather of A rows, stride
// included), out and residual; -1 past M. Filled once per block by all threads (a few 64-bit
// divisions per row, instead of per row per thread in the mainloop and the epilogue), read
// after a barrier.
template <int BM>
struct TilePixels {
  int64_t x[BM], out[BM], res[BM];

  __device__ __forceinline__ void fill(const ConvGemmParams& p, int64_t m0) {
    for (int r = threadIdx.x; r < BM; r += blockDim.x) {
      const int64_t m = m0 + r;
      if (m < p.M) {
        const int64_t pixels = p.OH * p.OW, n = m / pixels, rest = m - n * pixels;
        const int64_t oh = rest / p.OW, ow = rest - oh * p.OW;
        x[r] = n * p.xs_n + (oh * p.xs_h + ow * p.xs_w) * p.stride;
        out[r] = n * p.os_n + oh * p.os_h + ow * p.os_w;
        res[r] = n * p.rs_n + oh * p.rs_h + ow * p.rs_w;
      } else {
        x[r] = out[r] = res[r] = -1;
      }
    }
  }
};

template <class Cfg>
struct NhwcLayout {
  using T = typename Cfg::T;
  using Scheduler = GroupedTileScheduler<Cfg::BM, Cfg::BN>;
  using ATile = KMajorTile<Cfg, Cfg::BM>;
  using BTile = KMajorTile<Cfg, Cfg::BN>;
  struct SharedStorage { TilePixels<Cfg::BM> pixels; };
  static constexpr bool kBiasPerRow = false;

  static typename Scheduler::Params schedule(const ConvGemmParams& p) { return Scheduler::to_params(p.M, p.cout); }

  const SharedStorage* s;
  int64_t row0, col0, cols, out_cs, res_cs;

  // The block's tile; its pixel offsets are in shared memory after the next barrier.
  __device__ __forceinline__ NhwcLayout(const ConvGemmParams& p, const typename Scheduler::Params& sched,
                                        SharedStorage& storage)
      : s(&storage), cols(p.cout), out_cs(p.os_c), res_cs(p.rs_c) {
    const auto work = Scheduler::get_work(sched, blockIdx.x);
    row0 = int64_t(work.m_block) * Cfg::BM;
    col0 = int64_t(work.n_block) * Cfg::BN;
    storage.pixels.fill(p, row0);
  }

  __device__ __forceinline__ ATile a(const ConvGemmParams& p) const {
    const char* x = static_cast<const char*>(p.x);
    const int64_t* rows = s->pixels.x;
    return ATile([&](int r) { return rows[r] >= 0 ? x + rows[r] * int64_t(sizeof(T)) : nullptr; }, p.cin);
  }
  __device__ __forceinline__ BTile b(const ConvGemmParams& p) const {
    const char* w = static_cast<const char*>(p.w);
    return BTile([&](int r) { return col0 + r < p.cout ? w + (col0 + r) * p.w_o * int64_t(sizeof(T)) : nullptr; },
                 p.cin);
  }

  __device__ __forceinline__ int64_t out_row(int r) const { return s->pixels.out[r]; }
  __device__ __forceinline__ int64_t res_row(int r) const { return s->pixels.res[r]; }
};

template <class Cfg>
struct NchwLayout {
  using T = typename Cfg::T;
  using Scheduler = NchwScheduler<Cfg::BM, Cfg::BN>;
  using ATile = KMajorTile<Cfg, Cfg::BM>;
  using BTile = PixelMajorTile<Cfg>;
  struct SharedStorage {};
  static constexpr bool kBiasPerRow = true;
  static constexpr int64_t out_cs = 1, res_cs = 1;  // pixels are flat in out and residual (host)

  static typename Scheduler::Params schedule(const ConvGemmParams& p) {
    return Scheduler::to_params(p.cout, p.OH * p.OW, p.M / (p.OH * p.OW));
  }

  int64_t row0, col0, cols, n, cout, out_base, res_base, os_c, rs_c;

  __device__ __forceinline__ NchwLayout(const ConvGemmParams& p, const typename Scheduler::Params& sched,
                                        SharedStorage&)
      : cols(p.OH * p.OW), cout(p.cout), os_c(p.os_c), rs_c(p.rs_c) {
    const auto work = Scheduler::get_work(sched, blockIdx.x);
    row0 = int64_t(work.j_block) * Cfg::BM;
    col0 = int64_t(work.p_block) * Cfg::BN;
    n = work.n;
    out_base = n * p.os_n;
    res_base = n * p.rs_n;
  }

  __device__ __forceinline__ ATile a(const ConvGemmParams& p) const {
    const char* w = static_cast<const char*>(p.w);
    return ATile([&](int r) { return row0 + r < p.cout ? w + (row0 + r) * p.w_o * int64_t(sizeof(T)) : nullptr; },
                 p.cin);
  }
  __device__ __forceinline__ BTile b(const ConvGemmParams& p) const { return BTile(p, col0, n); }

  __device__ __forceinline__ int64_t row_index(int r) const { return row0 + r; }  // output channel
  __device__ __forceinline__ int64_t out_row(int r) const { return row0 + r < cout ? out_base + (row0 + r) * os_c : -1; }
  __device__ __forceinline__ int64_t res_row(int r) const { return row0 + r < cout ? res_base + (row0 + r) * rs_c : -1; }
};

}  // namespace fastconv
