// Mainloop of the 1x1 conv GEMM (sm80+): a STAGES-deep cp.async pipeline brings 128-byte K
// blocks of A (pixels, gathered) and B (weight rows) into swizzled shared memory; each warp
// reads its fragments with ldmatrix and accumulates with mma.sync in fp32 registers.
//
// Shared memory layout: a tile is [rows][8 chunks of 16 B]; chunk c of row r is stored at
// chunk c ^ (r % 8). ldmatrix reads 8 rows of one chunk at a time: the XOR spreads them over
// all 8 16-byte bank groups, so neither the cp.async writes nor the ldmatrix reads conflict,
// without padding.
// Bounds: rows past M or Cout, and K past Cin, are zero-filled by cp.async (src_bytes < 16),
// so tails cost no extra code path and add zeros to the accumulators.
#pragma once

#include <cstdint>

#include "gemm_params.h"
#include "mma_sm80.cuh"

namespace fastconv {

template <typename T_, int BM_, int BN_, int WARPS_M_, int WARPS_N_, int STAGES_, int BLOCKS_PER_SM_>
struct GemmConfig {
  using T = T_;
  static constexpr int BM = BM_, BN = BN_, WARPS_M = WARPS_M_, WARPS_N = WARPS_N_, STAGES = STAGES_;
  static constexpr int BLOCKS_PER_SM = BLOCKS_PER_SM_;
  static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
  static constexpr int ROW_BYTES = 128, CHUNKS = ROW_BYTES / 16;  // one K block per row
  static constexpr int VEC = 16 / sizeof(T);                      // elements per chunk
  static constexpr int BK = ROW_BYTES / sizeof(T);                // elements per K block
  static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;      // warp tile
  static constexpr int MT = WM / 16, NT = WN / 8;                 // mma tiles per warp
  static constexpr int KSTEPS = CHUNKS / 2;                       // mma K steps per K block
  static_assert(WM % 16 == 0 && WN % 16 == 0, "ldmatrix.x4 loads A 16 rows, B 16 columns at a time");
  static_assert((BM * CHUNKS) % THREADS == 0 && (BN * CHUNKS) % THREADS == 0, "whole chunks per thread");
};

template <class Cfg>
struct Mainloop {
  using T = typename Cfg::T;
  static constexpr int BM = Cfg::BM, BN = Cfg::BN, THREADS = Cfg::THREADS, CHUNKS = Cfg::CHUNKS;
  static constexpr int A_ITERS = BM * CHUNKS / THREADS, B_ITERS = BN * CHUNKS / THREADS;
  static constexpr int ROWS_PER_ITER = THREADS / CHUNKS;

  struct SharedStorage {
    alignas(128) unsigned char a[Cfg::STAGES][BM * Cfg::ROW_BYTES];
    alignas(128) unsigned char b[Cfg::STAGES][BN * Cfg::ROW_BYTES];
  };
  using Accum = float[Cfg::MT][Cfg::NT][4];

  static __device__ __forceinline__ uint32_t swizzle(int row, int chunk) {
    return row * Cfg::ROW_BYTES + ((chunk ^ (row & 7)) << 4);
  }

  // Producer state of one thread: it copies chunk `chunk` of rows row0 + i * ROWS_PER_ITER.
  // Its row pointers are computed once (the pixel gather), then only advance along K.
  const char* a_row[A_ITERS];
  const char* b_row[B_ITERS];
  int chunk;
  int64_t cin;
  const char* valid_src;  // any readable address, for cp.async copies of 0 bytes

  // x_rows: the tile's pixel offsets in x (TilePixels::x), -1 past M.
  __device__ __forceinline__ Mainloop(const ConvGemmParams& p, const int64_t* x_rows, int64_t n0) {
    const char* x = static_cast<const char*>(p.x);
    const char* w = static_cast<const char*>(p.w);
    chunk = threadIdx.x % CHUNKS;
    cin = p.cin;
    valid_src = x;
    const int row0 = threadIdx.x / CHUNKS;
#pragma unroll
    for (int i = 0; i < A_ITERS; ++i) {
      const int64_t off = x_rows[row0 + i * ROWS_PER_ITER];
      a_row[i] = off >= 0 ? x + off * int64_t(sizeof(T)) : nullptr;
    }
#pragma unroll
    for (int i = 0; i < B_ITERS; ++i) {
      const int64_t j = n0 + row0 + i * ROWS_PER_ITER;
      b_row[i] = j < p.cout ? w + j * p.w_o * int64_t(sizeof(T)) : nullptr;
    }
  }

