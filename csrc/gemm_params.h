// The 1x1 convolution as a GEMM, as the tensor-core kernel sees it:
//   out[m, j] = [relu](sum_k x[m, k] * w[j, k] + bias[j] + residual[m, j])
// m = (n, oh, ow) a pixel of the output, k an input channel, j an output channel.
// A = x gathered by pixel: row m starts at x + n*xs_n + oh*stride*xs_h + ow*stride*xs_w and its
// K values are contiguous (channel stride 1: channels_last, or any view with C innermost).
// B = weight [Cout, Cin], K contiguous: a "TN" GEMM, both operands K-major.
#pragma once

#include <cstdint>

namespace fastconv {

struct ConvGemmParams {
  const void* x;
  const void* w;
  const void* bias;      // null: no bias
  const void* residual;  // null: no residual
  void* out;
  int64_t M, cin, cout, OH, OW, stride;
  int64_t xs_n, xs_c, xs_h, xs_w;  // x strides (elements); the kernel needs xs_c == 1
  int64_t w_o, w_i;                // weight strides [Cout, Cin]; the kernel needs w_i == 1
  int64_t bias_s;            // bias stride
  int64_t os_n, os_c, os_h, os_w;  // out strides
  int64_t rs_n, rs_c, rs_h, rs_w;  // residual strides
  bool relu;
  int vec_out, vec_res;  // bytes of the widest legal epilogue access of out / residual along the
                         // tile's columns (NHWC: channels, NCHW: pixels): 16, 8, or 0 (scalar)
};

inline bool aligned(const void* ptr, int bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }
inline bool aligned16(const void* ptr) { return aligned(ptr, 16); }
// A stride matters only along a dimension of size > 1 (torch leaves the others arbitrary).
inline bool multiple_of(int64_t stride, int64_t size, int64_t vec) { return size <= 1 || stride % vec == 0; }

// The widest of 16 or 8 bytes (else 0) for which `ok(bytes)` holds: the vector width of an
// epilogue access, given a check of alignment and strides at that width.
template <class Ok>
inline int widest_vector(Ok ok) {
  return ok(16) ? 16 : ok(8) ? 8 : 0;
}

}  // namespace fastconv
