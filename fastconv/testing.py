"""Assertions for tests of models built on fastconv (a user's own pytest included)."""
from fastconv.compare import compare


def assert_close_model(reference, candidate, inputs, **kwargs):
    """Assert that `candidate` computes what `reference` does on `inputs`, layer by layer,
    within the tolerances fastconv.compare derives from the arithmetic (keyword arguments go to
    fastconv.compare: train=True, rtol/atol, bound_scale). Raises AssertionError naming the
    first failing layer, with the failing rows of the report; returns the report otherwise.

        def test_my_model_converts():
            model = MyNet().eval()
            fastconv.testing.assert_close_model(model, fastconv.convert(model), torch.randn(2, 3, 64, 64))
    """
    report = compare(reference, candidate, inputs, **kwargs)
    if not report.passed:
        raise AssertionError(report.failure_summary())
    return report
