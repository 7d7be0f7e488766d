"""The Triton backend's launchers; fastconv._cuda has the same names and signatures."""
from fastconv._triton.conv1x1 import conv1x1, relu_grad_bias
from fastconv._triton.elementwise import binary
from fastconv._triton.pool_same import pool_backward, pool_forward

__all__ = ["binary", "conv1x1", "relu_grad_bias", "pool_forward", "pool_backward"]
