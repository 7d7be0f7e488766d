// The sm80+ instructions the GEMM is built from, as inline PTX: cp.async (global -> shared
// without a register round trip, zero-filling what is out of bounds), ldmatrix (four 8x8
// tiles of 16-byte rows from shared memory straight into mma fragments) and mma.sync.
//
// Everything is counted in 16-byte chunks: one ldmatrix row is one chunk, i.e. 8 fp16/bf16
// or 4 fp32 (TF32) values. One mma K step is two chunks (32 bytes) for every type:
// m16n8k16 for 16-bit inputs, m16n8k8 for TF32, with the same fragment layout in registers
// (in 32-bit words), so one mainloop serves both.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace fastconv {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Copies `src_bytes` (0..16) bytes from global `src` to shared `dst` and zero-fills the rest of
// the 16 bytes. With src_bytes = 0 nothing is read; callers still pass an address inside the
// tensor (the PTX manual does not promise that an out-of-bounds one goes unchecked).
// .cg: cached in L2 only; the tile is read once from shared memory, L1 would only pollute.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}
// The same for 8 bytes (0 or 8 read), where the source is only 8-byte aligned (.cg takes
// 16-byte copies only; .ca is the form for 4 and 8).
__device__ __forceinline__ void cp_async_8(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 b16 tiles: lane l gives the row address of tile l / 8, row l % 8; register i of
// every lane receives its (row l / 4, 32-bit word l % 4) of tile i.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// The same with each 8x8 tile transposed: register i of lane l receives elements (row 2 * (l % 4),
// column l / 4) and (row 2 * (l % 4) + 1, column l / 4) of tile i: an mma B fragment from a tile
// stored K-rows-major (N contiguous).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// D += A * B for one 16 x 8 tile and one 32-byte K step. A: 4 registers (rows g and g + 8,
// K chunks 0 and 1), B: 2 registers (column g, K chunks 0 and 1), C: rows g, g + 8, columns
// 2t, 2t + 1 (g = lane / 4, t = lane % 4).
template <typename T> struct Mma;

template <> struct Mma<__half> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

template <> struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

// fp32 inputs on tensor cores (TF32). The mma reads only the top 19 bits of each value
// (truncation); the values are rounded to nearest (as cuDNN) in shared memory first, once per
// element (round_tf32_chunk), not in every warp that reads them.
template <> struct Mma<float> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

// Rounds the 4 fp32 values of the 16-byte shared-memory chunk at `addr` to TF32 in place: to
// nearest, ties away from zero, as cvt.rna (cuDNN's rounding). Half a TF32 ulp (0x1000) is
// added to the bit pattern of each finite value and the 13 low bits are left for the mma to
// drop: 2 instructions a value where a stored cvt.rna takes 3 (the third clears those bits).
// ptxas compiles a cvt.rna that feeds an mma into the same add, and CUTLASS rounds so
// (round_half_ulp_truncate). Infinities and NaN are left alone: the carry would change them.
__device__ __forceinline__ void round_tf32_chunk(uint32_t addr) {
  uint32_t v[4];
  asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v[0]), "=r"(v[1]), "=r"(v[2]), "=r"(v[3])
               : "r"(addr) : "memory");
#pragma unroll
  for (int i = 0; i < 4; ++i)
    if (fabsf(__uint_as_float(v[i])) < __int_as_float(0x7f800000)) v[i] += 0x1000u;
  asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(v[0]), "r"(v[1]), "r"(v[2]), "r"(v[3])
               : "memory");
}

}  // namespace fastconv
