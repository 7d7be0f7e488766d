// The tensor-core 1x1 conv kernel: one kernel template for both layouts, a policy
// (gemm_layout.cuh) choosing its scheduler and operand tiles; mainloop (gemm_mainloop.cuh) and
// epilogue (gemm_epilogue.cuh) share shared memory through a union. One CUDA block per output
// tile. And its host-side checks and launch.
// Napkin math (bf16, batch 128, per output pixel): 2*Cin bytes of x read + 2*Cout written
// (+ 2*Cout residual read), 2*Cin*Cout FLOPs. 256x56x56 -> 64: 640 B, 32 KFLOP = 51 FLOP/B,
// memory-bound (H100 ridge ~266): the target is DRAM speed, which the tile order (A read once)
// and the fused epilogue (no second pass) give. 2048x7x7 -> 512: 5 KB, 2 MFLOP = 400 FLOP/B,
// compute-bound: the target is mma throughput.
#include <atomic>

#include "conv1x1_gemm.h"
#include "gemm_config.h"
#include "gemm_epilogue.cuh"
#include "gemm_layout.cuh"
#include "gemm_mainloop.cuh"

namespace fastconv {
namespace {

template <class Cfg, class Tile>
using MainloopOf = Mainloop<Cfg, typename Tile::ATile, typename Tile::BTile>;

template <class Cfg, class Tile>
struct KernelStorage {
  union {  // the epilogue's C tile reuses the mainloop's pipeline stages
    typename MainloopOf<Cfg, Tile>::SharedStorage mainloop;
    typename Epilogue<Cfg>::SharedStorage epilogue;
  };
  typename Tile::SharedStorage tile;  // NHWC: the tile's pixel offsets
};

// Registers capped so that the blocks the shared memory allows per SM (gemm_tile_size.h) fit.
template <class Cfg, template <class> class Layout>
__global__ void __launch_bounds__(Cfg::THREADS, Cfg::BLOCKS_PER_SM)
    conv1x1_mma(const ConvGemmParams p, const typename Layout<Cfg>::Scheduler::Params sched) {
  using Tile = Layout<Cfg>;
  using Main = MainloopOf<Cfg, Tile>;
  extern __shared__ __align__(128) unsigned char smem[];
  KernelStorage<Cfg, Tile>& storage = *reinterpret_cast<KernelStorage<Cfg, Tile>*>(smem);
  const Tile tile(p, sched, storage.tile);
  __syncthreads();  // the tile's pixel offsets are in shared memory
  typename Main::Accum acc = {};
  Main::run(storage.mainloop, tile.a(p), tile.b(p), p.cin, acc);
  __syncthreads();  // every warp has read its last stage: the stages become the C tile
  Epilogue<Cfg>::run(p, storage.epilogue, acc, tile);
}

// Above 48 KB, dynamic shared memory needs an opt-in per kernel and device. It is set on the
// first launch on a device and remembered, not asked again on every launch (a driver call on
// the host path). A device reset forgets it on the device's side: the next launch is then
// refused (invalid value), and launch() sets it `again` and retries once.
template <auto Kernel>
cudaError_t allow_shared_memory(int device, int bytes, bool again) {
  static std::atomic<uint64_t> done{0};
  const uint64_t bit = device < 64 ? uint64_t(1) << device : 0;
  if (again) done.fetch_and(~bit, std::memory_order_relaxed);
  else if (bit != 0 && (done.load(std::memory_order_relaxed) & bit) != 0) return cudaSuccess;
  const cudaError_t err = cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err == cudaSuccess) done.fetch_or(bit, std::memory_order_relaxed);
  return err;
}

template <class Cfg, template <class> class Layout>
cudaError_t launch(const ConvGemmParams& p, int device, cudaStream_t stream) {
  using Tile = Layout<Cfg>;
  const auto sched = Tile::schedule(p);
  constexpr int smem = sizeof(KernelStorage<Cfg, Tile>);
  static_assert(Cfg::BLOCKS_PER_SM * (smem + 1024) <= 228 * 1024, "blocks_per_sm blocks must fit an sm90 SM");
  cudaError_t err = cudaSuccess;
  for (int attempt = 0; attempt < 2; ++attempt) {
    err = allow_shared_memory<conv1x1_mma<Cfg, Layout>>(device, smem, attempt > 0);
    if (err != cudaSuccess) return err;
    conv1x1_mma<Cfg, Layout><<<Tile::Scheduler::get_grid_shape(sched), Cfg::THREADS, smem, stream>>>(p, sched);
    err = cudaGetLastError();
    if (err != cudaErrorInvalidValue) break;
  }
  return err;
}

template <typename T>
cudaError_t launch_tile(const ConvGemmParams& p, TileKind tile, int device, cudaStream_t stream) {
  switch (tile) {
    case TileKind::large: return launch<GemmConfig<T, kTileLarge>, NhwcLayout>(p, device, stream);
    case TileKind::narrow: return launch<GemmConfig<T, kTileNarrow>, NhwcLayout>(p, device, stream);
    case TileKind::small_m: return launch<GemmConfig<T, kTileSmallM>, NhwcLayout>(p, device, stream);
  }
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t launch_nchw(const ConvGemmParams& p, int copy_bytes, int device, cudaStream_t stream) {
  return copy_bytes == 16 ? launch<GemmConfig<T, kTileNchw>, NchwLayout>(p, device, stream)
                          : launch<GemmConfig<T, kTileNchw8>, NchwLayout>(p, device, stream);
}

}  // namespace

bool conv1x1_gemm_supported(const ConvGemmParams& p, DType dtype, bool tf32) {
  if (!(dtype == DType::f16 || dtype == DType::bf16 || (dtype == DType::f32 && tf32))) return false;
  const int64_t vec = 16 / dtype_size(dtype);
  const int64_t pixels = p.OH * p.OW, N = pixels > 0 ? p.M / pixels : 0;
  const bool x_rows = (p.xs_c == 1 || p.cin == 1) && aligned16(p.x) && multiple_of(p.xs_n, N, vec) &&
                      multiple_of(p.xs_h * p.stride, p.OH, vec) && multiple_of(p.xs_w * p.stride, p.OW, vec);
  const bool w_rows = (p.w_i == 1 || p.cin == 1) && aligned16(p.w) && multiple_of(p.w_o, p.cout, vec);
  const bool k_bytes_32bit = p.cin * dtype_size(dtype) < (int64_t(1) << 31) - 128;  // the load path's K offsets
  const int64_t tiles = ((p.M + 63) / 64) * ((p.cout + 63) / 64);  // the most any tile shape launches
  return x_rows && w_rows && k_bytes_32bit && tiles < (int64_t(1) << 31);
}

int conv1x1_gemm_nchw_copy_bytes(const ConvGemmParams& p, DType dtype) {
  if (!(dtype == DType::f16 || dtype == DType::bf16) || p.stride != 1 || p.OH * p.OW == 0) return 0;
  const int64_t pixels = p.OH * p.OW, N = p.M / pixels;
  // pixels contiguous (p = oh * W + ow is the element offset) in x, out and residual
  const auto flat = [&](int64_t st_h, int64_t st_w) {
    return (p.OW == 1 || st_w == 1) && (p.OH == 1 || st_h == (p.OW == 1 ? 1 : p.OW));
  };
  const bool w_rows = (p.w_i == 1 || p.cin == 1) && aligned16(p.w) && multiple_of(p.w_o, p.cout, 8);
  const bool outs = flat(p.os_h, p.os_w) && (p.residual == nullptr || flat(p.rs_h, p.rs_w));
  const bool fits = N * ((p.cout + 127) / 128) * ((pixels + 127) / 128) < (int64_t(1) << 31) &&
                    p.cin * 2 < (int64_t(1) << 31) - 128;  // the load path's 32-bit K offsets
  if (!(flat(p.xs_h, p.xs_w) && w_rows && outs && fits)) return 0;
  // x's channel planes: 16-byte copies where they are 16-byte aligned (H x W a multiple of 8),
  // 8-byte ones where 8-byte aligned (14x14: 392-byte planes). 7x7's 98-byte planes are only
  // 2-byte aligned: no cp.async size fits, the WMMA fallback reads them.
  return widest_vector([&](int bytes) {
    const int64_t elems = bytes / 2;
    return aligned(p.x, bytes) && multiple_of(p.xs_n, N, elems) && multiple_of(p.xs_c, p.cin, elems);
  });
}

cudaError_t conv1x1_gemm_nchw(const ConvGemmParams& p, DType dtype, int copy_bytes, int device,
                              cudaStream_t stream) {
  // the epilogue's accesses along pixels: aligned base, image and channel strides
  ConvGemmParams q = p;
  const int64_t N = p.M / (p.OH * p.OW);
  const auto width = [&](const void* ptr, int64_t s_n, int64_t s_c) {
    return widest_vector([&](int bytes) {
      return aligned(ptr, bytes) && multiple_of(s_n, N, bytes / 2) && multiple_of(s_c, p.cout, bytes / 2);
    });
  };
  q.vec_out = width(p.out, p.os_n, p.os_c);
  q.vec_res = p.residual != nullptr ? width(p.residual, p.rs_n, p.rs_c) : 0;
  switch (dtype) {
    case DType::f16: return launch_nchw<__half>(q, copy_bytes, device, stream);
    case DType::bf16: return launch_nchw<__nv_bfloat16>(q, copy_bytes, device, stream);
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
