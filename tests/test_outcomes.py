"""tests/outcomes.py: outcomes named as they happen under pytest-xdist, and a run killed
by SIGTERM (as `timeout` kills) still ends with its FAILED/ERROR/UNFINISHED summary."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.outcomes import summarize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEMO = '''
import time, pytest
def test_pass(): pass
def test_fail(): assert 1 == 2, "one is not two"
@pytest.fixture
def broken(): raise RuntimeError("fixture broke")
def test_error(broken): pass
@pytest.mark.skip(reason="not here")
def test_skip(): pass
def test_slow():
    open("slow_started", "w").close()
    time.sleep(60)
'''


def test_killed_xdist_run_names_every_outcome(tmp_path):
    (tmp_path / "test_demo.py").write_text(DEMO)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    log = tmp_path / "outcomes.log"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "tests.outcomes", "--outcomes-log", str(log),
                             "-p", "no:cacheprovider", "-n", "2", "-q", "test_demo.py"],
                            cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # the four quick tests are logged while the slow one runs (its start reaches the
        # controller soon after the worker sends it: a second's grace)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not ((tmp_path / "slow_started").exists() and log.exists()
                                                   and log.read_text().count("\n") >= 5):
            time.sleep(0.2)
        time.sleep(1)
        os.killpg(proc.pid, signal.SIGTERM)  # as `timeout` does: the controller and its workers
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = log.read_text().splitlines()
    assert "PASSED  test_demo.py::test_pass" in "\n".join(lines)
    summary = summarize(lines)
    assert summary[0].startswith("== summary: 1 error, 1 failed, 1 passed, 1 skipped, 1 unfinished; KILLED")
    assert sorted(summary[1:]) == ["ERROR test_demo.py::test_error - (in setup) RuntimeError: fixture broke",
                           "FAILED test_demo.py::test_fail - AssertionError: one is not two",
                           "UNFINISHED test_demo.py::test_slow - (running when SIGTERM came)"]


def test_summary_of_a_finished_and_of_a_vanished_session():
    lines = ["# session start 10:00:00: pytest", "PASSED  a::x  0.10s", "# session end 10:00:01: exit status 0",
             "# session start 10:00:02: pytest", "FAILED  a::y  0.20s  ValueError: bad  input"]
    assert summarize(lines) == ["== summary: 1 failed; no session end in the log: pytest was killed (or did "
                                "not start); the tests not named here did not run",
                                "FAILED a::y - ValueError: bad  input"]
    assert summarize(lines[:3]) == ["== summary: 1 passed; exit status 0"]


@pytest.mark.parametrize("how", ["no paths", "paths", "an earlier run's log"])
def test_xdist_workers_accept_the_option(tmp_path, how):
    """`pytest -n 2 --outcomes-log LOG` in a project laid out as this repository (the plugin
    loaded by tests/conftest.py's pytest_plugins), LOG outside it: every worker runs its
    tests, with or without test paths; a log that exists already is given as --outcomes-log=LOG."""
    project, log = tmp_path / "project", tmp_path / "logs" / "outcomes.log"
    (project / "tests").mkdir(parents=True)
    log.parent.mkdir()
    (project / "pytest.ini").write_text("[pytest]\ntestpaths = tests\n")
    (project / "tests" / "conftest.py").write_text('pytest_plugins = ["tests.outcomes"]\n')
    (project / "tests" / "test_demo.py").write_text(
        'def test_pass(): pass\ndef test_fail(): assert 1 == 2, "one is not two"\n')
    option, paths = ["--outcomes-log", str(log)], []
    if how == "paths":
        paths = ["tests/test_demo.py"]
    elif how == "an earlier run's log":
        log.write_text("# session start 10:00:00: pytest\n# session end 10:00:01: exit status 0\n")
        option = [f"--outcomes-log={log}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # not this run's worker
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", *option, *paths],
                         cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]  # 1: a test failed
    assert summarize(log.read_text().splitlines()) == [
        "== summary: 1 failed, 1 passed; exit status 1",
        "FAILED tests/test_demo.py::test_fail - AssertionError: one is not two"]
