"""GoogLeNet (Inception v1) and its Inception module on fastconv's ops.

Built with torchvision's GoogLeNet constructor and these blocks: architecture,
parameter names (aux heads included), BatchNorm (eps 0.001), transform_input and
the train-mode aux outputs are torchvision's, and its state dicts load strictly.
On fastconv ops:
  - every 1x1 conv + BN + ReLU (conv2, each Inception's branch1, the 1x1 reductions of
    branch2/branch3, the pool projection of branch4, each aux head's conv): 37 in the
    trunk, BN folded into the conv in eval mode;
  - every max pool (maxpool1-4: 3x3/2 and 2x2/2 with ceil_mode, and each branch4's
    3x3/1 pad 1): all exactly SAME pooling;
  - each aux head's fc1 + ReLU (a 1x1 conv over a 1x1 image).
The 7x7 and 3x3 convolutions (torchvision's "5x5" branch is a 3x3, its issue #906)
and the head are PyTorch's; in eval mode the BN after each of them is folded into its
weights (one convolution). Every fold is computed once and cached until a parameter or
statistic changes (fastconv.fusion.folded).
"""
import importlib

from torch import nn

from fastconv.fusion import conv1x1_bn_act, conv_bn_act
from fastconv.nn import FusedMaxPool2d, LinearReLU

tv = importlib.import_module("torchvision.models.googlenet")  # the module, not the function


class BasicConv2d(tv.BasicConv2d):
    def forward(self, x):
        if self.conv.kernel_size == (1, 1):
            return conv1x1_bn_act(x, self.conv, self.bn, relu=True)
        return conv_bn_act(x, self.conv, self.bn, relu=True)


class Inception(tv.Inception):
    """The Inception module: 1x1, 1x1 -> 3x3, 1x1 -> 3x3 and 3x3 max pool -> 1x1
    branches, concatenated (course example: 192 -> 64 + 128 + 32 + 32 = 256 channels)."""

    def __init__(self, in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
        super().__init__(in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj,
                         conv_block=BasicConv2d)
        self.branch4[0] = FusedMaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True)


class InceptionAux(tv.InceptionAux):
    def __init__(self, in_channels, num_classes, dropout=0.7):
        super().__init__(in_channels, num_classes, conv_block=BasicConv2d, dropout=dropout)
        fc1 = LinearReLU(2048, 1024)
        fc1.load_state_dict(self.fc1.state_dict())
        self.fc1 = fc1

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(x, (4, 4))
        x = self.conv(x).flatten(1)
        return self.fc2(self.dropout(self.fc1(x)))  # fc1 applies the ReLU


def googlenet(num_classes=1000, aux_logits=True, transform_input=False):
    """torchvision's googlenet(weights=None, ...) on fastconv's ops."""
    model = tv.GoogLeNet(num_classes=num_classes, aux_logits=aux_logits,
                         transform_input=transform_input, init_weights=True,
                         blocks=[BasicConv2d, Inception, InceptionAux])
    for name in ("maxpool1", "maxpool2", "maxpool3", "maxpool4"):
        pool = getattr(model, name)
        setattr(model, name, FusedMaxPool2d(pool.kernel_size, pool.stride, ceil_mode=True))
    return model
