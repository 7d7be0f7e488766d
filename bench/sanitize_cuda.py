"""One small case per CUDA C++ kernel, forward and backward, for compute-sanitizer.

    compute-sanitizer --tool memcheck python3 bench/sanitize_cuda.py
    compute-sanitizer --tool racecheck python3 bench/sanitize_cuda.py --op conv1x1_relu

Run with PYTORCH_NO_CUDA_MEMORY_CACHING=1 (bench/gpu_check.sh does): then every tensor is
its own cudaMalloc, and memcheck sees a read past a tensor's end instead of a read into
the caching allocator's next block. Sizes cross the tile edges of every conv GEMM tile shape
(M = 198 and 4,356 pixels, Cin = 17 (unaligned rows) and 40, Cout = 24, 72 and 2048, a grid
large enough for the biggest tile), and odd element counts leave a tail behind the 16-byte
vector path of the elementwise kernels. The dtype and flags pick the kernel (csrc/README.md):
the conv GEMMs in fp16, bf16, TF32, IEEE fp32 and fp64, the ReLU-mask + bias-gradient kernel,
the elementwise kernels (dense and strided; add, add + ReLU, ReLU backward), and the pools
forward and backward (max with its argmax, average). Each result is also checked against the
float64 reference, so a kernel that runs clean but computes garbage fails too. Where the
extension can say which conv kernel a case runs (_cuda.conv1x1_kernel_name), the last line
lists the ones covered. Without a GPU (the dry run of the GPU check) the same cases run on
the torch backend on the CPU, which checks this script's own code.
"""
import argparse
import sys

import torch

import fastconv
import fastconv._checks
import fastconv._cuda
from fastconv import reference

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
            if tf32:
                continue  # TF32 changes only the conv
            a, c = tensor((2, 17, 9, 11), dtype, layout), tensor((2, 17, 9, 11), dtype, "nhwc")
            yield f"residual_add relu {dn} {layout}", "residual_add", (a, c, True)
            yield f"residual_add no relu {dn} {layout}", "residual_add", (a, a, False)
            yield f"max_pool2d_same 3/2 {dn} {layout}", "max_pool2d_same", (x17, 3, 2)
            yield f"avg_pool2d_same (3,2)/(2,1) {dn} {layout}", "avg_pool2d_same", (x17, (3, 2), (2, 1))
        if dn in ("fp16", "tf32"):  # a grid large enough for the tensor-core GEMM's largest tile
            x = tensor((4, 64, 33, 33), dtype, "nhwc")
            yield f"conv1x1_relu 64->2048 large grid {dn} nhwc", CONV, (x, weight(2048, 64, dtype), None, 1, True)


def weight(cout, cin, dtype):
    return torch.randn(cout, cin, 1, 1, device=DEVICE).to(dtype) / cin ** 0.5


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


def conv_kernel_name(args, tf32):
    """Which CUDA conv kernel runs these arguments, where the extension says (else None)."""
    name_of = getattr(fastconv._cuda, "conv1x1_kernel_name", None)
    if not ON_GPU or name_of is None:
        return None
    x, w, b, stride, relu, *residual = args
    shape = (x.shape[0], w.shape[0], (x.shape[2] - 1) // stride + 1, (x.shape[3] - 1) // stride + 1)
    try:
        out = fastconv._checks.empty_like_layout(x, shape)
        return name_of(x, w, b, out, stride, relu, tf32, *residual)
    except Exception as e:  # an API of the extension's that changed: report, do not stop the check
        return f"? ({type(e).__name__})"


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
    bad, kernels = 0, set()
    for name, op, op_args in cases():
        dn = name.split()[-2]
        if (args.op and op not in args.op) or (args.dtype and dn not in args.dtype):
            continue
        kernel = conv_kernel_name(op_args, DTYPES[dn][1]) if op == CONV else None
        print(f"... {name}{f' [{kernel}]' if kernel else ''}", flush=True)  # a fault names its case
        err = run_case(op, op_args, DTYPES[dn][1])
        ok = err <= DTYPES[dn][2]
        bad += not ok
        kernels.add(kernel)
        print(f"{'ok ' if ok else 'BAD'} {name}: fwd+bwd relative error {err:.2e}", flush=True)
    if kernels - {None}:
        print("conv kernels covered:", ", ".join(sorted(kernels - {None})))
    print(f"{bad} case(s) out of tolerance")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
