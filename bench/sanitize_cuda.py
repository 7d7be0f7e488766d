"""One small case per CUDA C++ kernel, forward and backward, for compute-sanitizer.

    compute-sanitizer --tool memcheck python3 bench/sanitize_cuda.py
    compute-sanitizer --tool racecheck python3 bench/sanitize_cuda.py --op conv1x1_relu

Run with PYTORCH_NO_CUDA_MEMORY_CACHING=1 (bench/gpu_check.sh does): then every tensor is
its own cudaMalloc, and memcheck sees a read past a tensor's end instead of a read into
the caching allocator's next block. Sizes cross each kernel's tile edges: the conv GEMM
tiles (WMMA 128 x 64 x 32, SIMT 64 x 64 x 32) get M = 198 pixels, Cin = 40, Cout = 72,
and odd element counts leave a tail behind the 16-byte vector path of the elementwise kernels.
Kernels, by the dtype and flags that pick them (csrc/README.md): conv1x1_wmma<half, bf16,
float (TF32)>, conv1x1_simt<float, double>, relu_grad_bias_kernel, binary_dense and
binary_strided (add, add + ReLU, ReLU backward), pool_fwd and pool_bwd (max with argmax,
avg). Each result is also checked against the float64 reference, so a kernel that runs clean
but computes garbage fails too. Without a GPU (the dry run of the GPU check) the same cases
run on the torch backend on the CPU, which checks this script's own code.
"""
import argparse
import sys

import torch

import fastconv
from fastconv import reference

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
# dtype name -> (dtype, cudnn.allow_tf32, tolerance of ||out - ref|| / ||ref||)
DTYPES = {"fp16": (torch.float16, False, 5e-3), "bf16": (torch.bfloat16, False, 3e-2),
          "fp32": (torch.float32, False, 1e-5), "tf32": (torch.float32, True, 5e-3),
          "fp64": (torch.float64, False, 1e-12)}
LAYOUTS = ("nchw", "nhwc", "strided")


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
            x = tensor((2, 40, 9, 11), dtype, layout)
            w = torch.randn(72, 40, 1, 1, device=DEVICE).to(dtype) / 40 ** 0.5
            b = torch.randn(72, device=DEVICE).to(dtype)
            r = tensor((2, 72, 9, 11), dtype, layout)
            yield f"conv1x1_relu bias+residual {dn} {layout}", "conv1x1_relu", (x, w, b, 1, True, r)
            yield f"conv1x1 stride 2 no bias {dn} {layout}", "conv1x1_relu", (x, w, None, 2, False)
            if tf32:
                continue  # TF32 changes only the conv
            a, c = tensor((2, 17, 9, 11), dtype, layout), tensor((2, 17, 9, 11), dtype, "nhwc")
            yield f"residual_add relu {dn} {layout}", "residual_add", (a, c, True)
            yield f"residual_add no relu {dn} {layout}", "residual_add", (a, a, False)
            p = tensor((2, 17, 9, 11), dtype, layout)
            yield f"max_pool2d_same 3/2 {dn} {layout}", "max_pool2d_same", (p, 3, 2)
            yield f"avg_pool2d_same (3,2)/(2,1) {dn} {layout}", "avg_pool2d_same", (p, (3, 2), (2, 1))


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
    leaves64 = [a.detach().double().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    expected = getattr(reference, op)(*leaves64)
    expected.backward(grad.double())
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
    bad = 0
    for name, op, op_args in cases():
        dn = name.split()[-2]
        if (args.op and op not in args.op) or (args.dtype and dn not in args.dtype):
            continue
        err = run_case(op, op_args, DTYPES[dn][1])
        ok = err <= DTYPES[dn][2]
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} {name}: fwd+bwd relative error {err:.2e}", flush=True)
    print(f"{bad} case(s) out of tolerance")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
