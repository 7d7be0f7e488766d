// Tile shapes of the tensor-core 1x1 conv GEMM and the one function that picks among them.
// Every shape moves K in blocks of 128 bytes per row (64 fp16/bf16 or 32 fp32 values), which
// makes the swizzled shared-memory rows exactly one 128-byte bank line. Shared memory per
// block = stages x (bm + bn) x 128 B (+ 24 B per pixel row); an H100/H200 SM has 228 KB.
// The shapes are `inline constexpr` objects so that a kernel can take one as a template
// argument: its name in the SASS then says which tile it is (GemmConfig<__half, kTileLarge>),
// and tests/test_sass_budget.py reads this file for each tile's threads and blocks per SM.
#pragma once

#include <cstdint>

namespace fastconv {

struct TileShape {
  int bm, bn;             // block tile: rows (pixels; NCHW: output channels) x columns
  int warps_m, warps_n;   // warp grid; each warp owns a (bm / warps_m) x (bn / warps_n) tile
  int stages;             // cp.async pipeline depth
  int blocks_per_sm;      // resident blocks the shared memory allows; registers are capped to match
  int x_copy_bytes;       // bytes per cp.async of x: 16, or 8 where x's rows are only 8-byte aligned
};

// 128x128, 8 warps of 64x32, 3 stages (99 KB), 2 blocks per SM: the most FLOPs per byte of
// shared memory; the default.
inline constexpr TileShape kTileLarge{128, 128, 2, 4, 3, 2, 16};
// 128x64, 4 warps of 64x32, 4 stages (99 KB), 2 per SM: Cout <= 64 (bottleneck reductions,
// GoogLeNet's branches), where a 128-wide N tile would be half zero padding.
inline constexpr TileShape kTileNarrow{128, 64, 2, 2, 4, 2, 16};
// 64x128, 4 warps of 32x64, 3 stages (74 KB), 3 per SM: deep layers with few pixels (7x7,
// 14x14), where 128x128 tiles would leave SMs idle in a partial last wave. 3 resident blocks
// make 396 slots on 132 SMs: 2048x7x7 -> 512 at batch 128 (392 tiles) runs in one wave.
inline constexpr TileShape kTileSmallM{64, 128, 2, 2, 3, 3, 16};

// NCHW 16-bit (NchwLayout): 128 output channels x 128 pixels of one image, 8 warps of 64x32,
// 3 stages (96 KB), 2 per SM. One shape: NCHW is the less common layout here. H x W a
// multiple of 8 (56x56, 28x28): 16-byte copies of x; a multiple of 4 only (14x14: 392-byte
// channel planes): 8-byte copies, twice as many (kTileNchw8).
inline constexpr TileShape kTileNchw{128, 128, 2, 4, 3, 2, 16};
inline constexpr TileShape kTileNchw8{128, 128, 2, 4, 3, 2, 8};

enum class TileKind : int { large = 0, narrow = 1, small_m = 2 };

// The tile shape for an M x Cout GEMM on a GPU with `sms` SMs. Why these thresholds: a grid of
// fewer than ~2 full waves of 128x128 tiles (2 per SM) spends a large share of its time in a
// partial last wave; quartering the tile area per block slot (64x128 at 3 per SM) fixes that
// at ~25% more shared-memory traffic per FLOP, cheaper than idle SMs.
inline TileKind choose_tile(int64_t M, int64_t cout, int sms) {
  if (cout <= 64) return TileKind::narrow;
  const int64_t large_tiles = ((M + 127) / 128) * ((cout + 127) / 128);
  if (large_tiles < int64_t(4) * sms) return TileKind::small_m;
  return TileKind::large;
}

}  // namespace fastconv
