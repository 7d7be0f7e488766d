// The compile-time numbers of one GEMM tile shape for one element type, from which every role
// (operand tiles, mainloop, epilogue) derives its loops. Counted in 16-byte chunks: a chunk is
// one ldmatrix row and one cp.async, 8 fp16/bf16 or 4 fp32 values; an mma K step is two chunks
// (32 bytes) for every type (m16n8k16 for 16-bit inputs, m16n8k8 for TF32).
#pragma once

#include "gemm_tile_size.h"

namespace fastconv {

template <typename T_, const TileShape& S>
struct GemmConfig {
  using T = T_;
  static constexpr int BM = S.bm, BN = S.bn, WARPS_M = S.warps_m, WARPS_N = S.warps_n, STAGES = S.stages;
  static constexpr int BLOCKS_PER_SM = S.blocks_per_sm, X_COPY_BYTES = S.x_copy_bytes;
  static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
  static constexpr int ROW_BYTES = 128, CHUNKS = ROW_BYTES / 16;  // one K block per K-major row
  static constexpr int VEC = 16 / sizeof(T);                      // elements per chunk
  static constexpr int BK = ROW_BYTES / sizeof(T);                // elements per K block
  static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;      // warp tile
  static constexpr int MT = WM / 16, NT = WN / 8;                 // mma tiles per warp
  static constexpr int KSTEPS = CHUNKS / 2;                       // mma K steps per K block
  static constexpr int KSTEP = 2 * VEC;                           // K elements per mma K step
  static_assert(WM % 16 == 0 && WN % 16 == 0, "ldmatrix.x4 loads A 16 rows, B 16 columns at a time");
  static_assert(STAGES >= 2, "the pipeline refills a stage while another is read");
};

}  // namespace fastconv
