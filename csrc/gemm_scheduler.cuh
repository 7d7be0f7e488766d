// Tile scheduler of the 1x1 conv GEMM: which (pixel block, channel block) tile a CUDA block
// computes. Grouped ("swizzled") order, as in Triton's matmul tutorial: consecutive blocks walk
// the channel blocks of GROUP_M pixel blocks before moving on, so the blocks resident at one
// time share their A rows (the activations, the big operand) and B (the weight) in L2:
// each activation byte comes from DRAM about once however many channel blocks read it.
#pragma once

#include <cstdint>

#include "gemm_params.h"

namespace fastconv {

template <int BM, int BN, int GROUP_M = 8>
struct GroupedTileScheduler {
  struct Params { int num_m, num_n; };
  struct Work { int m_block, n_block; };

  static Params to_params(int64_t M, int64_t N) {
    return {static_cast<int>((M + BM - 1) / BM), static_cast<int>((N + BN - 1) / BN)};
  }
  // One block per tile, a 1-D grid (no 65535 limit on the pixel blocks).
  static int64_t num_tiles(const Params& p) { return int64_t(p.num_m) * p.num_n; }
  static dim3 get_grid_shape(const Params& p) { return dim3(static_cast<unsigned>(num_tiles(p))); }

  static __device__ __forceinline__ Work get_work(const Params& p, int tile) {
    const int tiles_per_group = GROUP_M * p.num_n;
    const int first_m = (tile / tiles_per_group) * GROUP_M;
    const int group_m = min(p.num_m - first_m, GROUP_M);  // the last group may be short
    const int in_group = tile % tiles_per_group;
    return {first_m + in_group % group_m, in_group / group_m};
  }
};

// The element offsets of a tile's BM pixels in x (the gather of A rows, stride included), out
// and residual; -1 past M. Filled once per block by all threads (one pixel decomposition, i.e.
// a few 64-bit divisions, per row instead of one per row per thread in the mainloop and the
// epilogue), read after a barrier.
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

}  // namespace fastconv
