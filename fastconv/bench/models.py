"""The models level: whole networks in images/s, inference and one training step."""
import contextlib
import functools

import torch

import fastconv
from fastconv import reference
from fastconv.bench.cases import DTYPES, UsageError, check_dtypes
from fastconv.bench.progress import Progress
from fastconv.bench.timing import cuda_graphed, on_backend, time_ms

MODEL_TWINS = {  # fastconv builder name -> torchvision builder name
    "resnet50": "resnet50", "googlenet": "googlenet", "vgg16": "vgg16", "alexnet": "alexnet",
    "resnet18": "resnet18"}  # BasicBlocks: residual_add; the cheapest to build (the check's dry run)
# torchvision builder arguments: GoogLeNet's init_weights=True is its current default, passed
# so that torchvision does not warn (FutureWarning) that the default will change
TWIN_KWARGS = {"googlenet": {"init_weights": True}}


def provider_names(on_gpu):
    """What --provider may name for the models level here; "triton" also selects triton+graph
    and triton+compile, "eager" eager+graph."""
    if not on_gpu:
        return ["eager", "torch"]
    return ["eager", *[b for b in ("triton", "cuda") if b in fastconv.available_backends()], "compile"]


def check_providers(wanted, on_gpu, names=None):
    """Raise UsageError unless every name in `wanted` is one of `names` (default: provider_names)."""
    names = names or provider_names(on_gpu)
    bad = [w for w in wanted or () if w not in names]
    if bad:
        raise UsageError(f"--provider {' '.join(bad)}: not a provider of whole models on this machine "
                         f"({'GPU' if on_gpu else 'CPU'}); choose from {', '.join(names)}")


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
    eager = getattr(tvm, MODEL_TWINS[name])(weights=None, **TWIN_KWARGS.get(name, {})).to(device)
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


def run_models(names, batch, dtype_name, provider_filter, train_step=True, size=224, on_rows=None,
               progress=True):
    """Whole-network inference (and one training step) in images/s: fastconv's backends
    against the torchvision model in eager mode and under torch.compile, channels_last;
    relative errors against eager and against the float32 model. `on_rows(rows)` after each
    row (a killed run keeps them); the slow-to-build torch.compile providers run last.
    vs_eager is None where eager was not asked for."""
    on_gpu = torch.cuda.is_available()
    check_dtypes([dtype_name], on_gpu)
    check_providers(provider_filter, on_gpu)
    unknown = [n for n in names if n not in MODEL_TWINS]
    if unknown:
        raise UsageError(f"--model {' '.join(unknown)}: not a model of this level; choose from "
                         f"{', '.join(MODEL_TWINS)}")
    device, dtype = ("cuda" if on_gpu else "cpu"), DTYPES[dtype_name]
    rows = []
    shown = Progress(progress)
    for name in names:
        shown.step(f"{name}: building it and torchvision's twin (batch {batch}, {dtype_name}, {size}x{size})")
        eager, ours, x, ref32 = model_pair(name, device, dtype, batch, size)
        with torch.no_grad():
            ref = eager(x)
            calls = {"eager": functools.partial(eager, x)}
            if on_gpu:
                for backend in [b for b in ("triton", "cuda") if b in fastconv.available_backends()]:
                    calls[backend] = functools.partial(on_backend, backend, ours, (x,))
                calls["eager+graph"] = cuda_graphed(eager, x)
                calls["triton+graph"] = cuda_graphed(lambda t, m=ours: on_backend("triton", m, (t,)), x)
                calls["compile"] = functools.partial(torch.compile(eager), x)
                # the fastconv model under torch.compile (default mode; the ops stay opaque
                # custom ops, BN folded inside the graph), beside "compile" of the eager model
                calls["triton+compile"] = functools.partial(on_backend, "triton", torch.compile(ours), (x,))
            else:
                calls["torch"] = functools.partial(on_backend, "torch", ours, (x,))
            for prov, call in calls.items():
                if provider_filter and prov.split("+")[0] not in provider_filter:
                    continue
                shown.step(f"{name}: inference on {prov}")
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
            rows += _train_rows(name, ours, eager, x, dtype_name, on_gpu, provider_filter, shown)
            if on_rows:
                on_rows(rows)
    shown.close()
    for row in rows:
        base = [r for r in rows if r["model"] == row["model"] and r["mode"] == row["mode"]
                and r["provider"] == "eager"]
        row["vs_eager"] = base[0]["median_ms"] / row["median_ms"] if base else None
    return rows


def _train_step(model, backend, opt, x):
    with fastconv.use_backend(backend):
        out = model(x)
        loss = (out[0] if isinstance(out, tuple) else out).float().square().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _train_rows(name, ours, eager, x, dtype_name, on_gpu, provider_filter, shown):
    """One SGD step (forward, backward, update) in train mode, images/s."""
    rows = []
    providers_ = {"eager": (eager, "torch")}
    for backend in [b for b in ("triton", "cuda") if b in fastconv.available_backends()] if on_gpu else ["torch"]:
        providers_[backend] = (ours, backend)
    for prov, (model, backend) in providers_.items():
        if provider_filter and prov not in provider_filter:
            continue
        shown.step(f"{name}: one training step on {prov}")
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        ms = time_ms(functools.partial(_train_step, model, backend, opt, x), on_gpu)
        rows.append({"model": name, "batch": x.shape[0], "dtype": dtype_name,
                     "mode": "train step", "provider": prov, "median_ms": ms,
                     "images/s": x.shape[0] / ms * 1e3, "max_abs_err_vs_eager": None,
                     "rel_err_vs_eager": None, "rel_err_vs_fp32": None})
        model.eval()
    return rows
