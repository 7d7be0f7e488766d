// Epilogue of the 1x1 conv GEMM: fp32 accumulators -> shared memory (the mainloop's stages,
// now free) -> + bias + residual, ReLU, one rounding -> out.
// Staging through shared memory turns the mma's scattered fragment layout (each thread two
// adjacent columns of rows g and g + 8) into rows of 16-byte vectors: consecutive threads
// store consecutive 16 bytes of one output pixel's channels, fully coalesced for NHWC.
// Where 16-byte accesses are not legal (out or residual not channel-contiguous, misaligned,
// a Cout tail), the same threads fall back to scalar accesses.
#pragma once

#include "common.cuh"
#include "gemm_params.h"

namespace fastconv {

template <class Cfg>
struct Epilogue {
  using T = typename Cfg::T;
  static constexpr int BM = Cfg::BM, BN = Cfg::BN, VEC = Cfg::VEC;
  // 8 floats of padding: the float2 writes of a half warp (rows g = 0..3, 4 column pairs)
  // then cover all 32 banks once.
  static constexpr int LDC = BN + 8;
  struct SharedStorage { alignas(16) float c[BM * LDC]; };
  struct alignas(16) Vec { T v[VEC]; };

  // out_rows / res_rows: the tile's pixel offsets in out and residual (TilePixels), -1 past M.
  template <class Accum>
  static __device__ __forceinline__ void run(const ConvGemmParams& p, SharedStorage& s, const Accum& acc,
                                             const int64_t* out_rows, const int64_t* res_rows, int64_t n0) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int wm = warp % Cfg::WARPS_M, wn = warp / Cfg::WARPS_M;
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int mt = 0; mt < Cfg::MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < Cfg::NT; ++nt) {
        const int r = wm * Cfg::WM + mt * 16 + g, c = wn * Cfg::WN + nt * 8 + 2 * t;
        *reinterpret_cast<float2*>(&s.c[r * LDC + c]) = make_float2(acc[mt][nt][0], acc[mt][nt][1]);
        *reinterpret_cast<float2*>(&s.c[(r + 8) * LDC + c]) = make_float2(acc[mt][nt][2], acc[mt][nt][3]);
      }
    __syncthreads();

    const T* __restrict__ bias = static_cast<const T*>(p.bias);
    const T* __restrict__ res = static_cast<const T*>(p.residual);
    T* __restrict__ out = static_cast<T*>(p.out);
    constexpr int THREADS_PER_ROW = BN / VEC, ROWS_PER_PASS = Cfg::THREADS / THREADS_PER_ROW;
    const int col = (threadIdx.x % THREADS_PER_ROW) * VEC;
    const int64_t j0 = n0 + col;
    if (j0 >= p.cout) return;
    const bool full = j0 + VEC <= p.cout;
    float b[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v)
      b[v] = (bias != nullptr && j0 + v < p.cout) ? to_acc<float>(bias[(j0 + v) * p.bias_s]) : 0.f;

    // The residual's 16-byte vectors are requested for a batch of this thread's rows before
    // the first is used: BATCH loads in flight instead of one DRAM round trip per row (at most
    // 8 rows: 32 registers).
    constexpr int ROWS = BM / ROWS_PER_PASS, BATCH = ROWS < 8 ? ROWS : 8;
    const int r0 = threadIdx.x / THREADS_PER_ROW;
    const bool vec_res = res != nullptr && p.vec_res && full;
#pragma unroll
    for (int i0 = 0; i0 < ROWS; i0 += BATCH) {
      Vec rv[BATCH] = {};
      if (vec_res) {
#pragma unroll
        for (int i = 0; i < BATCH; ++i) {
          const int64_t ro = res_rows[r0 + (i0 + i) * ROWS_PER_PASS];
          if (ro >= 0) rv[i] = *reinterpret_cast<const Vec*>(res + ro + j0);  // vec_res: channel stride 1
        }
      }
#pragma unroll
      for (int i = 0; i < BATCH; ++i) {
        const int r = r0 + (i0 + i) * ROWS_PER_PASS;
        if (out_rows[r] < 0) break;  // past M (rows only grow)
        float y[VEC];
#pragma unroll
        for (int v = 0; v < VEC; v += 4) {
          const float4 c4 = *reinterpret_cast<const float4*>(&s.c[r * LDC + col + v]);
          y[v] = c4.x + b[v]; y[v + 1] = c4.y + b[v + 1]; y[v + 2] = c4.z + b[v + 2]; y[v + 3] = c4.w + b[v + 3];
        }
        if (vec_res) {
#pragma unroll
          for (int v = 0; v < VEC; ++v) y[v] += to_acc<float>(rv[i].v[v]);
        } else if (res != nullptr) {
          const T* rp = res + res_rows[r] + j0 * p.rs_c;
#pragma unroll
          for (int v = 0; v < VEC; ++v)
            if (j0 + v < p.cout) y[v] += to_acc<float>(rp[v * p.rs_c]);
        }
        if (p.relu) {
#pragma unroll
          for (int v = 0; v < VEC; ++v) y[v] = y[v] < 0.f ? 0.f : y[v];  // NaN stays NaN, as torch.relu
        }
        T* op = out + out_rows[r] + j0 * p.os_c;
        if (p.vec_out && full) {
          Vec ov;
#pragma unroll
          for (int v = 0; v < VEC; ++v) ov.v[v] = from_acc<T>(y[v]);
          store16(op, ov);
        } else {
#pragma unroll
          for (int v = 0; v < VEC; ++v)
            if (j0 + v < p.cout) op[v * p.os_c] = from_acc<T>(y[v]);
        }
      }
    }
  }
};

}  // namespace fastconv
