// The 1x1 conv GEMM for dense NCHW 16-bit inputs (stride 1), per image n:
//   out[n][j][p] = [relu](sum_k w[j][k] * x[n][k][p] + bias[j] + residual[n][j][p]),
// p = oh * W + ow a pixel. Rows are output channels (A = weight, K-major as in the NHWC GEMM),
// columns are pixels (B = x[n], pixel-major: K rows of contiguous pixels). B is stored in shared
// memory as it lies in DRAM, [64 K rows][BN pixels], and read with ldmatrix.trans, which
// transposes each 8x8 tile into the mma's B fragment; so NCHW needs no copy and no gather.
// The output tile [Cout rows][pixels] is contiguous along pixels in NCHW: 16-byte stores.
// Scheduler: output-channel blocks fastest, so the blocks resident together read the same
// x[n] pixel block (the big operand) and DRAM sees it about once.
#pragma once

#include "common.cuh"
#include "gemm_mainloop.cuh"

namespace fastconv {

template <class Cfg>
struct NchwScheduler {
  struct Params { int num_j, num_p, images; };
  struct Work { int j_block, p_block, n; };

  static Params to_params(int64_t cout, int64_t pixels, int64_t images) {
    return {static_cast<int>((cout + Cfg::BM - 1) / Cfg::BM), static_cast<int>((pixels + Cfg::BN - 1) / Cfg::BN),
            static_cast<int>(images)};
  }
  static int64_t num_tiles(const Params& p) { return int64_t(p.num_j) * p.num_p * p.images; }
  static dim3 get_grid_shape(const Params& p) { return dim3(static_cast<unsigned>(num_tiles(p))); }
  static __device__ __forceinline__ Work get_work(const Params& p, int tile) {
    const int rest = tile / p.num_j;
    return {tile % p.num_j, rest % p.num_p, rest / p.num_p};
  }
};

template <class Cfg>
struct MainloopNchw {
  using T = typename Cfg::T;
  static_assert(sizeof(T) == 2, "ldmatrix.trans moves 16-bit elements");
  static constexpr int BM = Cfg::BM, BN = Cfg::BN, THREADS = Cfg::THREADS;
  static constexpr int BK = Cfg::BK;                       // 64 K per block
  static constexpr int A_CHUNKS = 8, B_CHUNKS = BN / 8;    // 16-byte chunks per smem row
  static constexpr int A_ITERS = BM * A_CHUNKS / THREADS, B_ITERS = BK * B_CHUNKS / THREADS;
  static constexpr int B_ROW_BYTES = BN * 2;
  static_assert(B_CHUNKS % 8 == 0 && (BK * B_CHUNKS) % THREADS == 0, "whole swizzle rows, whole chunks");

  struct SharedStorage {
    alignas(128) unsigned char a[Cfg::STAGES][BM * 128];
    alignas(128) unsigned char b[Cfg::STAGES][BK * B_ROW_BYTES];
  };
  using Accum = float[Cfg::MT][Cfg::NT][4];

  // chunk c of row r at chunk c ^ (r % 8): 8 consecutive rows of one chunk (an ldmatrix tile,
  // or 8 cp.async) fall in 8 different 16-byte bank groups.
  static __device__ __forceinline__ uint32_t swizzle(int row, int chunk, int row_bytes) {
    return row * row_bytes + ((chunk ^ (row & 7)) << 4);
  }

  const char* w_row[A_ITERS];  // weight row j0 + r, null past Cout
  const char* x_col;           // x[n][0][p0 + this thread's chunk]
  int b_bytes;                 // bytes of this thread's pixel chunk inside the image (0..16)
  int64_t cin, xs_c;

