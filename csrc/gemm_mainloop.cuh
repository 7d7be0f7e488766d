// Mainloop of the 1x1 conv GEMM (sm80+): a STAGES-deep cp.async pipeline brings K blocks of the
// A and B operand tiles (gemm_operands.cuh) into shared memory; each warp reads its fragments
// with ldmatrix and accumulates with mma.sync in fp32 registers. The layout (gemm_layout.cuh)
// only chooses the operand tiles: the pipeline is the same for NHWC and NCHW.
#pragma once

#include <cstdint>
#include <type_traits>

#include "mma_sm80.cuh"

namespace fastconv {

template <class Cfg, class ATile, class BTile>
struct Mainloop {
  using T = typename Cfg::T;
  static constexpr int STAGES = Cfg::STAGES;

  struct SharedStorage {
    alignas(128) unsigned char a[STAGES][ATile::STAGE_BYTES];
    alignas(128) unsigned char b[STAGES][BTile::STAGE_BYTES];
  };
  using Accum = float[Cfg::MT][Cfg::NT][4];

  // The warp's MT x NT mma tiles over the first `ksteps` K steps of the K block in the given
  // stages (all of them but in the last K block, whose steps past Cin would add zeros only).
  static __device__ __forceinline__ void mma(uint32_t a_stage, uint32_t b_stage, int ksteps, Accum& acc) {
    const int warp = threadIdx.x / 32, wm = warp % Cfg::WARPS_M, wn = warp / Cfg::WARPS_M;
#pragma unroll
    for (int ks = 0; ks < Cfg::KSTEPS; ++ks) {
      if (ks >= ksteps) break;
      uint32_t a[Cfg::MT][4], b[Cfg::NT][2];
#pragma unroll
      for (int mt = 0; mt < Cfg::MT; ++mt) ATile::a_fragment(a_stage, wm * Cfg::WM + mt * 16, ks, a[mt]);
#pragma unroll
      for (int nt = 0; nt < Cfg::NT; nt += 2) BTile::b_fragments(b_stage, wn * Cfg::WN + nt * 8, ks, b[nt], b[nt + 1]);
#pragma unroll
      for (int mt = 0; mt < Cfg::MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < Cfg::NT; ++nt) Mma<T>::run(acc[mt][nt], a[mt], b[nt]);
    }
  }

  // Waits for this thread's copies of the oldest K block in flight, rounds them to TF32 (fp32
  // inputs), and publishes the block to every warp with the barrier, which also retires the
  // stage the warps read in the previous iteration.
  static __device__ __forceinline__ void publish(const ATile& a, const BTile& b, uint32_t a_stage, uint32_t b_stage) {
    cp_async_wait<STAGES - 2>();
    if constexpr (std::is_same_v<T, float>) {
      a.round_tf32(a_stage);
      b.round_tf32(b_stage);
    }
    __syncthreads();
  }

  // The pipeline: STAGES - 1 K blocks in flight while the warps multiply the oldest one, one
  // barrier per K block. The last K block is peeled off the loop so that its mma skips the K
  // steps past Cin while the loop's K blocks stay free of that check. Stage indices wrap by
  // compare, not by a modulo of the K block.
  static __device__ __forceinline__ void run(SharedStorage& s, const ATile& a, const BTile& b, int64_t cin,
                                             Accum& acc) {
    const int kblocks = static_cast<int>((cin + Cfg::BK - 1) / Cfg::BK);
    const uint32_t a0 = smem_addr(s.a), b0 = smem_addr(s.b);
#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) {
      if (st < kblocks) {
        a.load(a0 + st * ATile::STAGE_BYTES, st);
        b.load(b0 + st * BTile::STAGE_BYTES, st);
      }
      cp_async_commit();  // empty groups keep the wait count uniform
    }
    int read = 0;  // the stage of K block kb; block kb + STAGES - 1 goes to the one before it
    for (int kb = 0; kb < kblocks - 1; ++kb) {
      publish(a, b, a0 + read * ATile::STAGE_BYTES, b0 + read * BTile::STAGE_BYTES);
      if (kb + STAGES - 1 < kblocks) {
        const int write = read > 0 ? read - 1 : STAGES - 1;
        a.load(a0 + write * ATile::STAGE_BYTES, kb + STAGES - 1);
        b.load(b0 + write * BTile::STAGE_BYTES, kb + STAGES - 1);
      }
      cp_async_commit();
      mma(a0 + read * ATile::STAGE_BYTES, b0 + read * BTile::STAGE_BYTES, Cfg::KSTEPS, acc);
      read = read + 1 < STAGES ? read + 1 : 0;
    }
    if (kblocks > 0) {
      publish(a, b, a0 + read * ATile::STAGE_BYTES, b0 + read * BTile::STAGE_BYTES);
      const int last_k = static_cast<int>(cin - int64_t(kblocks - 1) * Cfg::BK);  // 1..BK
      mma(a0 + read * ATile::STAGE_BYTES, b0 + read * BTile::STAGE_BYTES, (last_k + Cfg::KSTEP - 1) / Cfg::KSTEP,
          acc);
    }
    cp_async_wait<0>();  // only empty groups can be left; none may land in the epilogue's C tile
  }
};

}  // namespace fastconv
