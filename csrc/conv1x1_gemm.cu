// The tensor-core 1x1 conv kernel: scheduler + mainloop + epilogue (see gemm_*.cuh), one
// CUDA block per output tile, and its host-side launch.
// Napkin math (bf16, batch 128, per output pixel): 2*Cin bytes of x read + 2*Cout written
// (+ 2*Cout residual read), 2*Cin*Cout FLOPs. 256x56x56 -> 64: 640 B, 32 KFLOP = 51 FLOP/B,
// memory-bound (H100 ridge ~266): the target is DRAM speed, which the grouped tile order
// (A read once) and the fused epilogue (no second pass) give. 2048x7x7 -> 512: 5 KB,
// 2 MFLOP = 400 FLOP/B, compute-bound: the target is mma throughput.
#include <atomic>

#include "conv1x1_gemm.h"
#include "gemm_epilogue.cuh"
#include "gemm_mainloop.cuh"
#include "gemm_scheduler.cuh"

namespace fastconv {
namespace {

template <class Cfg>
struct KernelStorage {
  union {  // the epilogue's C tile reuses the mainloop's pipeline stages
    typename Mainloop<Cfg>::SharedStorage mainloop;
    typename Epilogue<Cfg>::SharedStorage epilogue;
  };
  TilePixels<Cfg::BM> pixels;
};

template <class Cfg>
using Scheduler = GroupedTileScheduler<Cfg::BM, Cfg::BN>;

// Registers capped so that the blocks the shared memory allows per SM (gemm_tile_size.h) fit.
template <class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS, Cfg::BLOCKS_PER_SM)
    conv1x1_mma(const ConvGemmParams p, const typename Scheduler<Cfg>::Params sched) {
  extern __shared__ __align__(128) unsigned char smem[];
  KernelStorage<Cfg>& storage = *reinterpret_cast<KernelStorage<Cfg>*>(smem);
  const auto work = Scheduler<Cfg>::get_work(sched, blockIdx.x);
  const int64_t m0 = int64_t(work.m_block) * Cfg::BM, n0 = int64_t(work.n_block) * Cfg::BN;

  storage.pixels.fill(p, m0);
  __syncthreads();
  typename Mainloop<Cfg>::Accum acc = {};
  const Mainloop<Cfg> mainloop(p, storage.pixels.x, n0);
  mainloop.run(storage.mainloop, acc);
  __syncthreads();  // every warp has read its last stage: the stages become the C tile
  Epilogue<Cfg>::run(p, storage.epilogue, acc, storage.pixels.out, storage.pixels.res, n0);
}

template <typename T, const TileShape& S>
using ConfigOf = GemmConfig<T, S.bm, S.bn, S.warps_m, S.warps_n, S.stages, S.blocks_per_sm>;

// Above 48 KB, dynamic shared memory needs an opt-in per kernel and device: set once per
// device (the value never changes, so the flag cannot go stale), not on every launch.
template <class Cfg>
cudaError_t allow_shared_memory(int device, int bytes) {
  static std::atomic<uint64_t> done{0};
  const uint64_t bit = device < 64 ? uint64_t(1) << device : 0;
  if (bit != 0 && (done.load(std::memory_order_relaxed) & bit) != 0) return cudaSuccess;
  const cudaError_t err = cudaFuncSetAttribute(conv1x1_mma<Cfg>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err == cudaSuccess) done.fetch_or(bit, std::memory_order_relaxed);
  return err;
}

template <class Cfg>
cudaError_t launch(const ConvGemmParams& p, int device, cudaStream_t stream) {
  const auto sched = Scheduler<Cfg>::to_params(p.M, p.cout);
  constexpr int smem = sizeof(KernelStorage<Cfg>);
  static_assert(Cfg::BLOCKS_PER_SM * (smem + 1024) <= 228 * 1024, "blocks_per_sm blocks must fit an sm90 SM");
  const cudaError_t err = allow_shared_memory<Cfg>(device, smem);
  if (err != cudaSuccess) return err;
  conv1x1_mma<Cfg><<<Scheduler<Cfg>::get_grid_shape(sched), Cfg::THREADS, smem, stream>>>(p, sched);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_tile(const ConvGemmParams& p, TileKind tile, int device, cudaStream_t stream) {
  switch (tile) {
    case TileKind::large: return launch<ConfigOf<T, kTileLarge>>(p, device, stream);
    case TileKind::narrow: return launch<ConfigOf<T, kTileNarrow>>(p, device, stream);
    case TileKind::small_m: return launch<ConfigOf<T, kTileSmallM>>(p, device, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

bool conv1x1_gemm_supported(const ConvGemmParams& p, DType dtype, bool tf32) {
  if (!(dtype == DType::f16 || dtype == DType::bf16 || (dtype == DType::f32 && tf32))) return false;
  const int64_t vec = 16 / dtype_size(dtype);
  const int64_t pixels = p.OH * p.OW, N = pixels > 0 ? p.M / pixels : 0;
  const bool x_rows = (p.xs_c == 1 || p.cin == 1) && aligned16(p.x) && multiple_of(p.xs_n, N, vec) &&
                      multiple_of(p.xs_h * p.stride, p.OH, vec) && multiple_of(p.xs_w * p.stride, p.OW, vec);
  const bool w_rows = (p.w_i == 1 || p.cin == 1) && aligned16(p.w) && multiple_of(p.w_o, p.cout, vec);
  const int64_t tiles = ((p.M + 63) / 64) * ((p.cout + 63) / 64);  // the most any tile shape launches
  return x_rows && w_rows && tiles < (int64_t(1) << 31);
}

cudaError_t conv1x1_gemm(const ConvGemmParams& p, DType dtype, TileKind tile, int device, cudaStream_t stream) {
  switch (dtype) {
    case DType::f16: return launch_tile<__half>(p, tile, device, stream);
    case DType::bf16: return launch_tile<__nv_bfloat16>(p, tile, device, stream);
    case DType::f32: return launch_tile<float>(p, tile, device, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace fastconv
