"""The zoo level: fastconv.convert over torchvision and timm CNNs, what it fused and
whether the converted model still computes the same function.

Per model: the 1x1 convs found (every nn.Conv2d with a 1x1 kernel, subclasses included),
the dense ones (exact nn.Conv2d, groups 1, dilation 1, no padding), how many of those
run as a fastconv op and how many still ran as an eager 1x1 conv in the converted
model's forward (counted by hooks: must be 0), the residual adds and pools fused, the
near misses by reason (other convs - 3x3, 5x5, ... - are counted apart), and the eval
relative error ||converted - eager|| / ||eager|| in fp32 on the backend given
(CPU: "torch"). Weights are random (nothing is downloaded), BN statistics randomized.
"""
import collections
import re
import time

import torch
from torch import nn

import fastconv
from fastconv import reference
from fastconv.convert.modules import Conv1x1BNAct, FusedSequential


def _tv(name, **kwargs):
    def build():
        import torchvision.models as tvm
        return getattr(tvm, name)(weights=None, **kwargs)
    return build


def _timm(name, **kwargs):
    def build():
        import timm
        return timm.create_model(name, pretrained=False, **kwargs)
    return build


# name: (builder, input size). Small inputs: the sweep runs on the CPU in a few minutes.
ZOO = {
    "tv/resnet18": (_tv("resnet18"), 64),
    "tv/resnet50": (_tv("resnet50"), 64),
    "tv/resnext50_32x4d": (_tv("resnext50_32x4d"), 64),
    "tv/googlenet": (_tv("googlenet", init_weights=True), 64),
    "tv/inception_v3": (_tv("inception_v3", init_weights=True, aux_logits=True), 96),
    "tv/vgg11_bn": (_tv("vgg11_bn"), 64),
    "tv/mobilenet_v2": (_tv("mobilenet_v2"), 64),
    "tv/mobilenet_v3_small": (_tv("mobilenet_v3_small"), 64),
    "tv/efficientnet_b0": (_tv("efficientnet_b0"), 64),
    "tv/densenet121": (_tv("densenet121"), 64),
    "tv/regnet_y_400mf": (_tv("regnet_y_400mf"), 64),
    "timm/resnet50d": (_timm("resnet50d"), 64),
    "timm/inception_v3": (_timm("inception_v3"), 96),
    "timm/efficientnet_b0": (_timm("efficientnet_b0"), 64),
    "timm/tf_efficientnet_b0": (_timm("tf_efficientnet_b0"), 64),
    "timm/mixnet_s": (_timm("mixnet_s"), 64),
    "timm/tf_mixnet_s": (_timm("tf_mixnet_s"), 64),
    "timm/densenet121": (_timm("densenet121"), 64),
    "timm/regnety_004": (_timm("regnety_004"), 64),
    "timm/mobilenetv3_small_100": (_timm("mobilenetv3_small_100"), 64),
    "timm/resnetv2_50x1_bit": (_timm("resnetv2_50x1_bit"), 64),
    "timm/resnetv2_50-stem_same": (_timm("resnetv2_50", stem_type="same"), 64),
}
QUICK = ["tv/resnet18", "timm/mobilenetv3_small_100"]

_OTHER_CONV = re.compile(r"^\d+x\d+ conv$")


def _is_residual(pattern):
    return pattern == "relu(a + b)" or "+ b)" in pattern


def _dense_1x1(m):
    return (type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.groups == 1
            and m.dilation == (1, 1) and m.padding in ((0, 0), "valid"))


def _fused_convs(model):
    """Paths of the 1x1 convs that run as a fastconv op in a converted model."""
    fused = set()
    for name, m in model.named_modules():
        if isinstance(m, Conv1x1BNAct):
            fused.add(name)
        elif isinstance(m, FusedSequential):
            fused.update(f"{name}.{i}" if name else str(i) for i in m.__dict__["runs"])
    return fused


def _forward_counting_eager_1x1(model, x):
    """(model(x), how many dense 1x1 nn.Conv2d forwards it ran)."""
    calls = [0]

    def hook(*_):
        calls[0] += 1
    hooks = [m.register_forward_hook(hook) for m in model.modules() if _dense_1x1(m)]
    try:
        with torch.no_grad():
            return model(x), calls[0]
    finally:
        for h in hooks:
            h.remove()


def sweep_model(name, backend="torch", batch=2, progress=True):
    build, size = ZOO[name]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = reference.randomize_batchnorm(build()).eval()
    x = torch.randn(batch, 3, size, size)
    converted = fastconv.convert(model, example_input=x)
    seconds = time.perf_counter() - t0
    report = converted.fastconv_report
    with torch.no_grad():
        ref = model(x)
        with fastconv.use_backend(backend):
            out, eager_1x1 = _forward_counting_eager_1x1(converted, x)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    dense = {n for n, m in model.named_modules() if _dense_1x1(m)}
    counts = report.counts()
    reasons = collections.Counter(r for _, r in report.skipped if not _OTHER_CONV.match(r))
    row = {
        "model": name, "input": f"{batch}x3x{size}x{size}", "1x1 convs": len(convs),
        "dense 1x1": len(dense), "dense fused": len(dense & _fused_convs(converted)),
        "eager 1x1 calls": eager_1x1,
        "residual adds fused": sum(c for p, c in counts.items() if _is_residual(p)),
        # pools made SAME; not the Inception pass's "max pool -> 1x1 conv" (a pool already counted)
        "pools fused": sum(c for p, c in counts.items() if "pool" in p.lower() and "->" not in p),
        "other convs": sum(1 for _, r in report.skipped if _OTHER_CONV.match(r)),
        "near misses": dict(reasons), "rel_err_vs_eager": reference.rel_error(out, ref),
        "backend": backend, "convert_s": round(seconds, 1),
        "patterns": dict(counts),
    }
    if progress:
        print(f"{name}: {row['dense fused']}/{row['dense 1x1']} dense 1x1 fused, "
              f"rel err {row['rel_err_vs_eager']:.1e}", flush=True)
    return row


def run_zoo(names=None, backend="torch", progress=True):
    return [sweep_model(n, backend, progress=progress) for n in (names or list(ZOO))]


def zoo_markdown(rows):
    head = ["model", "input", "1x1 convs", "dense 1x1", "dense fused", "eager 1x1 calls",
            "residual adds fused", "pools fused", "other convs", "near misses (reason: count)",
            "rel err vs eager"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        misses = "; ".join(f"{k}: {v}" for k, v in sorted(r["near misses"].items())) or "-"
        lines.append("| " + " | ".join(str(v) for v in (
            r["model"], r["input"], r["1x1 convs"], r["dense 1x1"], r["dense fused"],
            r["eager 1x1 calls"], r["residual adds fused"], r["pools fused"], r["other convs"],
            misses, f"{r['rel_err_vs_eager']:.1e}")) + " |")
    return "\n".join(lines) + "\n"
