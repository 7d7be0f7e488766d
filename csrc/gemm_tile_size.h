// Tile shapes of the tensor-core 1x1 conv GEMM and the one function that picks among them.
// Every shape moves K in blocks of 128 bytes per row (64 fp16/bf16 or 32 fp32 values), which
// makes the swizzled shared-memory rows exactly one 128-byte bank line, and uses 96 KB of
// shared memory, so two blocks fit one H100/H200 SM (228 KB) and hide each other's latency.
#pragma once

#include <cstdint>

namespace fastconv {

struct TileShape {
  int bm, bn;             // block tile: pixels x output channels
  int warps_m, warps_n;   // warp grid; each warp owns a (bm / warps_m) x (bn / warps_n) tile
  int stages;             // cp.async pipeline depth
};

// 128x128, 8 warps of 64x32: the most FLOPs per byte of shared memory; the default.
constexpr TileShape kTileLarge{128, 128, 2, 4, 3};
// 128x64, 4 warps of 64x32: Cout <= 64 (bottleneck reductions, GoogLeNet's branches), where a
// 128-wide N tile would be half zero padding.
constexpr TileShape kTileNarrow{128, 64, 2, 2, 4};
// 64x128, 4 warps of 32x64: deep layers with few pixels (7x7, 14x14 at small batch), where
// 128x128 tiles would leave most SMs idle in the last wave.
constexpr TileShape kTileSmallM{64, 128, 2, 2, 4};

enum class TileKind : int { large = 0, narrow = 1, small_m = 2 };

// The tile shape for an M x Cout GEMM on a GPU with `sms` SMs. Why these thresholds: with two
// blocks per SM, a grid of fewer than ~2 full waves of 128x128 tiles spends a large share of
// its time in a partial last wave; halving BM doubles the tiles (the smaller tile costs ~25%
// more shared-memory traffic per FLOP, cheaper than idle SMs).
inline TileKind choose_tile(int64_t M, int64_t cout, int sms) {
  if (cout <= 64) return TileKind::narrow;
  const int64_t large_tiles = ((M + 127) / 128) * ((cout + 127) / 128);
  if (large_tiles < int64_t(4) * sms) return TileKind::small_m;
  return TileKind::large;
}

}  // namespace fastconv
