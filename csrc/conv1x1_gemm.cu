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
#include "gemm_nchw.cuh"
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

template <class Cfg>
union NchwStorage {  // the epilogue's C tile reuses the mainloop's pipeline stages
  typename MainloopNchw<Cfg>::SharedStorage mainloop;
  typename EpilogueNchw<Cfg>::SharedStorage epilogue;
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS, Cfg::BLOCKS_PER_SM)
    conv1x1_mma_nchw(const ConvGemmParams p, const typename NchwScheduler<Cfg>::Params sched) {
  extern __shared__ __align__(128) unsigned char smem[];
  NchwStorage<Cfg>& storage = *reinterpret_cast<NchwStorage<Cfg>*>(smem);
  const auto work = NchwScheduler<Cfg>::get_work(sched, blockIdx.x);
  const int64_t j0 = int64_t(work.j_block) * Cfg::BM, p0 = int64_t(work.p_block) * Cfg::BN;

  typename MainloopNchw<Cfg>::Accum acc = {};
  const MainloopNchw<Cfg> mainloop(p, j0, p0, work.n);
  mainloop.run(storage.mainloop, acc);
  __syncthreads();  // every warp has read its last stage: the stages become the C tile
  EpilogueNchw<Cfg>::run(p, storage.epilogue, acc, j0, p0, work.n);
}

template <typename T, const TileShape& S>
using ConfigOf = GemmConfig<T, S.bm, S.bn, S.warps_m, S.warps_n, S.stages, S.blocks_per_sm>;

// Above 48 KB, dynamic shared memory needs an opt-in per kernel and device: set once per
// device (the value never changes, so the flag cannot go stale), not on every launch.
template <auto Kernel>
cudaError_t allow_shared_memory(int device, int bytes) {
  static std::atomic<uint64_t> done{0};
  const uint64_t bit = device < 64 ? uint64_t(1) << device : 0;
  if (bit != 0 && (done.load(std::memory_order_relaxed) & bit) != 0) return cudaSuccess;
  const cudaError_t err = cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err == cudaSuccess) done.fetch_or(bit, std::memory_order_relaxed);
  return err;
}

template <class Cfg>
cudaError_t launch(const ConvGemmParams& p, int device, cudaStream_t stream) {
  const auto sched = Scheduler<Cfg>::to_params(p.M, p.cout);
  constexpr int smem = sizeof(KernelStorage<Cfg>);
  static_assert(Cfg::BLOCKS_PER_SM * (smem + 1024) <= 228 * 1024, "blocks_per_sm blocks must fit an sm90 SM");
  const cudaError_t err = allow_shared_memory<conv1x1_mma<Cfg>>(device, smem);
  if (err != cudaSuccess) return err;
  conv1x1_mma<Cfg><<<Scheduler<Cfg>::get_grid_shape(sched), Cfg::THREADS, smem, stream>>>(p, sched);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_nchw(const ConvGemmParams& p, int device, cudaStream_t stream) {
  using Cfg = ConfigOf<T, kTileNchw>;
  const auto sched = NchwScheduler<Cfg>::to_params(p.cout, p.OH * p.OW, p.M / (p.OH * p.OW));
  constexpr int smem = sizeof(NchwStorage<Cfg>);
  static_assert(Cfg::BLOCKS_PER_SM * (smem + 1024) <= 228 * 1024, "blocks_per_sm blocks must fit an sm90 SM");
  const cudaError_t err = allow_shared_memory<conv1x1_mma_nchw<Cfg>>(device, smem);
  if (err != cudaSuccess) return err;
  conv1x1_mma_nchw<Cfg><<<NchwScheduler<Cfg>::get_grid_shape(sched), Cfg::THREADS, smem, stream>>>(p, sched);
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

bool conv1x1_gemm_nchw_supported(const ConvGemmParams& p, DType dtype) {
  if (!(dtype == DType::f16 || dtype == DType::bf16) || p.stride != 1 || p.OH * p.OW == 0) return false;
  const int64_t N = p.M / (p.OH * p.OW);
  // pixels contiguous (p = oh * W + ow is the element offset) in x, out and residual
  const auto flat = [&](int64_t st_h, int64_t st_w) {
    return (p.OW == 1 || st_w == 1) && (p.OH == 1 || st_h == (p.OW == 1 ? 1 : p.OW));
  };
  const bool x_rows = aligned16(p.x) && flat(p.xs_h, p.xs_w) && multiple_of(p.xs_n, N, 8) &&
                      multiple_of(p.xs_c, p.cin, 8);
  const bool w_rows = (p.w_i == 1 || p.cin == 1) && aligned16(p.w) && multiple_of(p.w_o, p.cout, 8);
  const bool outs = flat(p.os_h, p.os_w) && (p.residual == nullptr || flat(p.rs_h, p.rs_w));
  return x_rows && w_rows && outs && N * ((p.cout + 127) / 128) * ((p.OH * p.OW + 127) / 128) < (int64_t(1) << 31);
}

cudaError_t conv1x1_gemm_nchw(const ConvGemmParams& p, DType dtype, int device, cudaStream_t stream) {
  // 16-byte epilogue accesses along pixels: aligned base, image and channel strides
  ConvGemmParams q = p;
  const int64_t N = p.M / (p.OH * p.OW);
  const auto vectorizable = [&](const void* ptr, int64_t s_n, int64_t s_c) {
    return aligned16(ptr) && multiple_of(s_n, N, 8) && multiple_of(s_c, p.cout, 8);
  };
  q.vec_out = vectorizable(p.out, p.os_n, p.os_c);
  q.vec_res = p.residual != nullptr && vectorizable(p.residual, p.rs_n, p.rs_c);
  switch (dtype) {
    case DType::f16: return launch_nchw<__half>(q, device, stream);
    case DType::bf16: return launch_nchw<__nv_bfloat16>(q, device, stream);
    default: return cudaErrorInvalidValue;
  }
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
