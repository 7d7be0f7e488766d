"""One intra-op thread for the fastconv.compare tests. They run thousands of small tensor ops (a
32x32 model, layer by layer, in float64 with bounds); with torch's default of one thread per
core, each op's parallel region waits for every thread, and on a machine whose cores are shared
(pytest -n auto runs a worker per core) a thread is often descheduled: on 2 cores under a load
of 5, the efficientnet_b0 test (64x64 then) took 35 s with 2 threads and 6 s with 1."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
