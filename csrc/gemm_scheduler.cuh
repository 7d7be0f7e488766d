// Tile schedulers of the 1x1 conv GEMM: which tile a CUDA block computes (one block per tile,
// a 1-D grid: no 65535 limit). Each keeps the blocks resident at one time on the same slice of
// the big operand, the activations, so that DRAM sees each activation byte about once however
// many output-channel blocks read it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastconv {

// NHWC: grouped ("swizzled") order, as in Triton's matmul tutorial: consecutive blocks walk
// the channel blocks of GROUP_M pixel blocks before moving on, so resident blocks share their
// A rows (activations) and B (the weight) in L2.
template <int BM, int BN, int GROUP_M = 8>
struct GroupedTileScheduler {
  struct Params { int num_m, num_n; };
  struct Work { int m_block, n_block; };

  static Params to_params(int64_t M, int64_t N) {
    return {static_cast<int>((M + BM - 1) / BM), static_cast<int>((N + BN - 1) / BN)};
  }
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

// NCHW (one image per tile): output-channel blocks fastest, so the blocks resident together
// read the same pixel block of x[n].
template <int BM, int BN>
struct NchwScheduler {
  struct Params { int num_j, num_p, images; };
  struct Work { int j_block, p_block, n; };

  static Params to_params(int64_t cout, int64_t pixels, int64_t images) {
    return {static_cast<int>((cout + BM - 1) / BM), static_cast<int>((pixels + BN - 1) / BN),
            static_cast<int>(images)};
  }
  static int64_t num_tiles(const Params& p) { return int64_t(p.num_j) * p.num_p * p.images; }
  static dim3 get_grid_shape(const Params& p) { return dim3(static_cast<unsigned>(num_tiles(p))); }
  static __device__ __forceinline__ Work get_work(const Params& p, int tile) {
    const int rest = tile / p.num_j;
    return {tile % p.num_j, rest % p.num_p, rest / p.num_p};
  }
};

}  // namespace fastconv
