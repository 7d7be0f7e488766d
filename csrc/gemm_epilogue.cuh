// Epilogue of the 1x1 conv GEMM: fp32 accumulators -> shared memory (the mainloop's stages,
// now free) -> + bias + residual, ReLU, one rounding -> out.
// Staging through shared memory turns the mma's scattered fragment layout (each thread two
// adjacent columns of rows g and g + 8) into rows of vectors: a thread owns VEC consecutive
// columns (16 bytes of output) of a row, consecutive threads consecutive columns. The tile's
// columns are the axis along which out is contiguous in both layouts (output channels in NHWC,
// pixels in NCHW), so the stores are coalesced; the layout (gemm_layout.cuh) says where each
// row starts in out and residual, how many columns there are and whether the bias follows
// rows or columns. Where 16-byte accesses are not legal, 8-byte ones (two per vector), else
// scalar ones (a column tail, a strided or misaligned output).
#pragma once

#include "common.cuh"
#include "gemm_params.h"

namespace fastconv {

template <class Cfg>
struct Epilogue {
  using T = typename Cfg::T;
  static constexpr int BM = Cfg::BM, BN = Cfg::BN, VEC = Cfg::VEC, THREADS = Cfg::THREADS;
  // 8 floats of row padding: the float2 writes of a half warp (rows g = 0..3, 4 column pairs)
  // cover all 32 banks once.
  static constexpr int LDC = BN + 8;
  struct SharedStorage { alignas(16) float c[BM * LDC]; };
  struct alignas(16) Vec { T v[VEC]; };

  // Where column c of row r is staged. 16-bit outputs: a thread reads two float4 (its 8
  // columns), and the 8 threads of a quarter warp (one 128-bit shared-memory access phase)
  // would start 32 bytes apart: 2-way bank conflicts. Swapping the two float4 of every column
  // group whose bit 5 is set puts threads 4-7's first reads in the other 4 bank groups. The
  // float2 writes move inside their 8-column group only: still conflict-free.
  static __device__ __forceinline__ int c_offset(int r, int c) {
    return r * LDC + (VEC == 8 ? c ^ (((c >> 5) & 1) << 2) : c);
  }

  template <class Accum, class Tile>
  static __device__ __forceinline__ void run(const ConvGemmParams& p, SharedStorage& s, const Accum& acc,
                                             const Tile& tile) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int wm = warp % Cfg::WARPS_M, wn = warp / Cfg::WARPS_M;
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int mt = 0; mt < Cfg::MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < Cfg::NT; ++nt) {
        const int r = wm * Cfg::WM + mt * 16 + g, c = wn * Cfg::WN + nt * 8 + 2 * t;
        *reinterpret_cast<float2*>(&s.c[c_offset(r, c)]) = make_float2(acc[mt][nt][0], acc[mt][nt][1]);
        *reinterpret_cast<float2*>(&s.c[c_offset(r + 8, c)]) = make_float2(acc[mt][nt][2], acc[mt][nt][3]);
      }
    __syncthreads();

    const T* __restrict__ bias = static_cast<const T*>(p.bias);
    const T* __restrict__ res = static_cast<const T*>(p.residual);
    T* __restrict__ out = static_cast<T*>(p.out);
    constexpr int THREADS_PER_ROW = BN / VEC, ROWS_PER_PASS = THREADS / THREADS_PER_ROW;
    const int col = (threadIdx.x % THREADS_PER_ROW) * VEC;
    const int64_t j0 = tile.col0 + col;  // this thread's first column in the GEMM
    if (j0 >= tile.cols) return;
    const bool full = j0 + VEC <= tile.cols;
    const int vec_out = full ? p.vec_out : 0, vec_res = res != nullptr && full ? p.vec_res : 0;
    float b[VEC] = {};  // bias along columns (NHWC: output channels): loaded once
    if constexpr (!Tile::kBiasPerRow) {
#pragma unroll
      for (int v = 0; v < VEC; ++v)
        if (bias != nullptr && j0 + v < tile.cols) b[v] = to_acc<float>(bias[(j0 + v) * p.bias_s]);
    }