  __device__ __forceinline__ MainloopNchw(const ConvGemmParams& p, int64_t j0, int64_t p0, int64_t n) {
    const char* w = static_cast<const char*>(p.w);
#pragma unroll
    for (int i = 0; i < A_ITERS; ++i) {
      const int64_t j = j0 + threadIdx.x / A_CHUNKS + i * (THREADS / A_CHUNKS);
      w_row[i] = j < p.cout ? w + j * p.w_o * 2 : nullptr;
    }
    const int64_t pix = p0 + (threadIdx.x % B_CHUNKS) * 8, left = (p.OH * p.OW - pix) * 2;
    b_bytes = left >= 16 ? 16 : (left > 0 ? static_cast<int>(left) : 0);
    x_col = static_cast<const char*>(p.x) + (n * p.xs_n + (b_bytes > 0 ? pix : 0)) * 2;
    cin = p.cin;
    xs_c = p.xs_c;
  }

  __device__ __forceinline__ void load(SharedStorage& s, int stage, int64_t kb) const {
    const int a_chunk = threadIdx.x % A_CHUNKS;
    const int64_t k = kb * BK + a_chunk * 8, left = (cin - k) * 2;
    const int a_bytes = left >= 16 ? 16 : (left > 0 ? static_cast<int>(left) : 0);
#pragma unroll
    for (int i = 0; i < A_ITERS; ++i) {
      const int r = threadIdx.x / A_CHUNKS + i * (THREADS / A_CHUNKS);
      const bool ok = w_row[i] != nullptr && a_bytes > 0;
      cp_async_16(smem_addr(s.a[stage]) + swizzle(r, a_chunk, 128), ok ? w_row[i] + k * 2 : x_col,
                  ok ? a_bytes : 0);
    }
    const int b_chunk = threadIdx.x % B_CHUNKS;
#pragma unroll
    for (int i = 0; i < B_ITERS; ++i) {
      const int r = threadIdx.x / B_CHUNKS + i * (THREADS / B_CHUNKS);
      const int64_t kr = kb * BK + r;  // input channel of this smem row
      const bool ok = kr < cin && b_bytes > 0;
      cp_async_16(smem_addr(s.b[stage]) + swizzle(r, b_chunk, B_ROW_BYTES), ok ? x_col + kr * xs_c * 2 : x_col,
                  ok ? b_bytes : 0);
    }
  }

  static __device__ __forceinline__ void mma(const SharedStorage& s, int stage, Accum& acc) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int wm = warp % Cfg::WARPS_M, wn = warp / Cfg::WARPS_M;
    const uint32_t a_base = smem_addr(s.a[stage]), b_base = smem_addr(s.b[stage]);
    // A as in the NHWC mainloop. B (ldmatrix.trans): tiles = (K rows 0-7, 8-15) x (pixels 0-7,
    // 8-15) in the order b0, b1 of the first n8 tile, b0, b1 of the second.
    const int a_ld_row = wm * Cfg::WM + (lane & 7) + ((lane >> 3) & 1) * 8, a_chunk = lane >> 4;
    const int b_ld_row = (lane & 7) + ((lane >> 3) & 1) * 8, b_chunk = (wn * Cfg::WN) / 8 + (lane >> 4);
#pragma unroll
    for (int ks = 0; ks < Cfg::KSTEPS; ++ks) {
      uint32_t a[Cfg::MT][4], b[Cfg::NT][2];
#pragma unroll
      for (int mt = 0; mt < Cfg::MT; ++mt)
        ldmatrix_x4(a[mt], a_base + swizzle(a_ld_row + mt * 16, 2 * ks + a_chunk, 128));
#pragma unroll
      for (int nt = 0; nt < Cfg::NT; nt += 2) {
        uint32_t r[4];
        ldmatrix_x4_trans(r, b_base + swizzle(16 * ks + b_ld_row, b_chunk + nt, B_ROW_BYTES));
        b[nt][0] = r[0]; b[nt][1] = r[1]; b[nt + 1][0] = r[2]; b[nt + 1][1] = r[3];
      }
#pragma unroll
      for (int mt = 0; mt < Cfg::MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < Cfg::NT; ++nt) Mma<T>::run(acc[mt][nt], a[mt], b[nt]);
    }
  }

