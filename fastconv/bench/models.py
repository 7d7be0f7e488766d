"""The models level: whole networks in images/s, inference and one training step."""
import contextlib

import torch

import fastconv
from fastconv import reference
from fastconv.bench.cases import DTYPES
from fastconv.bench.timing import cuda_graphed, on_backend, time_ms

MODEL_TWINS = {  # fastconv builder name -> torchvision builder name
    "resnet50": "resnet50", "googlenet": "googlenet", "vgg16": "vgg16", "alexnet": "alexnet",
    "resnet18": "resnet18"}  # BasicBlocks: residual_add; the cheapest to build (the check's dry run)


@contextlib.contextmanager
def ieee_fp32():
    """float32 convolutions and matmuls without TF32 (eager convolutions use TF32 by default)."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def model_pair(name, device, dtype, batch, size=224):
    """(eager, ours, x, ref): torchvision's model and fastconv's with the same weights, eval,
    channels_last, in `dtype`; an input batch; and the float32 (IEEE) output of the same
    model on it, which eager's own error and ours are measured against. BatchNorm has random
    affine parameters and statistics measured on the input distribution
    (reference.calibrate_batchnorm), so activations keep a realistic scale and the error
    columns can fail."""
    import torchvision.models as tvm

    from fastconv import models
    torch.manual_seed(0)
    eager = getattr(tvm, MODEL_TWINS[name])(weights=None).to(device)
    shape = (max(batch, 2), 3, size, size)  # train-mode BN needs 2 samples
    reference.calibrate_batchnorm(eager, [torch.randn(shape, device=device) for _ in range(2)])
    eager = eager.eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), ieee_fp32():
        ref = eager(x)
    ours = getattr(models, name)()
    ours.load_state_dict(eager.state_dict())
    eager, ours = (m.eval().to(device, dtype, memory_format=torch.channels_last) for m in (eager, ours))
    return eager, ours, x.to(dtype), ref


def run_models(names, batch, dtype_name, provider_filter, train_step=True, size=224, on_rows=None):
    """Whole-network inference (and one training step) in images/s: fastconv's backends
    against the torchvision model in eager mode and under torch.compile, channels_last;
    relative errors against eager and against the float32 model. `on_rows(rows)` after each
    row (a killed run keeps them); the slow-to-build torch.compile providers run last."""
    on_gpu = torch.cuda.is_available()
    device, dtype = ("cuda" if on_gpu else "cpu"), DTYPES[dtype_name]
    rows = []
    for name in names:
        eager, ours, x, ref32 = model_pair(name, device, dtype, batch, size)
        with torch.no_grad():
            ref = eager(x)
            calls = {"eager": lambda: eager(x)}
            if on_gpu:
                for backend in [b for b in ("triton", "cuda") if b in fastconv.available_backends()]:
                    calls[backend] = (lambda b: lambda: on_backend(b, ours, (x,)))(backend)
                calls["eager+graph"] = cuda_graphed(eager, x)
                calls["triton+graph"] = cuda_graphed(lambda t: on_backend("triton", ours, (t,)), x)
                calls["compile"] = (lambda f: lambda: f(x))(torch.compile(eager))
                # the fastconv model under torch.compile (default mode; the ops stay opaque
                # custom ops, BN folded inside the graph), beside "compile" of the eager model
                calls["triton+compile"] = (lambda f: lambda: on_backend("triton", f, (x,)))(
                    torch.compile(ours))
            else:
                calls["torch"] = lambda: on_backend("torch", ours, (x,))
            for prov, call in calls.items():
                if provider_filter and prov.split("+")[0] not in provider_filter:
                    continue
                out = call()
                ms = time_ms(call, on_gpu)
                rows.append({"model": name, "batch": batch, "dtype": dtype_name, "mode": "inference",
                             "provider": prov, "median_ms": ms, "images/s": batch / ms * 1e3,
                             "max_abs_err_vs_eager": (out.float() - ref.float()).abs().max().item(),
                             "rel_err_vs_eager": reference.rel_error(out, ref),
                             "rel_err_vs_fp32": reference.rel_error(out, ref32)})
                if on_rows:
                    on_rows(rows)
        if train_step:
            rows += _train_rows(name, ours, eager, x, dtype_name, on_gpu, provider_filter)
            if on_rows:
                on_rows(rows)
    for row in rows:
        base = next(r for r in rows if r["model"] == row["model"] and r["mode"] == row["mode"]
                    and r["provider"] == "eager")
        row["vs_eager"] = base["median_ms"] / row["median_ms"]
    return rows


def _train_rows(name, ours, eager, x, dtype_name, on_gpu, provider_filter):
    """One SGD step (forward, backward, update) in train mode, images/s."""
    rows = []
    providers_ = {"eager": (eager, "torch")}
    for backend in [b for b in ("triton", "cuda") if b in fastconv.available_backends()] if on_gpu else ["torch"]:
        providers_[backend] = (ours, backend)
    for prov, (model, backend) in providers_.items():
        if provider_filter and prov not in provider_filter:
            continue
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)

        def step():
            with fastconv.use_backend(backend):
                out = model(x)
                loss = (out[0] if isinstance(out, tuple) else out).float().square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        ms = time_ms(step, on_gpu)
        rows.append({"model": name, "batch": x.shape[0], "dtype": dtype_name,
                     "mode": "train step", "provider": prov, "median_ms": ms,
                     "images/s": x.shape[0] / ms * 1e3, "max_abs_err_vs_eager": None,
                     "rel_err_vs_eager": None, "rel_err_vs_fp32": None})
        model.eval()
    return rows
