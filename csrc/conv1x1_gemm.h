// The tensor-core GEMM path of conv1x1 (conv1x1_gemm.cu) as conv1x1.cu dispatches to it.
#pragma once

#include <cuda_runtime_api.h>

#include "fastconv.h"
#include "gemm_params.h"
#include "gemm_tile_size.h"

namespace fastconv {

// Whether the cp.async/ldmatrix/mma.sync kernel can run these arguments: fp16/bf16, or fp32
// with TF32 allowed; x and weight K-contiguous (channel stride 1) with 16-byte aligned rows
// (base pointer and every pixel / weight-row stride a multiple of 16 bytes). Everything else
// (NCHW or channel-strided x, Cin * elem not a multiple of 16 in NHWC, IEEE fp32, fp64) takes
// the WMMA / SIMT kernels of conv1x1.cu.
bool conv1x1_gemm_supported(const ConvGemmParams& p, DType dtype, bool tf32);

// Launches on `device` (the current one) and `stream`.
// The NCHW variant (gemm_nchw.cuh): fp16/bf16, stride 1, pixels contiguous in x, out and
// residual (dense NCHW), 16-byte aligned channel planes (H * W a multiple of 8) and weight rows.
bool conv1x1_gemm_nchw_supported(const ConvGemmParams& p, DType dtype);
cudaError_t conv1x1_gemm_nchw(const ConvGemmParams& p, DType dtype, int device, cudaStream_t stream);

cudaError_t conv1x1_gemm(const ConvGemmParams& p, DType dtype, TileKind tile, int device, cudaStream_t stream);

}  // namespace fastconv
