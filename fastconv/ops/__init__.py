"""The fused ops, each a torch.library custom op in the `fastconv` namespace."""
from fastconv.ops.conv1x1 import conv1x1_relu
from fastconv.ops.inception import conv1x1_relu_split, conv1x1_relu_split_into, pool_conv1x1_relu
from fastconv.ops.pool_same import avg_pool2d_same, max_pool2d_same
from fastconv.ops.residual import residual_add

__all__ = ["conv1x1_relu", "residual_add", "max_pool2d_same", "avg_pool2d_same",
           "conv1x1_relu_split", "conv1x1_relu_split_into", "pool_conv1x1_relu"]
