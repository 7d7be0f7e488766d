"""One small case per CUDA C++ kernel, forward and backward, for compute-sanitizer.

    compute-sanitizer --tool memcheck python3 bench/sanitize_cuda.py
    compute-sanitizer --tool racecheck python3 bench/sanitize_cuda.py --op conv1x1_relu

Run with PYTORCH_NO_CUDA_MEMORY_CACHING=1 (bench/gpu_check.sh does): then every tensor is
its own cudaMalloc, and memcheck sees a read past a tensor's end instead of a read into
the caching allocator's next block. Sizes cross the tile edges of every conv GEMM tile shape
(M = 70, 198 and 4,356 pixels, Cin = 17 (unaligned rows), 40, 64, 200 and 320, Cout = 24, 40,
72, 136 and 2048, a grid large enough for the biggest tile), and odd element counts leave a
tail behind the 16-byte vector path of the elementwise kernels. Cin 200 and 320 give the GEMMs
more K blocks than pipeline stages, so racecheck sees every NHWC tile (128x128, 128x64,
64x128) and the NCHW one (8-byte copies) refill their stages. The dtype and flags pick the
kernel (csrc/README.md): the conv GEMMs in fp16, bf16, TF32, NHWC (stride 1 and the stride-2
row gather) and NCHW, the fallbacks in IEEE fp32 and fp64, the ReLU-mask + bias-gradient kernel
in both layouts, the elementwise kernels (dense and strided; add, add + ReLU, ReLU backward),
and the pools forward and backward (max with its argmax, average; 16-byte channel vectors and
scalar). Each result is also checked against the float64 reference, so a kernel that runs clean
but computes garbage fails too.

Each case names the kernels it launches (kernels_of, in the SASS's names: tests/sass.py);
tests/test_cuda.py checks without a GPU that the cases reach every kernel of the built module,
and on a GPU, with the profiler, that each case launches the kernels it names. The last line
lists the kernels covered. Without a GPU (the dry run of the GPU check) the same cases run on
the torch backend on the CPU, which checks this script's own code.
"""
import argparse
import sys

import torch

import fastconv
import fastconv._checks
import fastconv._cuda
from fastconv import reference
from fastconv.ops.pool_same import same_geometry

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
# dtype name -> (dtype, cudnn.allow_tf32, tolerance of ||out - ref|| / ||ref||)
DTYPES = {"fp16": (torch.float16, False, 5e-3), "bf16": (torch.bfloat16, False, 3e-2),
          "fp32": (torch.float32, False, 1e-5), "tf32": (torch.float32, True, 5e-3),
          "fp64": (torch.float64, False, 1e-12)}
LAYOUTS = ("nchw", "nhwc", "strided")
CONV = "conv1x1_relu"


def tensor(shape, dtype, layout):
    """Fresh normal data: contiguous, channels_last, or every other channel and column of a larger tensor."""
    N, C, H, W = shape
    if layout == "strided":
        return torch.randn(N, 2 * C, H, 2 * W, device=DEVICE).to(dtype)[:, ::2, :, ::2]
    t = torch.randn(shape, device=DEVICE).to(dtype)
    return t.contiguous(memory_format=torch.channels_last) if layout == "nhwc" else t


