// The operand tiles of the 1x1 conv GEMM, each with its producer side (cp.async of one K block
// into a pipeline stage) and its consumer side (ldmatrix into mma fragments):
//   KMajorTile:     ROWS rows whose K values are contiguous in DRAM: x's pixels in NHWC
//                   (gathered: any pixel strides, the conv stride) and weight rows in both
//                   layouts. A stage is [ROWS][128 bytes of K].
//   PixelMajorTile: NCHW's x[n], K rows of contiguous pixels, stored as it lies in DRAM,
//                   [64 K rows][BN pixels], turned into B fragments by ldmatrix.trans.
// Swizzle: chunk c of row r is stored at chunk c ^ (r % 8), so the 8 rows an ldmatrix (or 8
// cp.async) touches at one chunk fall in 8 different 16-byte bank groups: conflict-free
// without padding.
// Bounds: K past Cin is zero-filled by cp.async (src_bytes < 16), so K tails add zeros. Rows
// past the operand's end (pixels past M, output channels past Cout) are read from the tile's
// first row instead of being zero-filled: such a row only feeds accumulators of its own output
// row (A) or column (B), which the epilogue never stores, and the mainloop needs no per-row
// check. The load path is 32-bit (K offsets in bytes, Cin * elem < 2^31, checked on the host)
// but for one 64-bit pointer add per copy.
#pragma once

#include <cstdint>

#include "gemm_params.h"
#include "mma_sm80.cuh"

namespace fastconv {

template <class Cfg, int ROWS>
struct KMajorTile {
  static constexpr int THREADS = Cfg::THREADS, CHUNKS = Cfg::CHUNKS, ROW_BYTES = Cfg::ROW_BYTES;
  static constexpr int ITERS = ROWS * CHUNKS / THREADS, ROWS_PER_ITER = THREADS / CHUNKS;
  static constexpr int STAGE_BYTES = ROWS * ROW_BYTES;
  static_assert((ROWS * CHUNKS) % THREADS == 0, "whole chunks per thread");
  static_assert(ROWS_PER_ITER % 8 == 0, "a thread's rows share one swizzle phase: one offset plus constants");

  static __device__ __forceinline__ uint32_t swizzle(int row, int chunk) {
    return row * ROW_BYTES + ((chunk ^ (row & 7)) << 4);
  }

  // Producer state of one thread: chunk threadIdx.x % CHUNKS of rows threadIdx.x / CHUNKS + i *
  // ROWS_PER_ITER. The rows' pointers are computed once (the pixel gather), then only K moves.
  const char* row_[ITERS];
  uint32_t dst_;   // this thread's first chunk in a stage (swizzled)
  int k_byte_;     // its chunk's byte offset inside a K block
  int row_bytes_;  // bytes of K per row: Cin * sizeof(T)

  // row_ptr(r): the first byte of tile row r, null past the operand's end (row 0 never is).
  template <class RowPtr>
  __device__ __forceinline__ KMajorTile(RowPtr row_ptr, int64_t cin) {
    const int chunk = threadIdx.x % CHUNKS, row0 = threadIdx.x / CHUNKS;
    const char* first = row_ptr(0);
#pragma unroll
    for (int i = 0; i < ITERS; ++i) {
      const char* r = row_ptr(row0 + i * ROWS_PER_ITER);
      row_[i] = r != nullptr ? r : first;
    }
    dst_ = swizzle(row0, chunk);
    k_byte_ = chunk * 16;
    row_bytes_ = static_cast<int>(cin) * static_cast<int>(sizeof(typename Cfg::T));
  }

  // Producer: K block kb into the stage at shared address `stage` (this thread's share of one
  // cp.async group).
  __device__ __forceinline__ void load(uint32_t stage, int kb) const {
    const int k = kb * ROW_BYTES + k_byte_;
    const int bytes = min(max(row_bytes_ - k, 0), 16);
    const int koff = bytes > 0 ? k : 0;  // a 0-byte copy still gets an address inside the row
#pragma unroll
    for (int i = 0; i < ITERS; ++i)
      cp_async_16(stage + dst_ + i * ROWS_PER_ITER * ROW_BYTES, row_[i] + koff, bytes);
  }

  // TF32: this thread's own chunks of a stage rounded in place, after its copies have landed
  // and before the barrier that publishes them: each value once, not once per reading warp.
  __device__ __forceinline__ void round_tf32(uint32_t stage) const {
#pragma unroll
    for (int i = 0; i < ITERS; ++i) round_tf32_chunk(stage + dst_ + i * ROWS_PER_ITER * ROW_BYTES);
  }

  // Consumer, as the A operand: rows row0..row0+15 of K step ks. ldmatrix.x4 lane roles: tiles
  // (rows 0-7, 8-15) x (chunk 2ks, 2ks+1) in the order a0..a3 of the mma.
  static __device__ __forceinline__ void a_fragment(uint32_t stage, int row0, int ks, uint32_t (&a)[4]) {
    const int lane = threadIdx.x % 32;
    ldmatrix_x4(a, stage + swizzle(row0 + (lane & 7) + ((lane >> 3) & 1) * 8, 2 * ks + (lane >> 4)));
  }

