"""A module's training flags and buffers, put back after code that changes them."""
import contextlib

import torch


@contextlib.contextmanager
def modes_and_buffers_kept(module):
    """Yields {submodule: its training flag} as they are on entry; on exit puts back every
    submodule's flag and every buffer's values (BatchNorm's running statistics and batch
    counter, which a forward in train mode, or tracing one, updates in place)."""
    modes = {m: m.training for m in module.modules()}
    buffers = [(b, b.clone()) for b in module.buffers()]
    try:
        yield modes
    finally:
        for m, training in modes.items():
            m.training = training
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
