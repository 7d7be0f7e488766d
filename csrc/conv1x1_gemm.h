// The tensor-core GEMM path of conv1x1 (conv1x1_gemm.cu) as conv1x1.cu dispatches to it.
#pragma once

#include <cuda_runtime_api.h>

#include "fastconv.h"
#include "gemm_params.h"
#include "gemm_tile_size.h"

namespace fastconv {

// Whether the NHWC GEMM (cp.async/ldmatrix/mma.sync) can run these arguments: fp16/bf16, or
// fp32 with TF32 allowed; x and weight K-contiguous (channel stride 1) with 16-byte aligned
// rows (base pointer and every pixel / weight-row stride a multiple of 16 bytes). Everything
// else (NCHW or channel-strided x, Cin * elem not a multiple of 16 in NHWC, IEEE fp32, fp64)
// takes the NCHW GEMM below or the WMMA / SIMT kernels of conv1x1.cu.
bool conv1x1_gemm_supported(const ConvGemmParams& p, DType dtype, bool tf32);
cudaError_t conv1x1_gemm(const ConvGemmParams& p, DType dtype, TileKind tile, int device, cudaStream_t stream);

// The NCHW GEMM (NchwLayout): fp16/bf16, stride 1, pixels contiguous in x, out and residual
// (dense NCHW), 16-byte aligned weight rows, and x's channel planes aligned for 16-byte
// copies (H * W a multiple of 8) or 8-byte ones (a multiple of 4): returns that copy size,
// 0 where the NCHW GEMM cannot run.
int conv1x1_gemm_nchw_copy_bytes(const ConvGemmParams& p, DType dtype);
cudaError_t conv1x1_gemm_nchw(const ConvGemmParams& p, DType dtype, int copy_bytes, int device,
                              cudaStream_t stream);

}  // namespace fastconv
