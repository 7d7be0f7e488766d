"""What the static gate compiles: the Triton kernels fastconv can launch, each called through its
real launcher on CPU tensors (the launchers choose tiles, TMA and flags as on a GPU), at the
configurations the pruner, the tuner, a tuning table or the rule can select.

A Case is one launcher call; each of its launches (split-K: the GEMM and its reduction; the
max-pool backward: the argmax forward and the gather) becomes a row of the table.
  everyday  every shipped config at one representative shape per op form (the worst epilogue
            for registers: bias + residual + ReLU), and the rule's config in every epilogue,
            dtype, layout and output alignment;
  full      adds fp16 and the plain epilogue at every config, the configs the pruner drops
            for a dtype (to show why), every fused-op shape of ResNet-50 and GoogLeNet at the
            rule, strided and NCHW variants, odd channel counts and float64.
"""
import importlib
import json
from dataclasses import dataclass, field

import torch

from fastconv import _checks, _tuning
from fastconv._launcher_contract import BINARY_ADD, BINARY_ADD_RELU, BINARY_RELU_GRAD
from fastconv._triton import elementwise, pool_conv1x1, pool_same
from fastconv.ops.pool_same import same_geometry

tconv = importlib.import_module("fastconv._triton.conv1x1")  # the package exports a function of that name

# name -> (torch dtype, TF32 allowed); "fp32" is IEEE float32 (TF32 off)
DTYPES = {"bf16": (torch.bfloat16, False), "fp16": (torch.float16, False), "tf32": (torch.float32, True),
          "fp32": (torch.float32, False), "fp64": (torch.float64, False)}
SMEM_BYTES = {80: 166912, 90: tconv.SMEM_BYTES_SM90}  # per block, opt-in maximum (A100, H100/H200)


@dataclass(frozen=True)
class Case:
    form: str        # the op form (table groups and budgets key on it)
    config: str
    dtype: str       # a DTYPES name
    layout: str      # of the input: nhwc, nchw, strided
    epilogue: str
    shape: str       # the launcher's main input, N x C x H x W (-> Cout)
    align: int       # the largest of 16, 8, 1 dividing the output's channel count
    selectable: bool  # can the pruner, the tuner, a tuning table or the rule pick it?
    run: object = field(compare=False, repr=False)  # the launcher call
    smem_estimate: int = 0  # the pruner's estimate of the GEMM's shared memory (0: none)


def _tensor(shape, dtype, layout="nhwc"):
    """Uninitialised (nothing runs): only shapes, strides and alignment matter."""
    if layout == "strided":  # every other channel and column of a larger tensor
        N, C, H, W = shape
        return torch.empty(N, 2 * C, H, 2 * W, dtype=dtype)[:, ::2, :, ::2]
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    return torch.empty(shape, dtype=dtype, memory_format=fmt)


def _shape(shape, cout=None):
    return "x".join(map(str, shape)) + (f"->{cout}" if cout is not None else "")


def _align(c):
    return 16 if c % 16 == 0 else 8 if c % 8 == 0 else 1


def _label(c, rule=None):
    text = f"{c.block_m}x{c.block_n}x{c.block_k} w{c.num_warps} s{c.num_stages}"
    text += f" split{c.split_k}" if c.split_k > 1 else ""
    return text + (" (rule)" if c == rule else "")


