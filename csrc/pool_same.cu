// TensorFlow-"SAME" max and average pooling, forward and backward.
// The padding is never materialised: window cells outside the input are skipped.
// Napkin math (forward, 16-bit): read each input element once from DRAM (overlapping
// windows hit L1/L2) + write 2 B per output; eager F.pad + pool writes and re-reads a
// padded copy first.
#include <math.h>

#include "common.cuh"

namespace fastconv {
namespace {

// One thread per output element (grid-stride), in the dense output's memory order.
template <typename T>
__global__ void pool_fwd(const T* __restrict__ x, T* __restrict__ out, int32_t* __restrict__ idx,
                         Shape4 xs, Shape4 xst, int64_t oh_size, int64_t ow_size, PoolGeometry g,
                         bool is_max, bool channels_last) {
  using A = typename Acc<T>::type;
  const Shape4 os = {{xs.d[0], xs.d[1], oh_size, ow_size}};
  const int64_t numel = os.d[0] * os.d[1] * os.d[2] * os.d[3];
  const int64_t H = xs.d[2], W = xs.d[3];
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += step) {
    const Index4 o = nchw_index(i, os, channels_last);
    const int64_t h0 = o.h * g.sh - g.pad_h, w0 = o.w * g.sw - g.pad_w;
    const int64_t h_lo = h0 > 0 ? h0 : 0, h_hi = h0 + g.kh < H ? h0 + g.kh : H;
    const int64_t w_lo = w0 > 0 ? w0 : 0, w_hi = w0 + g.kw < W ? w0 + g.kw : W;
    const T* base = x + o.n * xst.d[0] + o.c * xst.d[1];
    A acc = is_max ? A(-INFINITY) : A(0);
    int32_t arg = -1;
    for (int64_t h = h_lo; h < h_hi; ++h) {
      for (int64_t w = w_lo; w < w_hi; ++w) {
        const A v = to_acc<A>(base[h * xst.d[2] + w * xst.d[3]]);
        if (is_max) {
          // As PyTorch: the first maximum wins, a NaN always wins (NaN propagates),
          // and an all -inf window keeps its first real cell.
          if (v > acc || v != v || arg < 0) {
            acc = v;
            arg = static_cast<int32_t>((h - h0) * g.kw + (w - w0));
          }
        } else {
          acc += v;
        }
      }
    }
    if (!is_max) acc /= A((h_hi - h_lo) * (w_hi - w_lo));  // >= 1 real cell (SAME)
    out[i] = from_acc<T>(acc);
    if (idx != nullptr) idx[i] = arg;
  }
}

// Gather: one thread per input element visits the <= ceil(k/s)^2 windows that hold it.
template <typename T>
__global__ void pool_bwd(const T* __restrict__ gout, const int32_t* __restrict__ idx,
                         T* __restrict__ gin, Shape4 is, Shape4 gst, Shape4 ist, int64_t OH,
                         int64_t OW, PoolGeometry g, bool is_max, bool channels_last) {
  using A = typename Acc<T>::type;
  const int64_t numel = is.d[0] * is.d[1] * is.d[2] * is.d[3];
  const int64_t H = is.d[2], W = is.d[3];
  const int cand_h = (g.kh + g.sh - 1) / g.sh, cand_w = (g.kw + g.sw - 1) / g.sw;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += step) {
    const Index4 p = nchw_index(i, is, channels_last);
    const int64_t oh_last = (p.h + g.pad_h) / g.sh, ow_last = (p.w + g.pad_w) / g.sw;
    A acc = A(0);
    for (int a = 0; a < cand_h; ++a) {
      const int64_t oh = oh_last - a;
      const int64_t dh = p.h - (oh * g.sh - g.pad_h);  // row of p inside window (oh, .)
      if (oh < 0 || oh >= OH || dh >= g.kh) continue;
      for (int b = 0; b < cand_w; ++b) {
        const int64_t ow = ow_last - b;
        const int64_t dw = p.w - (ow * g.sw - g.pad_w);
        if (ow < 0 || ow >= OW || dw >= g.kw) continue;
        const A gv = to_acc<A>(gout[offset(gst, p.n, p.c, oh, ow)]);
        if (is_max) {
          if (idx[offset(ist, p.n, p.c, oh, ow)] == dh * g.kw + dw) acc += gv;
        } else {
          const int64_t h0 = oh * g.sh - g.pad_h, w0 = ow * g.sw - g.pad_w;
          const int64_t rows = (h0 + g.kh < H ? h0 + g.kh : H) - (h0 > 0 ? h0 : 0);
          const int64_t cols = (w0 + g.kw < W ? w0 + g.kw : W) - (w0 > 0 ? w0 : 0);
          acc += gv / A(rows * cols);
        }
      }
    }
    gin[i] = from_acc<T>(acc);
  }
}

}  // namespace

cudaError_t pool_forward(const void* x, void* out, int32_t* idx, DType dtype, Shape4 x_sizes,
                         Shape4 x_strides, int64_t oh, int64_t ow, PoolGeometry g, bool is_max,
                         bool channels_last, cudaStream_t stream) {
  const int64_t numel = x_sizes.d[0] * x_sizes.d[1] * oh * ow;
  if (numel == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    pool_fwd<T><<<grid_for(numel, 256), 256, 0, stream>>>(
        static_cast<const T*>(x), static_cast<T*>(out), idx, x_sizes, x_strides, oh, ow, g,
        is_max, channels_last);
    return cudaGetLastError();
  });
}

cudaError_t pool_backward(const void* grad_out, const int32_t* idx, void* grad_in, DType dtype,
                          Shape4 in_sizes, Shape4 g_strides, Shape4 idx_strides, int64_t oh,
                          int64_t ow, PoolGeometry g, bool is_max, bool channels_last,
                          cudaStream_t stream) {
  const int64_t numel = in_sizes.d[0] * in_sizes.d[1] * in_sizes.d[2] * in_sizes.d[3];
  if (numel == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    pool_bwd<T><<<grid_for(numel, 256), 256, 0, stream>>>(
        static_cast<const T*>(grad_out), idx, static_cast<T*>(grad_in), in_sizes, g_strides,
        idx_strides, oh, ow, g, is_max, channels_last);
    return cudaGetLastError();
  });
}

}  // namespace fastconv
