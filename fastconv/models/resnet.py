"""ResNet-18/34/50/101/152 and the plain (shortcut-free) 18/34 on fastconv's ops.

Built with torchvision's own ResNet constructor and these blocks, so the
architecture, parameter names and initialisation are torchvision's and its state
dicts load strictly. On fastconv ops:
  - every 1x1 conv + BN (+ ReLU): Bottleneck's conv1/bn1/relu, and each projection
    shortcut (downsample: 1x1 conv stride s + BN, no ReLU), with BN folded into the conv
    in eval mode (in train mode BN stays a layer; only the conv is ours);
  - every residual relu(out + identity): in a Bottleneck, in eval mode, inside conv3's
    epilogue (conv3 + bn3 + add + ReLU in one kernel); otherwise residual_add;
  - the stem max pool wherever its geometry equals SAME (odd input sizes; on even
    sizes it pads symmetrically and runs on PyTorch's kernel).
The 3x3 and 7x7 convolutions and the head are PyTorch's; in eval mode the BN after each of
them is folded into its weights (one convolution, as deployment tools run it).
Every fold is computed once and cached until a parameter or statistic changes
(fastconv.fusion.folded).
"""
import torch
from torchvision.models import resnet as tv

from fastconv import ops
from fastconv.fusion import conv1x1_bn_act, conv_bn_act
from fastconv.nn import FusedMaxPool2d


def _shortcut(block, x):
    if block.downsample is None:
        return x
    conv, bn = block.downsample
    return conv1x1_bn_act(x, conv, bn, relu=False)


def _conv_bn_twice(block, x, relu_last):
    """conv1 + bn1 + ReLU, then conv2 + bn2 (+ ReLU): the body both 3x3 blocks share."""
    out = conv_bn_act(x, block.conv1, block.bn1, relu=True)
    return conv_bn_act(out, block.conv2, block.bn2, relu=relu_last)


class BasicBlock(tv.BasicBlock):
    def forward(self, x):
        return ops.residual_add(_conv_bn_twice(self, x, relu_last=False), _shortcut(self, x))


class Bottleneck(tv.Bottleneck):
    def forward(self, x):
        out = conv1x1_bn_act(x, self.conv1, self.bn1, relu=True)
        out = conv_bn_act(out, self.conv2, self.bn2, relu=True)
        return conv1x1_bn_act(out, self.conv3, self.bn3, relu=True, residual=_shortcut(self, x))


class PlainBlock(tv.BasicBlock):
    """BasicBlock without its shortcut: the "plain network" of the ResNet paper."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.downsample = None  # no projection either: nothing is added

    def forward(self, x):
        return _conv_bn_twice(self, x, relu_last=True)


class ResNet(tv.ResNet):
    """torchvision's ResNet whose stem conv + BN + ReLU runs as conv_bn_act."""

    def _forward_impl(self, x):
        x = self.maxpool(conv_bn_act(x, self.conv1, self.bn1, relu=True))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _resnet(block, layers, num_classes):
    model = ResNet(block, layers, num_classes=num_classes)
    model.maxpool = FusedMaxPool2d(kernel_size=3, stride=2, padding=1)
    return model


def _builder(name, block, layers):
    def build(num_classes=1000):
        return _resnet(block, layers, num_classes)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{name}: torchvision's architecture and parameter names on fastconv's ops."
    return build


# torchvision's depths (blocks per stage)
resnet18 = _builder("resnet18", BasicBlock, [2, 2, 2, 2])
resnet34 = _builder("resnet34", BasicBlock, [3, 4, 6, 3])
resnet50 = _builder("resnet50", Bottleneck, [3, 4, 6, 3])
resnet101 = _builder("resnet101", Bottleneck, [3, 4, 23, 3])
resnet152 = _builder("resnet152", Bottleneck, [3, 8, 36, 3])
plain18 = _builder("plain18", PlainBlock, [2, 2, 2, 2])
plain34 = _builder("plain34", PlainBlock, [3, 4, 6, 3])
