"""The zoo level: fastconv.convert over torchvision and timm CNNs, what it fused and
whether the converted model still computes the same function.

Per model: the 1x1 convs found (every nn.Conv2d with a 1x1 kernel, subclasses included),
the dense ones (exact nn.Conv2d, groups 1, dilation 1, no padding), how many of those
run as a fastconv op and how many still ran as an eager 1x1 conv in the converted
model's forward (counted by hooks: must be 0), the BatchNorm passes and channel
concatenations of one eval forward that the converted model no longer runs (counted in
the ops both forwards dispatch), the residual adds and pools fused, the near misses by
reason (convs other than 1x1 are counted apart), and the eval relative error
||converted - eager|| / ||eager|| in fp32 on the backend given (CPU: "torch"), beside eager's
own error against the model in float64 (the scale fp32 rounding reaches). Weights are
random (nothing is downloaded), BatchNorm calibrated on one random batch
(reference.calibrate_batchnorm: the outputs depend on the input).
"""
import collections
import copy
import re
import time

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

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
# BN is calibrated in train mode, where torchvision's Inception-v3 runs its aux head: it needs
# its native size (the eval forward runs at 96).
_CALIBRATION_SIZE = {"tv/inception_v3": 299}

_NOTHING_TO_FOLD = re.compile(r"^\d+x\d+ .*conv without a norm after it$")  # not a near miss


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


class _OpCounter(TorchDispatchMode):
    """Counts the ops a forward dispatches whose name holds one of `words`."""

    def __init__(self, words):
        super().__init__()
        self.counts = dict.fromkeys(words, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for word in self.counts:
            self.counts[word] += word in str(func.overloadpacket)
        return func(*args, **(kwargs or {}))


_COUNTED = ("batch_norm", "aten.cat")


def _forward_counting(model, x):
    """(model(x), how many dense 1x1 nn.Conv2d forwards it ran, {op: dispatches} of _COUNTED)."""
    calls = [0]

    def hook(*_):
        calls[0] += 1
    hooks = [m.register_forward_hook(hook) for m in model.modules() if _dense_1x1(m)]
    try:
        with torch.no_grad(), _OpCounter(_COUNTED) as ops:
            return model(x), calls[0], ops.counts
    finally:
        for h in hooks:
            h.remove()


def sweep_model(name, backend="torch", batch=2, progress=True):
    build, size = ZOO[name]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build()
    x = torch.randn(batch, 3, size, size)
    calibration = _CALIBRATION_SIZE.get(name, size)
    reference.calibrate_batchnorm(model, [torch.randn(batch, 3, calibration, calibration)]).eval()
    converted = fastconv.convert(model, example_input=x)
    seconds = time.perf_counter() - t0
    report = converted.fastconv_report
    ref, _, eager_ops = _forward_counting(model, x)
    with fastconv.use_backend(backend):
        out, eager_1x1, ops = _forward_counting(converted, x)
    with torch.no_grad():  # the yardstick: how far fp32 eager itself is from float64
        ref64 = copy.deepcopy(model).double()(x.double())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    dense = {n for n, m in model.named_modules() if _dense_1x1(m)}
    counts = report.counts()
    reasons = collections.Counter(r for _, r in report.skipped if not _NOTHING_TO_FOLD.match(r))
    row = {
        "model": name, "input": f"{batch}x3x{size}x{size}",
        "1x1 convs": sum(m.kernel_size == (1, 1) for m in convs),
        "dense 1x1": len(dense), "dense fused": len(dense & _fused_convs(converted)),
        "eager 1x1 calls": eager_1x1,
        "BN passes eager": eager_ops["batch_norm"], "BN passes converted": ops["batch_norm"],
        "cats eager": eager_ops["aten.cat"], "cats converted": ops["aten.cat"],
        "residual adds fused": sum(c for p, c in counts.items() if _is_residual(p)),
        "pools fused": sum(c for p, c in counts.items() if "pool" in p.lower()),  # (branch pools in a GEMM too)
        "other convs": sum(m.kernel_size != (1, 1) for m in convs),
        "near misses": dict(reasons), "rel_err_vs_eager": reference.rel_error(out, ref),
        "eager_rel_err_vs_fp64": reference.rel_error(ref, ref64),
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
    head = ["model", "input", "1x1 convs", "dense 1x1", "dense fused", "eager 1x1 calls", "BNs folded",
            "cats removed", "residual adds fused", "pools fused", "other convs", "near misses (reason: count)",
            "rel err vs eager", "eager's err vs fp64"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        misses = "; ".join(f"{k}: {v}" for k, v in sorted(r["near misses"].items())) or "-"
        lines.append("| " + " | ".join(str(v) for v in (
            r["model"], r["input"], r["1x1 convs"], r["dense 1x1"], r["dense fused"],
            r["eager 1x1 calls"], _removed(r, "BN passes"), _removed(r, "cats"),
            r["residual adds fused"], r["pools fused"], r["other convs"],
            misses, f"{r['rel_err_vs_eager']:.1e}", f"{r['eager_rel_err_vs_fp64']:.1e}")) + " |")
    return "\n".join(lines) + "\n"


def _removed(row, what):
    """"removed/eager" of the passes one eval forward dispatches ("-" where eager has none)."""
    eager = row[f"{what} eager"]
    return f"{eager - row[f'{what} converted']}/{eager}" if eager else "-"
