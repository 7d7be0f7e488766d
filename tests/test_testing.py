"""fastconv.testing.assert_close_model: silent when the models agree layer by layer, an
AssertionError naming the first failing layer when they do not."""
import pytest
import torch

from fastconv.testing import assert_close_model
from tests.compare.helpers import converted, perturb_folded_bias


def test_passes_and_returns_the_report():
    ref, cand, x = converted("tiny", torch.bfloat16)
    report = assert_close_model(ref, cand, x)
    assert report.passed and report.meta["precision"] == "bf16"
    assert assert_close_model(ref, cand, x, train=True).meta["mode"] == "train step"


def test_raises_naming_the_first_failing_layer():
    ref, cand, x = converted("tiny")
    perturb_folded_bias(ref, cand, "4.conv1", "4.bn1")
    with pytest.raises(AssertionError, match=r"FAILED \(1 of \d+ rows\): first failing layer 4\.conv1") as e:
        assert_close_model(ref, cand, x)
    assert "4.conv1" in str(e.value).splitlines()[-1]  # the failing row of the table
    assert_close_model(ref, cand, x, bound_scale=1e3)  # keyword arguments reach fastconv.compare
