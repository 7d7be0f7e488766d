"""Drop-in modules over the fused ops."""
import math

import torch
from torch import nn

from fastconv import ops
from fastconv.fusion import pool_is_same


class Conv1x1ReLU(nn.Module):
    """relu(conv1x1(x)) in one kernel; parameters named and shaped as nn.Conv2d(in, out, 1),
    so state_dicts load both ways."""

    def __init__(self, in_channels, out_channels, stride=1, bias=True, relu=True,
                 device=None, dtype=None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.relu = stride, relu
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1,
                                               device=device, dtype=dtype))
        self.bias = (nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype))
                     if bias else None)
        self.reset_parameters()

    def reset_parameters(self):
        # nn.Conv2d's initialisation, so a fresh module is distributed alike.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_channels)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        return ops.conv1x1_relu(x, self.weight, self.bias, self.stride, self.relu)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, stride={self.stride}, "
                f"bias={self.bias is not None}, relu={self.relu}")


class ResidualAdd(nn.Module):
    """forward(x, residual) = relu(x + residual) (or x + residual with relu=False)."""

    def __init__(self, relu=True):
        super().__init__()
        self.relu = relu

    def forward(self, x, residual):
        return ops.residual_add(x, residual, self.relu)

    def extra_repr(self):
        return f"relu={self.relu}"


class _PoolSame(nn.Module):
    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class MaxPool2dSame(_PoolSame):
    """Max pooling with TensorFlow SAME padding."""

    def forward(self, x):
        return ops.max_pool2d_same(x, self.kernel_size, self.stride)


class AvgPool2dSame(_PoolSame):
    """Average pooling with TensorFlow SAME padding (padding not counted)."""

    def forward(self, x):
        return ops.avg_pool2d_same(x, self.kernel_size, self.stride)


class FusedMaxPool2d(nn.MaxPool2d):
    """An nn.MaxPool2d (same arguments, same state) that runs on fastconv's SAME
    kernel for every input on which its geometry equals SAME pooling (GoogLeNet's
    pools, 2x2/2 on even sizes), and on PyTorch's kernel otherwise (ResNet's stem
    pool on even sizes pads symmetrically, which SAME does not; unbatched input)."""

    def forward(self, x):
        if not self.return_indices and x.dim() == 4 and x.is_floating_point() and pool_is_same(
                x.shape[-2:], self.kernel_size, self.stride, self.padding, self.ceil_mode,
                dilation=self.dilation):
            return ops.max_pool2d_same(x, self.kernel_size, self.stride or self.kernel_size)
        return super().forward(x)


class FusedAvgPool2d(nn.AvgPool2d):
    """An nn.AvgPool2d that runs on fastconv's SAME kernel wherever that is exact
    (the same windows, no padding counted), and on PyTorch's kernel otherwise."""

    def forward(self, x):
        if self.divisor_override is None and x.dim() == 4 and x.is_floating_point() and pool_is_same(
                x.shape[-2:], self.kernel_size, self.stride, self.padding, self.ceil_mode,
                is_max=False, count_include_pad=self.count_include_pad):
            return ops.avg_pool2d_same(x, self.kernel_size, self.stride or self.kernel_size)
        return super().forward(x)


class LinearReLU(nn.Linear):
    """relu(linear(x)) as a 1x1 conv over a 1x1 image on the fused kernel; named and
    shaped as nn.Linear, so state dicts load both ways."""

    def forward(self, x):
        lead = x.shape[:-1]
        y = ops.conv1x1_relu(x.reshape(-1, x.shape[-1], 1, 1), self.weight, self.bias)
        return y.view(*lead, self.out_features)
