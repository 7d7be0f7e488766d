"""DistributedDataParallel over fastconv's ops: two CPU processes (gloo, spawned) train a
small fastconv ResNet for a few steps and match one process training on the same global
batch.

Without SyncBatchNorm (CPU has none), DDP computes BatchNorm's batch statistics per process
and averages the gradients; rank 0's running statistics are broadcast before each forward.
The single-process reference does exactly that: each step, the loss of each shard on the
same model, averaged, one backward; running statistics from shard 0 only."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from fastconv import reference
from fastconv.models.resnet import Bottleneck

WORLD, STEPS, BATCH = 2, 3, 8


def tiny_resnet():
    """A stem, then two fastconv Bottlenecks (1x1 conv + BN folded/fused, residual in the
    epilogue in eval; a stride-2 projection shortcut), a pooled linear head."""
    torch.manual_seed(0)
    down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          Bottleneck(8, 2), Bottleneck(8, 4, stride=2, downsample=down),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    return reference.randomize_batchnorm(model)


def _batch(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(BATCH, 3, 8, 8, generator=g), torch.randint(0, 10, (BATCH,), generator=g)


def _shard(t, rank):
    n = BATCH // WORLD
    return t[rank * n:(rank + 1) * n]


def _test_input():
    return torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(7))


def _worker(rank, init_file, out_path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = nn.parallel.DistributedDataParallel(tiny_resnet())
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        losses = []
        for step in range(STEPS):
            x, y = _batch(step)
            loss = F.cross_entropy(model(_shard(x, rank)), _shard(y, rank))
            opt.zero_grad()
            loss.backward()
            opt.step()
            mean = loss.detach().clone()
            dist.all_reduce(mean)
            losses.append(mean.item() / WORLD)
        if rank == 0:
            net = model.module.eval()
            with torch.no_grad():
                torch.save({"state": net.state_dict(), "losses": losses, "eval": net(_test_input())},
                           out_path)
    finally:
        dist.destroy_process_group()


def _single_process():
    model = tiny_resnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    buffers = [b for _, b in model.named_buffers()]
    losses = []
    for step in range(STEPS):
        x, y = _batch(step)
        shard_losses = []
        for rank in range(WORLD):
            shard_losses.append(F.cross_entropy(model(_shard(x, rank)), _shard(y, rank)))
            if rank == 0:  # DDP keeps rank 0's running statistics
                kept = [b.clone() for b in buffers]
        loss = sum(shard_losses) / WORLD
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():  # after the backward, which reads the statistics it saved
            for b, k in zip(buffers, kept):
                b.copy_(k)
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        return {"state": model.state_dict(), "losses": losses, "eval": model(_test_input())}


@pytest.mark.check
def test_ddp_two_processes_match_single_process(tmp_path):
    out_path = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(out_path)), nprocs=WORLD, join=True)
    ddp = torch.load(out_path)
    single = _single_process()
    for a, b in zip(ddp["losses"], single["losses"]):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(b)), (ddp["losses"], single["losses"])
    assert single["losses"][-1] != single["losses"][0]  # it trained
    for k, v in single["state"].items():
        assert reference.rel_error(ddp["state"][k], v) < 1e-5, k
    assert reference.rel_error(ddp["eval"], single["eval"]) < 1e-5  # BN folded from both states
