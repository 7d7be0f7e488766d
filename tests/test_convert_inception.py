"""fastconv.convert.inception: the Inception patterns found by structure in converted models:
sibling 1x1 convs as one GEMM, the pool projection, and channel concatenations written
into one buffer (no torch.cat) without autograd."""
import collections
import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

import fastconv
from fastconv import reference
from tests.conftest import DEVICE
from tests.convert.helpers import DispatchedOps, realistic, sees_input


class Branches(nn.Module):
    """Not an Inception by name: sibling 1x1 conv + ReLU layers (a, b, e) on x, a third 1x1
    conv on a's output, a 3x3/1 pool feeding a 1x1 conv + BN + ReLU, a pool read twice;
    two concatenations: one whose every branch has a known channel count (a and p2 read
    elsewhere too: copied; the others written in place), one with a branch the graph
    cannot count (p2[:, :1]: left a torch.cat)."""

    def __init__(self, c=17):
        super().__init__()
        self.a, self.b, self.e = nn.Conv2d(c, 5, 1), nn.Conv2d(c, 3, 1), nn.Conv2d(c, 4, 1)
        self.c = nn.Conv2d(5, 4, 1)
        self.pool, self.proj = nn.MaxPool2d(3, 1, 1), nn.Conv2d(c, 6, 1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.pool2, self.d = nn.MaxPool2d(3, 1, 1), nn.Conv2d(c, 2, 1)

    def forward(self, x):
        a, b, e = torch.relu(self.a(x)), torch.relu(self.b(x)), torch.relu(self.e(x))
        p2 = self.pool2(x)
        joined = torch.cat([a, b, torch.relu(self.c(a)), torch.relu(self.bn(self.proj(self.pool(x)))),
                            torch.relu(self.d(p2)), p2], 1)
        return joined, torch.cat([p2[:, :1], e], 1)


def _forward(model, x, backend):
    """The output and the ops of a steady-state forward (the first folds and stacks weights)."""
    with torch.no_grad(), fastconv.use_backend(backend):
        model(x)
        with DispatchedOps() as ops:
            out = model(x)
    return out, ops


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_patterns_found_by_structure(backend):
    torch.manual_seed(0)
    x = torch.randn(2, 17, 7, 7, device=DEVICE)
    model = realistic(Branches().to(DEVICE), x)
    converted = fastconv.convert(model, example_input=x)
    report = converted.fastconv_report
    ops = collections.Counter(op.split(" (")[0] for _, _, op in report.replaced)
    assert ops["conv1x1_relu_split"] == 3  # a, b, e: one GEMM
    assert ops["pool_conv1x1_relu"] == 2  # the pool and proj; not pool2: read twice
    assert report.entry("(model)") == ("(model)", "torch.cat of 6 branches",
                                       "one buffer: 4 write their slices, 2 copied")
    assert report.entry("(model) #2") is None  # p2[:, :1]: its channel count is not in the graph
    assert converted.state_dict().keys() == model.state_dict().keys()
    out, dispatched = _forward(converted, x, backend)
    assert dispatched.ops["aten.cat"] == 1  # the second concatenation only
    ref = copy.deepcopy(model).double()(x.double())
    for o, r in zip(out, ref):
        assert reference.rel_error(o, r) < 1e-5
    with fastconv.use_backend(backend):  # autograd: the branches as written, then torch.cat
        assert reference.rel_error(converted(x)[0], ref[0]) < 1e-5
    converted.train(), model.train()  # batch statistics: the original modules run
    assert reference.rel_error(converted(x)[0], model(x)[0]) < 1e-5


class Nested(nn.Module):
    """An InceptionE-like block: a concatenation of two convs inside the block's one, a
    branch (a max pool of x) whose channel count only a conv reading x tells, and a 3x3 conv
    without BN whose ReLU writes its slice."""

    def __init__(self, c=6):
        super().__init__()
        self.c0, self.c1, self.plain = nn.Conv2d(c, 4, 1), nn.Conv2d(c, 5, 1), nn.Conv2d(c, 3, 3, padding=1)
        self.a, self.b = nn.Conv2d(5, 3, (1, 3), padding=(0, 1)), nn.Conv2d(5, 2, (3, 1), padding=(1, 0))
        self.bn0, self.bn1, self.bna, self.bnb = (nn.BatchNorm2d(n) for n in (4, 5, 3, 2))

    def forward(self, x):
        y = F.relu(self.bn1(self.c1(x)))
        inner = torch.cat([F.relu(self.bna(self.a(y))), F.relu(self.bnb(self.b(y)))], 1)
        return torch.cat([F.relu(self.bn0(self.c0(x))), inner, F.max_pool2d(x, 3, 1, 1), F.relu(self.plain(x))], 1)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_nested_concatenation_writes_into_the_enclosing_buffer(backend):
    x = torch.randn(2, 6, 5, 7, device=DEVICE)
    model = realistic(Nested().to(DEVICE), x)
    converted = fastconv.convert(model, example_input=x)
    assert [e.op for e in converted.fastconv_report.replaced if e.pattern.startswith("torch.cat")] == [
        "one buffer: 2 write their slices, 0 copied", "one buffer: 3 write their slices, 1 copied"]
    out, dispatched = _forward(converted, x, backend)
    assert dispatched.ops["aten.cat"] == 0 and dispatched.count("batch_norm") == 0
    assert dispatched.ops["aten.copy_"] == 1  # the pool branch's; the others wrote in place
    assert reference.rel_error(out, copy.deepcopy(model).double()(x.double())) < 1e-5


def test_a_branch_that_does_not_fit_the_buffer_falls_back_to_torch_cat():
    """A branch whose output does not fit its slice (its conv's padding changed after the
    conversion): the writer declines, ConcatInto falls back to torch.cat, which refuses
    the sizes as eager does."""
    model = realistic(Nested(), torch.randn(1, 6, 5, 5)).eval()
    converted = fastconv.convert(model)
    converted.a.padding = (0, 0)  # the (1, 3) conv now shrinks its output: torch.cat must refuse
    model.a.padding = (0, 0)
    x = torch.randn(1, 6, 5, 5)
    for m in (model, converted):
        with torch.no_grad(), pytest.raises(RuntimeError, match="Sizes of tensors must match"):
            m(x)


def test_torchvision_googlenet():
    """The converted GoogLeNet runs like fastconv.models.googlenet: two split_into GEMMs per
    Inception block, the trunk's 4 pools, no torch.cat, no BatchNorm."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    model = realistic(tvm.googlenet(weights=None, init_weights=True), x)
    converted = fastconv.convert(model, example_input=x)
    out, dispatched = _forward(converted, x, "torch")
    assert reference.rel_error(out, copy.deepcopy(model).double()(x.double())) < 1e-4
    assert dispatched.ops["fastconv.conv1x1_relu_split_into"] == 2 * 9  # per block: siblings, pool projection
    assert dispatched.ops["fastconv.max_pool2d_same"] == 4              # the trunk's pools only
    assert dispatched.ops["aten.cat"] == 0 and dispatched.count("batch_norm") == 0
    assert dispatched.ops["aten.copy_"] == 0  # every branch wrote its slice in place


def test_googlenet_with_fresh_statistics_cannot_see_its_input():
    """Why the converter tests calibrate BN (issue 26): torchvision's GoogLeNet init with
    merely randomized statistics makes every feature map constant per channel."""
    x = torch.randn(1, 3, 64, 64)
    blind = reference.randomize_batchnorm(tvm.googlenet(weights=None, init_weights=True)).eval()
    assert not sees_input(blind, x)
