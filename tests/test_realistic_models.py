"""The models benchmark's error column can fail: with BN statistics measured on the input
(reference.calibrate_batchnorm), GoogLeNet's logits depend on its features, and a small
change inside the network shows in the output. torchvision's defaults gave GoogLeNet
logits exactly equal to its classifier's bias, and the same shift of one BN changed nothing
(checked with torchvision 0.29), so no kernel error could ever show."""
import torch

from fastconv import reference
from fastconv.bench.models import model_pair


def _shift_one_batchnorm(model):
    bn = model.inception4c.branch2[1].bn  # mid-network: a 1x1 -> 3x3 branch
    with torch.no_grad():
        bn.running_mean += 0.05 * bn.running_var.sqrt()  # 0.05 standard deviations


def test_googlenet_error_column_can_fail():
    eager, ours, x, ref32 = model_pair("googlenet", "cpu", torch.float32, batch=2, size=32)
    with torch.no_grad():
        out = eager(x)
        assert reference.rel_error(out, ref32) < 1e-6
        assert (out - eager.fc.bias).norm() > 0.5 * out.norm()  # the features, not the bias, decide
        _shift_one_batchnorm(eager)
        assert reference.rel_error(eager(x), ref32) > 1e-2

