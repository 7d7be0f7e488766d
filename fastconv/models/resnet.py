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


class BasicBlock(tv.BasicBlock):
    def forward(self, x):
        out = conv_bn_act(x, self.conv1, self.bn1, relu=True)
        out = conv_bn_act(out, self.conv2, self.bn2, relu=False)
        return ops.residual_add(out, _shortcut(self, x))


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
        out = conv_bn_act(x, self.conv1, self.bn1, relu=True)
        return conv_bn_act(out, self.conv2, self.bn2, relu=True)


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


def resnet18(num_classes=1000):
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes)


def resnet34(num_classes=1000):
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes)


def resnet50(num_classes=1000):
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes)


def resnet101(num_classes=1000):
    return _resnet(Bottleneck, [3, 4, 23, 3], num_classes)


def resnet152(num_classes=1000):
    return _resnet(Bottleneck, [3, 8, 36, 3], num_classes)


def plain18(num_classes=1000):
    return _resnet(PlainBlock, [2, 2, 2, 2], num_classes)


def plain34(num_classes=1000):
    return _resnet(PlainBlock, [3, 4, 6, 3], num_classes)
