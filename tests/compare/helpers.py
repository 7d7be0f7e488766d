"""Models for the fastconv.compare tests, and the ways to break one fused layer of a candidate.

Every reference has random weights at their default scales and BatchNorm statistics measured
on random inputs (fastconv.reference.calibrate_batchnorm), so each layer's output depends on
its input and a wrong layer shows. Each model is built, calibrated and converted once per
process (seconds); every test gets its own copies, to break as it likes."""
import copy
import functools

import torch
from torch import nn

import fastconv
from fastconv import reference


class Block(nn.Module):
    """A residual block: 1x1 conv + BN + ReLU (fused by convert), 3x3 conv + BN, add + ReLU."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + x)


def tiny_cnn():
    """A small CNN with each pattern convert fuses: a SAME max pool, a 1x1 conv + BN + ReLU in a
    traced block, a residual add + ReLU, a 1x1 conv + BN + ReLU fused by position."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.MaxPool2d(3, 2, padding=1), Block(16), nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))


def _build(name):
    if name == "tiny":
        return tiny_cnn()
    if name.startswith("timm:"):
        import timm

        return timm.create_model(name[5:], pretrained=False)
    import torchvision

    return torchvision.models.get_model(name, weights=None, **({"init_weights": True} if name == "googlenet" else {}))


# The input: the smallest that runs every layer, 32x32 for the ImageNet models (their stride is
# 32: the last stage sees 1x1). BN statistics are measured on 2 images of that size; the train
# step (resnet18, BN on batch statistics, 1x1 in its last stage) needs 2 images too.
SHAPES = {"tiny": (2, 3, 15, 15), "googlenet": (1, 3, 32, 32), "resnet50": (1, 3, 32, 32),
          "timm:resnet26d": (1, 3, 32, 32), "timm:efficientnet_b0": (1, 3, 32, 32), "resnet18": (2, 3, 32, 32)}


@functools.lru_cache(maxsize=None)
def _calibrated(name):
    torch.manual_seed(0)
    model = _build(name)
    g = torch.Generator().manual_seed(1)
    reference.calibrate_batchnorm(model, [torch.randn(2, *SHAPES[name][1:], generator=g) for _ in range(2)])
    x = torch.randn(SHAPES[name], generator=g)
    return model.eval(), x


@functools.lru_cache(maxsize=None)
def _converted(name):
    model, x = _calibrated(name)
    return fastconv.convert(model, example_input=x)


def converted(name, dtype=torch.float32):
    """(reference, converted copy, input), all in `dtype`; the copies are the caller's to break."""
    model, x = _calibrated(name)
    return copy.deepcopy(model).to(dtype), copy.deepcopy(_converted(name)).to(dtype), x.to(dtype)


def rebuilt(name, dtype=torch.float32):
    """(torchvision reference, fastconv.models twin with its weights, input), in `dtype`."""
    import fastconv.models

    model, x = _calibrated(name)
    twin = getattr(fastconv.models, name)()
    twin.load_state_dict(model.state_dict())
    return copy.deepcopy(model).to(dtype), twin.eval().to(dtype), x.to(dtype)


def fold(conv, bn, dtype):
    """(weight, bias) of conv + eval BN folded, computed in `dtype`."""
    scale = torch.rsqrt(bn.running_var.to(dtype) + bn.eps) * bn.weight.to(dtype)
    bias = bn.bias.to(dtype) - bn.running_mean.to(dtype) * scale
    if conv.bias is not None:
        bias = bias + conv.bias.to(dtype) * scale
    return conv.weight.to(dtype) * scale.view(-1, 1, 1, 1), bias


def perturb_folded_bias(ref, cand, conv_path, bn_path, ulps=1000):
    """Move the folded bias of the candidate's fused conv + BN by `ulps` units in the last place
    of the model's dtype, in the output channel with the largest bias: through the BN's bias,
    which the fold adds as it is (the candidate's BN is its own copy)."""
    dtype = ref.get_submodule(conv_path).weight.dtype
    _, bias = fold(ref.get_submodule(conv_path), ref.get_submodule(bn_path), torch.float64)
    c = int(bias.abs().argmax())
    ulp = torch.finfo(dtype).eps * 2.0 ** torch.floor(torch.log2(bias[c].abs())).item()
    with torch.no_grad():
        cand.get_submodule(bn_path).bias[c] += ulps * ulp


def patch_forward(module, wrap):
    """Replace module.forward by wrap(original forward) on this instance (hooks still run)."""
    module.forward = wrap(module.forward)


def shift_pool_window(cand, path):
    """The pool at `path` reads its windows one column to the left (its input rolled by one)."""
    patch_forward(cand.get_submodule(path), lambda forward: lambda x: forward(x.roll(1, -1)))


def write_to_wrong_slice(cand, path, width, by=8):
    """The block at `path` writes its last branch (`width` channels) `by` channels too early."""
    def wrap(forward):
        def wrong(*args, **kwargs):
            y = forward(*args, **kwargs).clone()
            y[:, -width - by:-by] = y[:, -width:].clone()
            return y
        return wrong
    patch_forward(cand.get_submodule(path), wrap)


def fold_in_bf16(ref, cand, conv_path, bn_path):
    """The fused 1x1 conv + BN + ReLU at conv_path computes its BN fold in bfloat16."""
    weight, bias = fold(ref.get_submodule(conv_path), ref.get_submodule(bn_path), torch.bfloat16)
    dtype = ref.get_submodule(conv_path).weight.dtype
    weight, bias = weight.to(dtype), bias.to(dtype)
    patch_forward(cand.get_submodule(conv_path),
                  lambda forward: lambda x: fastconv.conv1x1_relu(x, weight, bias, relu=True))


def accumulate_in_bf16(ref, cand, conv_path, bn_path):
    """The fused 1x1 conv + BN + ReLU at conv_path (a bf16 model) sums its K products in a
    bfloat16 accumulator (rounded after each add) instead of fp32."""
    weight, bias = fold(ref.get_submodule(conv_path), ref.get_submodule(bn_path), torch.float32)
    weight, bias = weight[:, :, 0, 0].bfloat16().float(), bias.bfloat16().float()

    def forward(x):
        acc = torch.zeros(x.shape[0], weight.shape[0], *x.shape[2:], dtype=torch.bfloat16)
        for k in range(weight.shape[1]):
            acc = (acc.float() + weight[:, k].view(1, -1, 1, 1) * x[:, k:k + 1].float()).bfloat16()
        return torch.relu(acc.float() + bias.view(1, -1, 1, 1)).bfloat16()
    patch_forward(cand.get_submodule(conv_path), lambda _: forward)
