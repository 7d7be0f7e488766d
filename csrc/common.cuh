// Shared by the kernels: dtype conversion, 4-D strided indexing, launch helpers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "fastconv.h"

namespace fastconv {

// Scalar conversions through float (double stays double, so gradcheck can run).
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename A, typename T> __device__ __forceinline__ A to_acc(T v) { return static_cast<A>(v); }
template <> __device__ __forceinline__ float to_acc<float, __half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_acc<float, __nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T, typename A> __device__ __forceinline__ T from_acc(A v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_acc<__half, float>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}

// One 16-byte global store (st.global.v4) of a 16-byte value; dst must be 16-byte aligned.
// Written in PTX because from C++ the compiler may lower a struct of eight halves to narrower
// stores and merge them with a scalar tail path's stores to the same addresses (seen in the
// NCHW GEMM's epilogue: four 4-byte stores).
template <typename V>
__device__ __forceinline__ void store16(void* dst, const V& v) {
  static_assert(sizeof(V) == 16, "a 16-byte vector");
  uint32_t w[4];
  memcpy(w, &v, 16);
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(dst), "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3])
               : "memory");
}

// The same for 8 bytes (st.global.v2); dst must be 8-byte aligned.
__device__ __forceinline__ void store8(void* dst, const uint2& v) {
  asm volatile("st.global.v2.b32 [%0], {%1, %2};\n" ::"l"(dst), "r"(v.x), "r"(v.y) : "memory");
}

// (n, c, h, w) of flat position i of a dense NCHW (or NHWC) tensor of sizes s.
struct Index4 { int64_t n, c, h, w; };

__device__ __forceinline__ Index4 nchw_index(int64_t i, const Shape4& s, bool channels_last) {
  Index4 r;
  if (channels_last) {
    r.c = i % s.d[1]; i /= s.d[1];
    r.w = i % s.d[3]; i /= s.d[3];
    r.h = i % s.d[2]; r.n = i / s.d[2];
  } else {
    r.w = i % s.d[3]; i /= s.d[3];
    r.h = i % s.d[2]; i /= s.d[2];
    r.c = i % s.d[1]; r.n = i / s.d[1];
  }
  return r;
}

__device__ __forceinline__ int64_t offset(const Shape4& st, int64_t n, int64_t c, int64_t h, int64_t w) {
  return n * st.d[0] + c * st.d[1] + h * st.d[2] + w * st.d[3];
}

// A grid-stride loop's grid: enough blocks to fill the GPU several times, no more.
inline unsigned grid_for(int64_t work, int threads) {
  int64_t blocks = (work + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65535 * 8 ? (blocks > 0 ? blocks : 1) : 65535 * 8);
}

// Calls f(Tag<T>{}) with T the C++ type of dtype code `dtype`.
template <typename T> struct Tag { using type = T; };

template <typename F> cudaError_t dispatch(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: return f(Tag<float>{});
    case DType::f16: return f(Tag<__half>{});
    case DType::bf16: return f(Tag<__nv_bfloat16>{});
    case DType::f64: return f(Tag<double>{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastconv
