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
    branches, concatenated (course example: 192 -> 64 + 128 + 32 + 32 = 256 channels).

    Eval mode (BN folded) runs it in fewer passes over memory: branch1 and the two
    reductions are one GEMM reading x once (conv1x1_relu_split), and the pool projection
    computes its 3x3 max pool inside its GEMM's operand load (pool_conv1x1_relu). Without
    autograd (no_grad, inference_mode) every branch writes its channel slice of the one
    output buffer: no torch.cat, the 3x3 branches' ReLU being their one copy. Train mode
    (batch statistics) is torchvision's composition on the fused 1x1 convs and SAME pools."""

    def __init__(self, in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
        super().__init__(in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj,
                         conv_block=BasicConv2d)
        self.branch4[0] = FusedMaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True)

    def forward(self, x):
        if not self._fusable(x):
            return super().forward(x)
        import torch  # imports here, not at the top: this class is all this edit touches

        from fastconv import _checks, ops

        reduce3, conv3, reduce5, conv5, proj = (self.branch2[0], self.branch2[1], self.branch3[0],
                                                self.branch3[1], self.branch4[1])
        sizes = [b.conv.out_channels for b in (self.branch1, reduce3, reduce5)]
        weight, bias = self._stacked_1x1((self.branch1, reduce3, reduce5))
        proj_weight, proj_bias = self._folded(proj)
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            b1, r3, r5 = ops.conv1x1_relu_split(x, weight, bias, sizes)  # differentiable: cat
            return torch.cat([b1, conv3(r3), conv5(r5), ops.pool_conv1x1_relu(x, proj_weight, proj_bias)], 1)
        N, _, H, W = x.shape
        c1, c3, c5 = sizes[0], conv3.conv.out_channels, conv5.conv.out_channels
        out = _checks.empty_like_layout(x, (N, c1 + c3 + c5 + proj.conv.out_channels, H, W))
        r3, r5 = (_checks.empty_like_layout(x, (N, c, H, W)) for c in sizes[1:])
        ops.conv1x1_relu_split_into(x, weight, bias, [out[:, :c1], r3, r5])
        for r, block, lo in ((r3, conv3, c1), (r5, conv5, c1 + c3)):
            w, b = self._folded(block)
            y = nn.functional.conv2d(r, w, b, 1, block.conv.padding)
            torch.clamp_min(y, 0, out=out[:, lo:lo + y.shape[1]])  # the ReLU is the copy into the slice
        ops.conv1x1_relu_split_into(x, proj_weight, proj_bias, [out[:, c1 + c3 + c5:]], pool=True)
        return out

    def _fusable(self, x):
        """Eval mode with foldable BN, torchvision's block structure, a backend with the kernels."""
        from fastconv.fusion import bn_foldable, is_fusable_conv1x1
        from fastconv.ops.inception import has_kernels

        if self.training or x.dim() != 4:
            return False
        pool, ones = self.branch4[0], (self.branch1, self.branch2[0], self.branch3[0], self.branch4[1])
        threes = (self.branch2[1], self.branch3[1])
        pair = (lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v))  # noqa: E731
        if not isinstance(pool, nn.MaxPool2d) or pool.return_indices or (
                pair(pool.kernel_size), pair(pool.stride), pair(pool.padding), pair(pool.dilation)) != (
                (3, 3), (1, 1), (1, 1), (1, 1)):
            return False
        if any(is_fusable_conv1x1(b.conv) or b.conv.stride != (1, 1) for b in ones):
            return False
        if any(b.conv.stride != (1, 1) or b.conv.dilation != (1, 1) or b.conv.groups != 1
               or b.conv.padding != tuple(k // 2 for k in b.conv.kernel_size)
               or any(k % 2 == 0 for k in b.conv.kernel_size) for b in threes):
            return False  # the 3x3 convs must keep the size to write into their slices
        if not all(bn_foldable(getattr(b, "bn", None)) for b in ones + threes):
            return False
        return has_kernels(x.device)

    @staticmethod
    def _folded(block):
        """(weight, bias) of a BasicConv2d with its eval-mode BN folded in (cached by
        fastconv.fusion.folded until a parameter or statistic changes)."""
        from fastconv.fusion import folded

        return folded(block.conv, block.bn)

    def _stacked_1x1(self, blocks):
        """The folded [sum Cout, Cin] weights and biases of 1x1 blocks, stacked without
        torch.cat, kept while their cached folds stand."""
        from fastconv.ops.inception import stack_weights_cached

        return stack_weights_cached(self, [self._folded(b) for b in blocks])


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
