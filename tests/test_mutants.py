"""The mutation run's list (tests/mutant_list.py) stays anchored to the code: each mutant's old
text is found exactly once in its file, it changes something, the tests it names exist, and
every kernel file has a mutant. Nothing is mutated or run here (that is `python -m tests.mutants`)."""
import re

import pytest

from tests.mutant_list import MUTANTS
from tests.mutants import ROOT, mutated_text


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_mutant_is_anchored_and_names_real_tests(mutant):
    assert mutant.new != mutant.old and mutant.tests
    mutated_text(mutant)  # raises unless the old text is found exactly once
    for test in mutant.tests:
        path, _, function = test.partition("::")
        source = (ROOT / path).read_text()
        function = function.split("[")[0]
        assert re.search(rf"^def {function}\(", source, re.M), f"{mutant.name}: no test {test}"


def test_every_kernel_file_has_a_mutant():
    """Each Triton kernel file, and each CUDA C++ file with a kernel (or a header it includes)."""
    mutated = {m.file for m in MUTANTS}
    for path in sorted(ROOT.glob("fastconv/_triton/*.py")):
        if "@triton.jit" in path.read_text():
            assert str(path.relative_to(ROOT)) in mutated, f"no mutant in {path.name}"
    for path in sorted(ROOT.glob("csrc/*.cu")):
        text = path.read_text()
        if "__global__" in text:
            files = {f"csrc/{h}" for h in re.findall(r'#include "(\w+\.cuh)"', text)} | {f"csrc/{path.name}"}
            assert files & mutated, f"no mutant in {path.name} nor in the headers it includes"