def cases():
    """(name, op, args): every kernel in every dtype it is built for, in every layout."""
    for dn, (dtype, tf32, _) in DTYPES.items():
        for layout in LAYOUTS:
            x, x17 = tensor((2, 40, 9, 11), dtype, layout), tensor((2, 17, 9, 11), dtype, layout)
            b = torch.randn(72, device=DEVICE).to(dtype)
            r = tensor((2, 72, 9, 11), dtype, layout)
            yield f"conv1x1_relu 40->72 bias+residual {dn} {layout}", CONV, (x, weight(72, 40, dtype), b, 1, True, r)
            yield f"conv1x1_relu 40->24 bias {dn} {layout}", CONV, (x, weight(24, 40, dtype), b[:24], 1, True)
            yield f"conv1x1 17->24 stride 2 {dn} {layout}", CONV, (x17, weight(24, 17, dtype), None, 2, False)
            yield f"conv1x1 40->24 stride 2 {dn} {layout}", CONV, (x, weight(24, 40, dtype), None, 2, False)
            if tf32:
                continue  # TF32 changes only the conv
            a, c = tensor((2, 17, 9, 11), dtype, layout), tensor((2, 17, 9, 11), dtype, "nhwc")
            yield f"residual_add relu {dn} {layout}", "residual_add", (a, c, True)
            yield f"residual_add no relu {dn} {layout}", "residual_add", (a, a, False)
            for pool_x in (x17, x):  # C = 40: the 16-byte channel vectors where channels_last
                C = pool_x.shape[1]
                yield f"max_pool2d_same 3/2 C={C} {dn} {layout}", "max_pool2d_same", (pool_x, 3, 2)
                yield f"avg_pool2d_same (3,2)/(2,1) C={C} {dn} {layout}", "avg_pool2d_same", (pool_x, (3, 2), (2, 1))
        if dtype == torch.float64 or (dtype == torch.float32 and not tf32):
            continue  # the rest are the tensor-core GEMMs
        # more K blocks than stages (K = 320: 5 blocks of 16-bit, 10 of TF32), the 64x128 and
        # 128x64 tiles; racecheck sees the stages refilled
        x320, b = tensor((2, 320, 5, 7), dtype, "nhwc"), torch.randn(136, device=DEVICE).to(dtype)
        yield f"conv1x1_relu 320->136 bias+residual {dn} nhwc", CONV, (
            x320, weight(136, 320, dtype), b, 1, True, tensor((2, 136, 5, 7), dtype, "nhwc"))
        yield f"conv1x1_relu 320->40 bias {dn} nhwc", CONV, (x320, weight(40, 320, dtype), b[:40], 1, True)
        # a grid large enough for the 128x128 tile (>= 4 tiles per SM); K = 200: 4 K blocks of
        # 16-bit (one more than the stages, the last one 8 deep), 7 of TF32
        x = tensor((4, 200, 33, 33), dtype, "nhwc")
        yield f"conv1x1_relu 200->2048 large grid {dn} nhwc", CONV, (x, weight(2048, 200, dtype), None, 1, True)
        if dtype != torch.float32:  # the NCHW GEMM (16-bit): 16-byte copies (8x8), 8-byte (14x14)
            yield f"conv1x1_relu 64->72 8x8 {dn} nchw", CONV, (
                tensor((2, 64, 8, 8), dtype, "nchw"), weight(72, 64, dtype), b[:72], 1, True)
            yield f"conv1x1_relu 320->136 14x14 bias+residual {dn} nchw", CONV, (
                tensor((2, 320, 14, 14), dtype, "nchw"), weight(136, 320, dtype), b, 1, True,
                tensor((2, 136, 14, 14), dtype, "nchw"))


def weight(cout, cin, dtype):
    return torch.randn(cout, cin, 1, 1, device=DEVICE).to(dtype) / cin ** 0.5


# The kernels' C++ element types, as template arguments in their SASS names
CPP_TYPE = {torch.float16: "__half", torch.bfloat16: "__nv_bfloat16", torch.float32: "float",
            torch.float64: "double"}
# _cuda.conv1x1_kernel_name's names -> (tile, layout) of conv1x1_mma<GemmConfig<T, tile>, layout>
GEMM_TILES = {"mma_128x128": ("kTileLarge", "NhwcLayout"), "mma_128x64": ("kTileNarrow", "NhwcLayout"),
              "mma_64x128": ("kTileSmallM", "NhwcLayout"), "mma_nchw_128x128": ("kTileNchw", "NchwLayout"),
              "mma_nchw8_128x128": ("kTileNchw8", "NchwLayout")}


def _vectors(t, vec):
    """Whether csrc/pool_same.cu's 16-byte channel vectors are legal for t: channels
    contiguous, C a multiple of the vector, aligned base and pixel strides."""
    sn, sc, sh, sw = t.stride()
    N, C, H, W = t.shape
    return (C % vec == 0 and (sc == 1 or C == 1) and t.data_ptr() % 16 == 0
            and all(size <= 1 or st % vec == 0 for size, st in ((N, sn), (H, sh), (W, sw))))