    // The residual's vectors are requested for a batch of this thread's rows before the first
    // is used: BATCH loads in flight instead of one DRAM round trip per row (at most 8 rows:
    // 32 registers).
    constexpr int ROWS = BM / ROWS_PER_PASS, BATCH = ROWS < 8 ? ROWS : 8;
    const int r0 = threadIdx.x / THREADS_PER_ROW;
#pragma unroll
    for (int i0 = 0; i0 < ROWS; i0 += BATCH) {
      Vec rv[BATCH] = {};
      if (vec_res != 0) {
#pragma unroll
        for (int i = 0; i < BATCH; ++i) {
          const int64_t ro = tile.res_row(r0 + (i0 + i) * ROWS_PER_PASS);
          if (ro >= 0) rv[i] = load_vec(res + ro + j0, vec_res);  // vec_res: column stride 1
        }
      }
#pragma unroll
      for (int i = 0; i < BATCH; ++i) {
        const int r = r0 + (i0 + i) * ROWS_PER_PASS;
        const int64_t oo = tile.out_row(r);
        if (oo < 0) break;  // past the last row (rows only grow)
        float y[VEC];
#pragma unroll
        for (int v = 0; v < VEC; v += 4) {
          const float4 c4 = *reinterpret_cast<const float4*>(&s.c[c_offset(r, col + v)]);
          y[v] = c4.x; y[v + 1] = c4.y; y[v + 2] = c4.z; y[v + 3] = c4.w;
        }
        if constexpr (Tile::kBiasPerRow) {  // NCHW: one output channel per row
          const float rb = bias != nullptr ? to_acc<float>(bias[tile.row_index(r) * p.bias_s]) : 0.f;
#pragma unroll
          for (int v = 0; v < VEC; ++v) y[v] += rb;
        } else {
#pragma unroll
          for (int v = 0; v < VEC; ++v) y[v] += b[v];
        }
        if (vec_res != 0) {
#pragma unroll
          for (int v = 0; v < VEC; ++v) y[v] += to_acc<float>(rv[i].v[v]);
        } else if (res != nullptr) {
          const T* rp = res + tile.res_row(r) + j0 * tile.res_cs;
#pragma unroll
          for (int v = 0; v < VEC; ++v)
            if (j0 + v < tile.cols) y[v] += to_acc<float>(rp[v * tile.res_cs]);
        }
        if (p.relu) {
#pragma unroll
          for (int v = 0; v < VEC; ++v) y[v] = y[v] < 0.f ? 0.f : y[v];  // NaN stays NaN, as torch.relu
        }
        T* op = out + oo + j0 * tile.out_cs;
        if (vec_out != 0) {
          Vec ov;
#pragma unroll
          for (int v = 0; v < VEC; ++v) ov.v[v] = from_acc<T>(y[v]);
          store_vec(op, ov, vec_out);  // vec_out: column stride 1
        } else {
#pragma unroll
          for (int v = 0; v < VEC; ++v)
            if (j0 + v < tile.cols) op[v * tile.out_cs] = from_acc<T>(y[v]);
        }
      }
    }
  }

 private:
  // One vector of VEC elements in one 16-byte access or two 8-byte ones (`bytes`, from the host).
  static __device__ __forceinline__ Vec load_vec(const T* p, int bytes) {
    Vec v;
    if (bytes == 16) {
      v = *reinterpret_cast<const Vec*>(p);
    } else {
      const uint2 lo = *reinterpret_cast<const uint2*>(p), hi = *reinterpret_cast<const uint2*>(p + VEC / 2);
      memcpy(&v, &lo, 8);
      memcpy(reinterpret_cast<char*>(&v) + 8, &hi, 8);
    }
    return v;
  }
  static __device__ __forceinline__ void store_vec(T* p, const Vec& v, int bytes) {
    if (bytes == 16) {
      store16(p, v);
    } else {
      uint2 lo, hi;
      memcpy(&lo, &v, 8);
      memcpy(&hi, reinterpret_cast<const char*>(&v) + 8, 8);
      store8(p, lo);
      store8(p + VEC / 2, hi);
    }
  }
};

}  // namespace fastconv