  // Consumer, as the B operand: rows col0..col0+15 are the columns of two n8 mma tiles. Tiles
  // (cols 0-7: chunk 2ks, 2ks+1), (cols 8-15: chunk 2ks, 2ks+1): b0, b1 of each n8 tile.
  static __device__ __forceinline__ void b_fragments(uint32_t stage, int col0, int ks, uint32_t (&b0)[2],
                                                     uint32_t (&b1)[2]) {
    const int lane = threadIdx.x % 32;
    uint32_t r[4];
    ldmatrix_x4(r, stage + swizzle(col0 + (lane & 7) + (lane >> 4) * 8, 2 * ks + ((lane >> 3) & 1)));
    b0[0] = r[0]; b0[1] = r[1]; b1[0] = r[2]; b1[1] = r[3];
  }
};

// NCHW's B operand: x[n] as [K rows][pixels]; one stage is [64 K rows][BN pixels] (256-byte
// rows for BN = 128, chunk c of row r at chunk c ^ (r % 8)). Copies of X_COPY_BYTES (16, or 8
// where x's channel planes are only 8-byte aligned: H x W a multiple of 4, not 8); the copy
// holding the image's last pixel reads what is left of it and zero-fills the rest.
template <class Cfg>
struct PixelMajorTile {
  static_assert(sizeof(typename Cfg::T) == 2, "ldmatrix.trans moves 16-bit elements");
  static constexpr int THREADS = Cfg::THREADS, BK = Cfg::BK, COPY = Cfg::X_COPY_BYTES;
  static constexpr int ROW_BYTES = Cfg::BN * 2, PIECES = ROW_BYTES / COPY;  // copies per row
  static constexpr int ROWS_PER_ITER = THREADS / PIECES, ITERS = BK / ROWS_PER_ITER;
  static constexpr int STAGE_BYTES = BK * ROW_BYTES;
  static_assert(COPY == 16 || COPY == 8, "cp.async of 16 or 8 bytes");
  static_assert(THREADS % PIECES == 0 && BK % ROWS_PER_ITER == 0, "whole copies per thread");
  static_assert(ROWS_PER_ITER % 8 == 0, "a thread's rows share one swizzle phase");

  static __device__ __forceinline__ uint32_t swizzle(int row, int chunk) {
    return row * ROW_BYTES + ((chunk ^ (row & 7)) << 4);
  }

  // Producer state: copy threadIdx.x % PIECES of K rows threadIdx.x / PIECES + i * ROWS_PER_ITER.
  const char* image_;  // x[n][channel 0][this thread's first pixel] (pixel 0 past the image's end)
  int64_t row_step_;   // bytes between input channels
  uint32_t dst_;
  int bytes_;          // bytes of this thread's copy inside the image: COPY, fewer at its end, or 0
  int row0_, cin_;

  __device__ __forceinline__ PixelMajorTile(const ConvGemmParams& p, int64_t p0, int64_t n) {
    const int piece = threadIdx.x % PIECES;
    row0_ = threadIdx.x / PIECES;
    const int64_t pix = p0 + piece * (COPY / 2), left = (p.OH * p.OW - pix) * 2;
    bytes_ = left >= COPY ? COPY : (left > 0 ? static_cast<int>(left) : 0);
    image_ = static_cast<const char*>(p.x) + (n * p.xs_n + (bytes_ > 0 ? pix : 0)) * 2;
    row_step_ = p.xs_c * 2;
    dst_ = swizzle(row0_, piece * COPY / 16) + piece * COPY % 16;
    cin_ = static_cast<int>(p.cin);
  }

  // K rows past Cin (in the last K block) are zero-filled; their 0-byte copies get the image's
  // channel 0 as address, one inside x.
  __device__ __forceinline__ void load(uint32_t stage, int kb) const {
    const int k0 = kb * BK + row0_;  // input channel of this thread's first row
    const char* src = image_ + int64_t(k0) * row_step_;
    const int64_t step = ROWS_PER_ITER * row_step_;
#pragma unroll
    for (int i = 0; i < ITERS; ++i) {
      const bool in_k = k0 + i * ROWS_PER_ITER < cin_;
      const uint32_t to = stage + dst_ + i * ROWS_PER_ITER * ROW_BYTES;
      if constexpr (COPY == 16) cp_async_16(to, in_k ? src : image_, in_k ? bytes_ : 0);
      else cp_async_8(to, in_k ? src : image_, in_k ? bytes_ : 0);
      src += step;
    }
  }

  // Pixels col0..col0+15 of K step ks (K rows 16ks..16ks+15). ldmatrix.trans tiles: (K rows
  // 0-7, 8-15) x (pixels 0-7, 8-15) in the order b0, b1 of the first n8 tile, b0, b1 of the second.
  static __device__ __forceinline__ void b_fragments(uint32_t stage, int col0, int ks, uint32_t (&b0)[2],
                                                     uint32_t (&b1)[2]) {
    const int lane = threadIdx.x % 32;
    uint32_t r[4];
    ldmatrix_x4_trans(r, stage + swizzle(16 * ks + (lane & 7) + ((lane >> 3) & 1) * 8, col0 / 8 + (lane >> 4)));
    b0[0] = r[0]; b0[1] = r[1]; b1[0] = r[2]; b1[1] = r[3];
  }
};

}  // namespace fastconv