  // The same pipeline as the NHWC mainloop (gemm_mainloop.cuh).
  __device__ __forceinline__ void run(SharedStorage& s, Accum& acc) const {
    const int64_t kblocks = (cin + BK - 1) / BK;
#pragma unroll
    for (int st = 0; st < Cfg::STAGES - 1; ++st) {
      if (st < kblocks) load(s, st, st);
      cp_async_commit();
    }
    for (int64_t kb = 0; kb < kblocks; ++kb) {
      cp_async_wait<Cfg::STAGES - 2>();
      __syncthreads();
      const int64_t next = kb + Cfg::STAGES - 1;
      if (next < kblocks) load(s, static_cast<int>(next % Cfg::STAGES), next);
      cp_async_commit();
      mma(s, static_cast<int>(kb % Cfg::STAGES), acc);
    }
    cp_async_wait<0>();
  }
};

// Accumulators -> shared memory -> per thread 8 consecutive pixels of one output channel:
// + bias[j] + residual, ReLU, one rounding, one 16-byte store (scalar at the image's pixel tail
// or where out / residual rows are not 16-byte aligned).
template <class Cfg>
struct EpilogueNchw {
  using T = typename Cfg::T;
  static constexpr int BM = Cfg::BM, BN = Cfg::BN, VEC = 8, LDC = BN + 8;
  struct SharedStorage { alignas(16) float c[BM * LDC]; };
  struct alignas(16) Vec { T v[VEC]; };

  template <class Accum>
  static __device__ __forceinline__ void run(const ConvGemmParams& p, SharedStorage& s, const Accum& acc,
                                             int64_t j0, int64_t p0, int64_t n) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int wm = warp % Cfg::WARPS_M, wn = warp / Cfg::WARPS_M, g = lane / 4, t = lane % 4;
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
    const int64_t pix = p0 + col, pixels = p.OH * p.OW;
    if (pix >= pixels) return;
    const bool full = pix + VEC <= pixels;
    for (int r = threadIdx.x / THREADS_PER_ROW; r < BM; r += ROWS_PER_PASS) {
      const int64_t j = j0 + r;
      if (j >= p.cout) break;
      const float b = bias != nullptr ? to_acc<float>(bias[j * p.bias_s]) : 0.f;
      float y[VEC];
#pragma unroll
      for (int v = 0; v < VEC; v += 4) {
        const float4 c4 = *reinterpret_cast<const float4*>(&s.c[r * LDC + col + v]);
        y[v] = c4.x + b; y[v + 1] = c4.y + b; y[v + 2] = c4.z + b; y[v + 3] = c4.w + b;
      }
      if (res != nullptr) {
        const T* rp = res + n * p.rs_n + j * p.rs_c + pix;
        if (p.vec_res && full) {
          const Vec rv = *reinterpret_cast<const Vec*>(rp);
#pragma unroll
          for (int v = 0; v < VEC; ++v) y[v] += to_acc<float>(rv.v[v]);
        } else {
#pragma unroll
          for (int v = 0; v < VEC; ++v)
            if (pix + v < pixels) y[v] += to_acc<float>(rp[v]);
        }
      }
      if (p.relu) {
#pragma unroll
        for (int v = 0; v < VEC; ++v) y[v] = y[v] < 0.f ? 0.f : y[v];  // NaN stays NaN, as torch.relu
      }
      T* op = out + n * p.os_n + j * p.os_c + pix;
      if (p.vec_out && full) {
        Vec ov;
#pragma unroll
        for (int v = 0; v < VEC; ++v) ov.v[v] = from_acc<T>(y[v]);
        store16(op, ov);
      } else {
#pragma unroll
        for (int v = 0; v < VEC; ++v)
          if (pix + v < pixels) op[v] = from_acc<T>(y[v]);
      }
    }
  }
};

}  // namespace fastconv