def conv(dtype, config=None, layout="nhwc", shape=(8, 512, 28, 28), cout=256, stride=1,
         bias=True, relu=True, residual=True, selectable=True):
    """The 1x1 conv GEMM at `config` (None: what the launcher chooses, the rule off a GPU)."""
    dt, tf32 = DTYPES[dtype]
    N, C, H, W = shape
    x = _tensor(shape, dt, layout)
    w, b = torch.empty(cout, C, 1, 1, dtype=dt), torch.empty(cout, dtype=dt) if bias else None
    out = _checks.empty_like_layout(x, (N, cout, (H - 1) // stride + 1, (W - 1) // stride + 1))
    r = torch.empty_like(out) if residual else None
    rule, _ = tconv.choose_config(x, w, out, stride, relu, r, tf32=tf32)
    config = config or rule

    def run():
        tconv.launch(x, w, b, out, stride, relu, tf32, r, config)
    epilogue = "+".join(n for n, on in (("bias", bias), ("res", residual), ("relu", relu)) if on) or "none"
    return Case("conv1x1", _label(config, rule) + (f" stride{stride}" if stride > 1 else ""), dtype, layout,
                epilogue, _shape(shape, cout), _align(cout), selectable, run, tconv.pipeline_smem(config, dt.itemsize))


def conv_backward(dtype, config=None, shape=(8, 256, 28, 28), relu=True):
    """The ReLU mask + bias gradient (and its reduction) at `config` (None: the rule)."""
    dt = DTYPES[dtype][0]
    grad, y = _tensor(shape, dt), _tensor(shape, dt)
    g, db = torch.empty_like(y), torch.empty(shape[1], dtype=torch.float32)
    rule = tconv.grad_config(shape[1])
    config = config or rule
    label = f"{config.block_p}x{config.block_c} w{config.num_warps}" + (" (rule)" if config == rule else "")
    return Case("conv1x1 bwd", label, dtype, "nhwc", "relu" if relu else "none", _shape(shape), _align(shape[1]), True,
                lambda: tconv.launch_grad(grad, y, g, db, relu, config))


def binary(dtype, op, shape=(8, 256, 28, 28), layouts=("nhwc", "nhwc")):
    dt = DTYPES[dtype][0]
    a, b = _tensor(shape, dt, layouts[0]), _tensor(shape, dt, layouts[1])
    out = _checks.empty_like_layout(a, shape)
    name = {BINARY_ADD: "add", BINARY_ADD_RELU: "add+relu", BINARY_RELU_GRAD: "relu_grad"}[op]
    layout = layouts[0] if layouts[0] == layouts[1] else "+".join(layouts)
    return Case("residual_add" if op != BINARY_RELU_GRAD else "relu_backward", "rule", dtype, layout, name,
                _shape(shape), _align(shape[1]), True, lambda: elementwise.binary(a, b, out, op))


def pool(dtype, kind, k, s, shape=(8, 192, 28, 28), layout="nhwc"):
    """kind: max, avg (forward), max+idx (the backward's argmax forward), max bwd, avg bwd."""
    dt = DTYPES[dtype][0]
    N, C, H, W = shape
    x = _tensor(shape, dt, layout)
    geometry, out_hw, _ = same_geometry(H, W, (k, k), (s, s))
    out = _checks.empty_like_layout(x, (N, C) + out_hw)
    idx = _checks.empty_like_layout(x, out.shape, torch.int32)
    is_max = kind.startswith("max")
    if kind.endswith("bwd"):
        def run():
            if is_max:
                pool_same.pool_forward(x, torch.empty_like(out), idx, geometry, True)
            pool_same.pool_backward(out, torch.empty_like(x), idx if is_max else None, geometry, is_max)
    else:
        def run():
            pool_same.pool_forward(x, out, idx if kind == "max+idx" else None, geometry, is_max)
    form = ("max_pool" if is_max else "avg_pool") + (" bwd" if kind.endswith("bwd") else "")
    return Case(form, f"rule k{k}s{s}", dtype, layout, "argmax" if kind == "max+idx" else "-", _shape(shape),
                _align(C), True, run)


def inception(dtype, pool, shape=(8, 192, 28, 28), widths=(64, 96, 16), layout="nhwc", block=256, proj=32):
    """An Inception block's 1x1 convs (default: GoogLeNet 3a's): branch1 into its slice of the
    block's output buffer and the two reductions (pool=False), or the pool projection into
    the last `proj` channels (its max pool in the operand load)."""
    dt, tf32 = DTYPES[dtype]
    N, C, H, W = shape
    x = _tensor(shape, dt, layout)
    block_out = _checks.empty_like_layout(x, (N, block, H, W))
    if pool:
        outs = [block_out[:, block - proj:]]
    else:
        outs = [block_out[:, :widths[0]]] + [_checks.empty_like_layout(x, (N, c, H, W)) for c in widths[1:]]
    cout = sum(o.shape[1] for o in outs)
    w, b = torch.empty(cout, C, 1, 1, dtype=dt), torch.empty(cout, dtype=dt)
    return Case("pool projection" if pool else "inception 1x1s", "rule", dtype, layout, "bias+relu",
                _shape(shape, cout), min(_align(o.shape[1]) for o in outs), True,
                lambda: pool_conv1x1.conv1x1_split(x, w, b, outs, pool, tf32))


def _table_configs():
    """(dtype name, GemmConfig) of every conv entry of the committed tuning tables."""
    found = set()
    for path in sorted(_tuning.TABLE_DIR.glob("*.json")):
        for e in json.loads(path.read_text())["entries"]:
            if e["op"] == "conv1x1_relu" and e.get("config"):
                found.add((e["key"][0], tconv.GemmConfig(**e["config"])))
    return sorted(found, key=str)


def everyday(arch=90):
    cases = []
    for dtype in ("bf16", "tf32", "fp32"):  # every config the tuner may try, at the worst epilogue
        cases += [conv(dtype, c) for c in tconv.tuning_candidates(DTYPES[dtype][0], DTYPES[dtype][1],
                                                                   SMEM_BYTES[arch])]
    cases += [conv(d, c) for d, c in _table_configs()]
    for dtype in ("bf16", "fp16", "tf32", "fp32"):  # the rule in every epilogue and alignment
        cases += [conv(dtype), conv(dtype, bias=False, relu=False, residual=False),
                  conv(dtype, residual=False, cout=24), conv(dtype, shape=(8, 256, 56, 56), cout=512,
                                                             stride=2, relu=False, residual=False)]
    cases += [conv("bf16", layout="nchw", residual=False)]
    cases += [conv_backward("bf16", c) for c in tconv.grad_configs()] + [conv_backward("bf16")]
    cases += [binary("bf16", op) for op in (BINARY_ADD_RELU, BINARY_ADD, BINARY_RELU_GRAD)]
    cases += [pool("bf16", kind, k, s) for kind, k, s in
              (("max", 3, 2), ("max", 3, 1), ("avg", 3, 1), ("max+idx", 3, 2), ("max bwd", 3, 2), ("avg bwd", 3, 1))]
    cases += [inception(d, p) for d in ("bf16", "tf32") for p in (False, True)]
    cases += [inception("bf16", False, (8, 480, 14, 14), (160, 112, 24), block=512)]  # 4b: 24 channels
    return _dedupe(cases)


def full(arch=90):
    from fastconv.bench.cases import model_shapes

    cases = everyday(arch)
    for dtype in ("bf16", "fp16", "tf32"):  # IEEE fp32 has its own candidates (in everyday)
        dt, tf32 = DTYPES[dtype]
        tunable = tconv.tuning_candidates(dt, tf32, SMEM_BYTES[arch])
        for c in tconv.gemm_configs():
            cases += [conv(dtype, c, selectable=c in tunable), conv(dtype, c, residual=False, selectable=c in tunable)]
    for dtype in ("bf16", "tf32"):
        for kind, *s in model_shapes():
            if kind in ("conv", "convres"):
                cin, hw, cout, stride, relu = s
                cases.append(conv(dtype, shape=(8, cin, hw, hw), cout=cout, stride=stride, relu=relu,
                                  residual=kind == "convres"))
            elif kind == "residual":
                cases.append(binary(dtype, BINARY_ADD_RELU, (8, s[0], s[1], s[1])))
            elif kind in ("max", "avg"):
                c, hw, k, st = s
                cases += [pool(dtype, kind, k, st, (8, c, hw, hw)), pool(dtype, kind + " bwd", k, st, (8, c, hw, hw))]
            elif kind == "poolconv":
                cases.append(inception(dtype, True, (8, s[0], s[1], s[1]), block=s[2] + 256, proj=s[2]))
    for layout in ("nchw", "strided"):
        cases += [conv("bf16", layout=layout), conv("tf32", layout=layout), pool("bf16", "max", 3, 2, layout=layout),
                  pool("bf16", "max bwd", 3, 2, layout=layout), inception("bf16", True, layout=layout),
                  inception("bf16", False, layout=layout)]
    cases += [binary("bf16", BINARY_ADD_RELU, layouts=("nhwc", "nchw")), binary("bf16", BINARY_ADD_RELU,
                                                                           layouts=("nchw", "nchw"))]
    cases += [conv("bf16", cout=17), pool("bf16", "max", 3, 2, (8, 17, 28, 28)), conv("fp64", residual=False)]
    return _dedupe(cases)


def _dedupe(cases):
    return list({(c.form, c.config, c.dtype, c.layout, c.epilogue, c.shape): c for c in cases}.values())
