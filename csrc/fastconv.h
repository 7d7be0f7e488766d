// The launchers of fastconv's CUDA C++ kernels, as the pybind11 bindings see them:
// raw device pointers, sizes and strides in elements, a dtype code and a stream.
// Each returns the CUDA error of its launch (cudaSuccess when all went well).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fastconv {

enum class DType : int { f32 = 0, f16 = 1, bf16 = 2, f64 = 3 };
enum class BinaryOp : int { add = 0, add_relu = 1, relu_grad = 2 };

inline int dtype_size(DType d) { return d == DType::f64 ? 8 : d == DType::f32 ? 4 : 2; }

struct Shape4 { int64_t d[4]; };  // sizes or strides of an NCHW-indexed tensor

// out = op(a, b); out dense (NCHW or NHWC = channels_last); a, b any strides.
// `dense`: a and b have out's strides (flat indexing, vector loads).
cudaError_t binary(const void* a, const void* b, void* out, DType dtype, BinaryOp op,
                   Shape4 sizes, Shape4 a_strides, Shape4 b_strides, bool dense,
                   bool channels_last, cudaStream_t stream);

// out[n, j, oh, ow] = [relu](sum_k x[n, k, oh*stride, ow*stride] * w[j, k] + bias[j]
//                            + residual[n, j, oh, ow]).
// w is [Cout, Cin] with strides (w_stride_o, w_stride_i); bias (stride bias_stride) and
// residual may be null; out and residual any strides.
struct Conv1x1Args {
  const void* x;
  const void* w;
  const void* bias;
  const void* residual;
  void* out;
  DType dtype;
  Shape4 x_sizes, x_strides;
  int64_t cout, w_stride_o, w_stride_i, bias_stride;
  Shape4 out_strides, res_strides;
  int64_t stride;
  bool relu, tf32;
};
cudaError_t conv1x1(const Conv1x1Args& args, cudaStream_t stream);

// The kernel conv1x1 runs for `args` on a GPU with `sms` SMs: "mma_128x128", "mma_128x64",
// "mma_64x128" (the tensor-core GEMM on NHWC, csrc/conv1x1_gemm.cu), "mma_nchw_128x128" /
// "mma_nchw8_128x128" (the same GEMM on NCHW, 16- / 8-byte copies of x), "wmma" or "simt"
// (fallbacks).
// Host code only: the dispatch rule is testable without a GPU.
const char* conv1x1_kernel_name(const Conv1x1Args& args, int sms);

// grad_in = grad * (y > 0) (or grad if !relu); bias_grad (float, double for f64;
// zeroed by the caller) += grad_in summed over N, H, W.
cudaError_t relu_grad_bias(const void* grad, const void* y, void* grad_in, void* bias_grad,
                           DType dtype, Shape4 sizes, Shape4 g_strides, Shape4 y_strides,
                           Shape4 gi_strides, bool relu, cudaStream_t stream);

struct PoolGeometry { int kh, kw, sh, sw, pad_h, pad_w; };

// SAME pooling of x into the dense out; idx (int32, out's layout) receives the argmax
// position kh*KW+kw of each max window when not null.
cudaError_t pool_forward(const void* x, void* out, int32_t* idx, DType dtype, Shape4 x_sizes,
                         Shape4 x_strides, int64_t oh, int64_t ow, PoolGeometry g, bool is_max,
                         bool channels_last, cudaStream_t stream);

// grad_in (dense, x's sizes) from grad_out (any strides) and, for max, idx (idx_strides).
cudaError_t pool_backward(const void* grad_out, const int32_t* idx, void* grad_in, DType dtype,
                          Shape4 in_sizes, Shape4 g_strides, Shape4 idx_strides, int64_t oh,
                          int64_t ow, PoolGeometry g, bool is_max, bool channels_last,
                          cudaStream_t stream);

}  // namespace fastconv
