// pybind11 bindings of the launchers in fastconv.h. Python passes device pointers,
// sizes and strides (in elements), a dtype code, the device index and the raw stream
// handle of torch's current stream; every CUDA error becomes a RuntimeError carrying
// the CUDA error string. No torch headers: the module works with any torch version.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <stdexcept>
#include <string>

#include "fastconv.h"

#ifndef FASTCONV_CUDA_ARCHS
#error "setup.py passes the GPU code it embeds as -DFASTCONV_CUDA_ARCHS (reported by build_info)"
#endif

namespace py = pybind11;
using fastconv::DType;
using fastconv::Shape4;
using Arr4 = std::array<int64_t, 4>;

namespace {

Shape4 shape(const Arr4& a) { return Shape4{{a[0], a[1], a[2], a[3]}}; }
template <typename P> P* ptr(uintptr_t p) { return reinterpret_cast<P*>(p); }
cudaStream_t stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("fastconv CUDA error in ") + what + ": " + cudaGetErrorName(err) +
                             " (" + cudaGetErrorString(err) + ")");
}

// Launch on the tensors' device: cudart's current device is per runtime, and this module
// links its own (static) cudart.
void set_device(int device) { check(cudaSetDevice(device), "cudaSetDevice"); }

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastconv's CUDA C++ kernels (raw-pointer launchers; see csrc/fastconv.h)";

  m.def("device_count", [] {
    int n = 0;
    check(cudaGetDeviceCount(&n), "cudaGetDeviceCount");
    return n;
  }, "Number of CUDA devices this module's runtime sees (raises with the CUDA error if none can be used).");

  // What this module was built with, for `python -m fastconv.info` and the driver check in
  // fastconv/_cuda.py: the CUDA runtime linked in (its major version decides the oldest
  // driver that runs it), the GPU code embedded (SASS per arch, PTX) and the compilers.
  m.def("build_info", [] {
    py::dict info;
    info["cuda_runtime"] = CUDART_VERSION;  // 1000 * major + 10 * minor
    info["nvcc"] = std::to_string(__CUDACC_VER_MAJOR__) + "." + std::to_string(__CUDACC_VER_MINOR__) + "." +
                   std::to_string(__CUDACC_VER_BUILD__);
    info["archs"] = FASTCONV_CUDA_ARCHS;
#if defined(__clang__)
    info["host_compiler"] = "clang " __clang_version__;
#elif defined(__GNUC__)
    info["host_compiler"] = "gcc " __VERSION__;
#else
    info["host_compiler"] = "unknown";
#endif
    return info;
  }, "The build: CUDA runtime version linked in, nvcc version, GPU code embedded, host compiler.");

  m.def("driver_version", [] {
    int version = 0;  // stays 0 where no driver (libcuda.so.1) is found
    check(cudaDriverGetVersion(&version), "cudaDriverGetVersion");
    return version;
  }, "The CUDA version the installed NVIDIA driver supports (1000 * major + 10 * minor), 0 without a driver.");

  m.def("binary", [](uintptr_t a, uintptr_t b, uintptr_t out, int dtype, int op, Arr4 sizes, Arr4 sa, Arr4 sb,
                     bool dense, bool channels_last, int device, uintptr_t s) {
    set_device(device);
    check(fastconv::binary(ptr<const void>(a), ptr<const void>(b), ptr<void>(out), DType(dtype),
                           fastconv::BinaryOp(op), shape(sizes), shape(sa), shape(sb), dense, channels_last,
                           stream(s)), "binary");
  });

  // conv1x1 and conv1x1_kernel_name take the same arguments (conv1x1_kernel_name: the SM
  // count in place of device and stream).
  const auto conv_args = [](uintptr_t x, uintptr_t w, uintptr_t bias, uintptr_t residual, uintptr_t out,
                            int dtype, Arr4 x_sizes, Arr4 x_strides, int64_t cout, int64_t w_o, int64_t w_i,
                            int64_t bias_s, Arr4 out_strides, Arr4 res_strides, int64_t stride_, bool relu,
                            bool tf32) {
    return fastconv::Conv1x1Args{ptr<const void>(x), ptr<const void>(w), ptr<const void>(bias),
                                 ptr<const void>(residual), ptr<void>(out), DType(dtype), shape(x_sizes),
                                 shape(x_strides), cout, w_o, w_i, bias_s, shape(out_strides),
                                 shape(res_strides), stride_, relu, tf32};
  };

  m.def("conv1x1", [conv_args](uintptr_t x, uintptr_t w, uintptr_t bias, uintptr_t residual, uintptr_t out,
                               int dtype, Arr4 x_sizes, Arr4 x_strides, int64_t cout, int64_t w_o, int64_t w_i,
                               int64_t bias_s, Arr4 out_strides, Arr4 res_strides, int64_t stride_, bool relu,
                               bool tf32, int device, uintptr_t s) {
    set_device(device);
    check(fastconv::conv1x1(conv_args(x, w, bias, residual, out, dtype, x_sizes, x_strides, cout, w_o, w_i,
                                      bias_s, out_strides, res_strides, stride_, relu, tf32),
                            stream(s)), "conv1x1");
  });

  m.def("conv1x1_kernel_name", [conv_args](uintptr_t x, uintptr_t w, uintptr_t bias, uintptr_t residual,
                                           uintptr_t out, int dtype, Arr4 x_sizes, Arr4 x_strides, int64_t cout,
                                           int64_t w_o, int64_t w_i, int64_t bias_s, Arr4 out_strides,
                                           Arr4 res_strides, int64_t stride_, bool relu, bool tf32, int sms) {
    return std::string(fastconv::conv1x1_kernel_name(
        conv_args(x, w, bias, residual, out, dtype, x_sizes, x_strides, cout, w_o, w_i, bias_s, out_strides,
                  res_strides, stride_, relu, tf32), sms));
  }, "The kernel conv1x1 would run for these arguments on a GPU with `sms` SMs (host only).");

  m.def("relu_grad_bias", [](uintptr_t grad, uintptr_t y, uintptr_t grad_in, uintptr_t bias_grad, int dtype,
                             Arr4 sizes, Arr4 gs, Arr4 ys, Arr4 is, bool relu, int device, uintptr_t s) {
    set_device(device);
    check(fastconv::relu_grad_bias(ptr<const void>(grad), ptr<const void>(y), ptr<void>(grad_in),
                                   ptr<void>(bias_grad), DType(dtype), shape(sizes), shape(gs), shape(ys),
                                   shape(is), relu, stream(s)), "relu_grad_bias");
  });

  m.def("pool_forward", [](uintptr_t x, uintptr_t out, uintptr_t idx, int dtype, Arr4 x_sizes, Arr4 x_strides,
                           int64_t oh, int64_t ow, std::array<int, 6> geom, bool is_max, bool channels_last,
                           int device, uintptr_t s) {
    set_device(device);
    const fastconv::PoolGeometry g{geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]};
    check(fastconv::pool_forward(ptr<const void>(x), ptr<void>(out), ptr<int32_t>(idx), DType(dtype),
                                 shape(x_sizes), shape(x_strides), oh, ow, g, is_max, channels_last, stream(s)),
          "pool_forward");
  });

  m.def("pool_backward", [](uintptr_t grad_out, uintptr_t idx, uintptr_t grad_in, int dtype, Arr4 in_sizes,
                            Arr4 g_strides, Arr4 idx_strides, int64_t oh, int64_t ow, std::array<int, 6> geom,
                            bool is_max, bool channels_last, int device, uintptr_t s) {
    set_device(device);
    const fastconv::PoolGeometry g{geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]};
    check(fastconv::pool_backward(ptr<const void>(grad_out), ptr<const int32_t>(idx), ptr<void>(grad_in),
                                  DType(dtype), shape(in_sizes), shape(g_strides), shape(idx_strides), oh, ow, g,
                                  is_max, channels_last, stream(s)), "pool_backward");
  });
}
