// Residual add (+ReLU) and the ReLU backward: one pass over memory.
// Napkin math (16-bit): read a 2 B + read b 2 B + write out 2 B = 6 B per element;
// eager relu(x + r) takes two passes, 10 B per element.
#include "common.cuh"

namespace fastconv {
namespace {

template <typename A>
__device__ __forceinline__ A apply(BinaryOp op, A a, A b) {
  if (op == BinaryOp::relu_grad) return b <= A(0) ? A(0) : a;  // as torch: 0 where out <= 0
  A y = a + b;
  return (op == BinaryOp::add_relu && y < A(0)) ? A(0) : y;    // NaN stays NaN, as torch.relu
}

// a, b and out share one dense layout: 16-byte vectors, then a scalar tail.
template <typename T>
__global__ void binary_dense(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out,
                             int64_t numel, BinaryOp op) {
  using A = typename Acc<T>::type;
  constexpr int V = 16 / sizeof(T);
  struct alignas(16) Vec { T v[V]; };
  const int64_t nvec = numel / V;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = first; i < nvec; i += step) {
    Vec va = reinterpret_cast<const Vec*>(a)[i], vb = reinterpret_cast<const Vec*>(b)[i], vo;
#pragma unroll
    for (int k = 0; k < V; ++k)
      vo.v[k] = from_acc<T>(apply(op, to_acc<A>(va.v[k]), to_acc<A>(vb.v[k])));
    reinterpret_cast<Vec*>(out)[i] = vo;
  }
  for (int64_t i = nvec * V + first; i < numel; i += step)
    out[i] = from_acc<T>(apply(op, to_acc<A>(a[i]), to_acc<A>(b[i])));
}

// General strides: decompose out's flat index, read a and b through their strides.
template <typename T>
__global__ void binary_strided(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out,
                               int64_t numel, Shape4 sizes, Shape4 sa, Shape4 sb, bool channels_last,
                               BinaryOp op) {
  using A = typename Acc<T>::type;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += step) {
    Index4 p = nchw_index(i, sizes, channels_last);
    A va = to_acc<A>(a[offset(sa, p.n, p.c, p.h, p.w)]);
    A vb = to_acc<A>(b[offset(sb, p.n, p.c, p.h, p.w)]);
    out[i] = from_acc<T>(apply(op, va, vb));
  }
}

}  // namespace

cudaError_t binary(const void* a, const void* b, void* out, DType dtype, BinaryOp op, Shape4 sizes,
                   Shape4 a_strides, Shape4 b_strides, bool dense, bool channels_last,
                   cudaStream_t stream) {
  const int64_t numel = sizes.d[0] * sizes.d[1] * sizes.d[2] * sizes.d[3];
  if (numel == 0) return cudaSuccess;
  const bool aligned = ((reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b) |
                         reinterpret_cast<uintptr_t>(out)) % 16) == 0;
  return dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int threads = 256;
    if (dense && aligned) {
      binary_dense<T><<<grid_for(numel / (16 / sizeof(T)) + 1, threads), threads, 0, stream>>>(
          static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(out), numel, op);
    } else {
      binary_strided<T><<<grid_for(numel, threads), threads, 0, stream>>>(
          static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(out), numel, sizes,
          a_strides, b_strides, channels_last, op);
    }
    return cudaGetLastError();
  });
}

}  // namespace fastconv
