"""`python -m fastconv.demo` (what `make demo` runs), on whatever device is here:
1. each fused op against eager PyTorch: relative error against a float64 reference
   and, on a GPU, the median time of both (triton.testing.do_bench, L2 flushed);
2. the model equivalence check: fastconv's ResNet-50 and GoogLeNet against
   torchvision's with the same weights;
3. the quick benchmark (python -m fastconv.bench --quick).

Without a GPU the Triton kernels run through Triton's interpreter at small sizes
(slow, so no times): it shows they work, not how fast they are.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import torch.nn.functional as F  # noqa: E402

import fastconv  # noqa: E402
from fastconv import reference  # noqa: E402


def _cases(device, dtype, big):
    """(name, fastconv call, eager call, float64 reference) at a ResNet-50 / Inception size."""
    n, c, hw = (64, 256, 56) if big else (2, 32, 9)
    x = torch.randn(n, c, hw, hw, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    r = torch.randn_like(x)
    w = (torch.randn(c // 4, c, 1, 1, device=device) / c ** 0.5).to(dtype)
    b = torch.randn(c // 4, device=device).to(dtype)
    pads = (1, 1, 1, 1)  # 3x3 stride 1 SAME pads one cell each side
    return [
        ("conv1x1+bias+relu", lambda: fastconv.conv1x1_relu(x, w, b),
         lambda: torch.relu(F.conv2d(x, w, b)), lambda: reference.conv1x1_relu(x, w, b)),
        ("residual add+relu", lambda: fastconv.residual_add(x, r),
         lambda: torch.relu(x + r), lambda: reference.residual_add(x, r)),
        ("max pool 3x3/1 SAME", lambda: fastconv.max_pool2d_same(x, 3, 1),
         lambda: F.max_pool2d(F.pad(x, pads, value=float("-inf")), 3, 1),
         lambda: reference.max_pool2d_same(x, 3, 1)),
        ("avg pool 3x3/2 SAME", lambda: fastconv.avg_pool2d_same(x, 3, 2),
         None, lambda: reference.avg_pool2d_same(x, 3, 2)),
    ]


def main():
    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    backends = [b for b in fastconv.available_backends() if b != "torch" or not on_gpu]
    print(f"fastconv {fastconv.__version__} on {torch.cuda.get_device_name() if on_gpu else 'CPU'}, "
          f"torch {torch.__version__}, {dtype}, backends {backends}")
    if not on_gpu:
        print("No GPU: the Triton kernels run in Triton's interpreter at a small size; no times.")
    torch.manual_seed(0)
    for name, ours, eager, ref in _cases(device, dtype, big=on_gpu):
        expected = ref()
        line = f"{name:22s}"
        for backend in backends:
            with fastconv.use_backend(backend):
                out = ours()
                line += f" | {backend}: err {reference.rel_error(out, expected):.1e}"
                if on_gpu:
                    line += f" {_ms(ours) * 1e3:7.1f} us"
        if eager is not None:
            line += f" | eager: err {reference.rel_error(eager(), expected):.1e}"
            if on_gpu:
                line += f" {_ms(eager) * 1e3:7.1f} us"
        else:
            line += " | eager: no SAME average pool in PyTorch"
        print(line)


def check_models(device, backends):
    """fastconv's models against torchvision's (same weights, eval mode), per backend."""
    import torchvision.models as tvm

    from fastconv import models
    from fastconv.bench.models import TWIN_KWARGS
    print("\nModel equivalence (eval, float32, relative error against torchvision):")
    for name, size in (("resnet50", 224), ("googlenet", 224)):
        torch.manual_seed(0)
        twin = getattr(tvm, name)(weights=None, **TWIN_KWARGS.get(name, {}))
        twin = reference.randomize_batchnorm(twin).eval().to(device)
        ours = getattr(models, name)().eval().to(device)
        ours.load_state_dict(twin.state_dict())
        for backend in backends:
            s = size if device == "cuda" or backend != "triton" else 64  # the interpreter is slow
            x = torch.randn(2, 3, s, s, device=device)
            with torch.no_grad(), fastconv.use_backend(backend):
                out, ref = ours(x), twin(x)
            err = reference.rel_error(out, ref) if ref.abs().max() > 0 else float("inf")
            print(f"  {name:10s} {backend:7s} {s}x{s}: {err:.1e} {'ok' if err < 1e-4 else 'MISMATCH'}")


def _ms(fn):
    import triton.testing
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


if __name__ == "__main__":
    main()
    on_gpu = torch.cuda.is_available()
    check_models("cuda" if on_gpu else "cpu",
                 [b for b in fastconv.available_backends() if b != "torch" or not on_gpu])
    print()
    from fastconv import bench
    bench.main(["--quick"])