def kernels_of(op, args, tf32, sms=132):
    """The CUDA kernels a case's forward and backward launch, as tests/sass.py names them: the
    conv's from the extension's own rule (_cuda.conv1x1_kernel_name), the others by the rules of
    csrc/ written out here (fastconv.ops' layouts, pool_same.cu's vectors). cuDNN's kernels
    (the conv's input and weight gradients) are not fastconv's."""
    x = args[0]
    T = CPP_TYPE[x.dtype]
    channels_last = fastconv._checks.out_memory_format(x) == torch.channels_last
    if op == CONV:
        w, b, stride, relu, *residual = args[1:]
        shape = (x.shape[0], w.shape[0], (x.shape[2] - 1) // stride + 1, (x.shape[3] - 1) // stride + 1)
        out = fastconv._checks.empty_like_layout(x, shape)
        rule = fastconv._cuda.conv1x1_kernel_name(x, w, b, out, stride, relu, tf32, *residual, sms=sms)
        if rule in GEMM_TILES:
            tile, layout = GEMM_TILES[rule]
            found = {f"conv1x1_mma<GemmConfig<{T},{tile}>,{layout}>"}
        else:
            found = {f"conv1x1_{rule}<{T}>"}
        if b is not None:  # the bias gradient, along grad_in's (out's layout) contiguous axis
            found.add(f"relu_grad_bias_kernel<{T},{'true' if out.stride(1) == 1 and shape[1] > 1 else 'false'}>")
        elif relu:  # the ReLU mask alone: the elementwise kernel, on out's dense layout
            found.add(f"binary_dense<{T}>")
        return found
    if op == "residual_add":
        a, c, relu = args
        out = fastconv._checks.empty_like_layout(a, a.shape)
        dense = a.stride() == out.stride() and c.stride() == out.stride()
        return {f"binary_{'dense' if dense else 'strided'}<{T}>"} | ({f"binary_dense<{T}>"} if relu else set())
    # pools: the forward, and the backward's gather (max: after the forward again, for the argmax)
    _, out_hw, _ = same_geometry(x.shape[2], x.shape[3], *(fastconv._checks.pair(a, "") for a in args[1:]))
    out = fastconv._checks.empty_like_layout(x, tuple(x.shape[:2]) + out_hw)
    vec = 16 // x.element_size() if x.dtype != torch.float64 else 1
    v = vec if vec > 1 and channels_last and _vectors(x, vec) and _vectors(out, vec) else 1
    return {f"pool_fwd<{T},{v}>", f"pool_bwd<{T},{v}>"}


def run_case(op, args, tf32):
    """Forward and backward on the backend under test; the worst relative error against float64."""
    leaves = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    torch.backends.cudnn.allow_tf32 = tf32
    with fastconv.use_backend("cuda" if ON_GPU else "torch"):
        out = getattr(fastconv, op)(*leaves)
        grad = torch.randn_like(out)
        out.backward(grad)
    if ON_GPU:
        torch.cuda.synchronize()  # a kernel fault surfaces here, inside this case
    torch.backends.cudnn.allow_tf32 = False
    # the reference on the CPU: no GPU kernel of torch's to sanitize
    leaves64 = [a.detach().cpu().double().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    expected = getattr(reference, op)(*leaves64)
    expected.backward(grad.cpu().double())
    pairs = [(out, expected)] + [(a.grad, e.grad) for a, e in zip(leaves, leaves64) if isinstance(a, torch.Tensor)]
    return max(reference.rel_error(got, want) for got, want in pairs)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--op", nargs="+", default=None, help="only these ops (racecheck: conv1x1_relu)")
    p.add_argument("--dtype", nargs="+", default=None, choices=list(DTYPES), help="only these dtypes")
    args = p.parse_args(argv)
    if not ON_GPU:
        print("no GPU: the cases run on the torch backend on the CPU (no CUDA C++ kernel is checked)")
    elif "cuda" not in fastconv.available_backends():
        sys.exit(f"the CUDA C++ backend is unavailable: {fastconv._cuda.unavailable_reason()}")
    torch.manual_seed(0)
    bad, covered = 0, set()
    for name, op, op_args in cases():
        dn = name.split()[-2]
        if (args.op and op not in args.op) or (args.dtype and dn not in args.dtype):
            continue
        kernels = kernels_of(op, op_args, DTYPES[dn][1]) if fastconv._cuda._C is not None else set()
        print(f"... {name} [{', '.join(sorted(kernels))}]", flush=True)  # a fault names its case
        err = run_case(op, op_args, DTYPES[dn][1])
        ok = err <= DTYPES[dn][2]
        bad += not ok
        covered |= kernels
        print(f"{'ok ' if ok else 'BAD'} {name}: fwd+bwd relative error {err:.2e}", flush=True)
    if covered:
        print(f"kernels covered ({len(covered)}):", ", ".join(sorted(covered)))
    print(f"{bad} case(s) out of tolerance")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