  // Producer: K block kb of A and B into pipeline stage `stage` (one cp.async group).
  __device__ __forceinline__ void load(SharedStorage& s, int stage, int64_t kb) const {
    const int64_t k = kb * Cfg::BK + chunk * Cfg::VEC;  // first element of this thread's chunk
    const int64_t left = (cin - k) * int64_t(sizeof(T));
    const int bytes = left >= 16 ? 16 : (left > 0 ? static_cast<int>(left) : 0);
    const int64_t koff = k * int64_t(sizeof(T));
    const int row0 = threadIdx.x / CHUNKS;
#pragma unroll
    for (int i = 0; i < A_ITERS; ++i) {
      const bool ok = a_row[i] != nullptr && bytes > 0;
      cp_async_16(smem_addr(s.a[stage]) + swizzle(row0 + i * ROWS_PER_ITER, chunk),
                  ok ? a_row[i] + koff : valid_src, ok ? bytes : 0);
    }
#pragma unroll
    for (int i = 0; i < B_ITERS; ++i) {
      const bool ok = b_row[i] != nullptr && bytes > 0;
      cp_async_16(smem_addr(s.b[stage]) + swizzle(row0 + i * ROWS_PER_ITER, chunk),
                  ok ? b_row[i] + koff : valid_src, ok ? bytes : 0);
    }
  }

  // Consumer: the warp's MT x NT mma tiles over one K block in stage `stage`.
  static __device__ __forceinline__ void mma(const SharedStorage& s, int stage, Accum& acc) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int wm = warp % Cfg::WARPS_M, wn = warp / Cfg::WARPS_M;
    const uint32_t a_base = smem_addr(s.a[stage]), b_base = smem_addr(s.b[stage]);
    // ldmatrix.x4 lane roles. A (16 rows x 2 chunks): tiles = (rows 0-7, 8-15) x (chunk 0, 1)
    // in the order a0..a3 of the mma. B (16 columns x 2 chunks): tiles = (cols 0-7: chunk 0,
    // chunk 1), (cols 8-15: chunk 0, chunk 1), i.e. b0, b1 of two n8 tiles.
    const int a_ld_row = wm * Cfg::WM + (lane & 7) + ((lane >> 3) & 1) * 8, a_chunk = lane >> 4;
    const int b_ld_row = wn * Cfg::WN + (lane & 7) + (lane >> 4) * 8, b_chunk = (lane >> 3) & 1;
#pragma unroll
    for (int ks = 0; ks < Cfg::KSTEPS; ++ks) {
      uint32_t a[Cfg::MT][4], b[Cfg::NT][2];
#pragma unroll
      for (int mt = 0; mt < Cfg::MT; ++mt) {
        ldmatrix_x4(a[mt], a_base + swizzle(a_ld_row + mt * 16, 2 * ks + a_chunk));
#pragma unroll
        for (int r = 0; r < 4; ++r) Mma<T>::prepare(a[mt][r]);
      }
#pragma unroll
      for (int nt = 0; nt < Cfg::NT; nt += 2) {
        uint32_t r[4];
        ldmatrix_x4(r, b_base + swizzle(b_ld_row + nt * 8, 2 * ks + b_chunk));
#pragma unroll
        for (int q = 0; q < 4; ++q) Mma<T>::prepare(r[q]);
        b[nt][0] = r[0]; b[nt][1] = r[1]; b[nt + 1][0] = r[2]; b[nt + 1][1] = r[3];
      }
#pragma unroll
      for (int mt = 0; mt < Cfg::MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < Cfg::NT; ++nt) Mma<T>::run(acc[mt][nt], a[mt], b[nt]);
    }
  }

  // The pipeline: STAGES - 1 K blocks in flight while the warps multiply the oldest one.
  // One barrier per K block: it both publishes block kb (every thread waited for its own
  // copies) and retires the stage read in the previous iteration, which is refilled next.
  __device__ __forceinline__ void run(SharedStorage& s, Accum& acc) const {
    const int64_t kblocks = (cin + Cfg::BK - 1) / Cfg::BK;
#pragma unroll
    for (int st = 0; st < Cfg::STAGES - 1; ++st) {
      if (st < kblocks) load(s, st, st);
      cp_async_commit();  // empty groups keep the wait count uniform
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

}  // namespace fastconv
