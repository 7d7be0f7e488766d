"""What the dispatch layer (fastconv._backend, the ops) and the kernel launchers
(fastconv._triton, fastconv._cuda) agree on. It imports nothing of fastconv, so both sides
import it and imports only go down."""
import os

# The `op` codes of the launchers' binary(a, b, out, op) (csrc/fastconv.h's BinaryOp).
BINARY_ADD, BINARY_ADD_RELU, BINARY_RELU_GRAD = 0, 1, 2


def triton_interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (read when triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
