"""Per-test outcomes streamed to a log the moment each test finishes (a pytest plugin).

`pytest --outcomes-log PATH` appends one line per test to PATH and flushes it:
    PASSED  tests/ops/test_residual.py::test_x[...]  0.12s
    FAILED  tests/ops/test_conv1x1.py::test_y[...]  0.40s  AssertionError: output: relative error 0.5 > 1e-02
so a run killed at any point still names every failure so far, with its first error line.
`pytest -q` under pytest-xdist names failures only in its final summary, which a killed
run never prints (the first GPU run, 2026-11-27). Under xdist only the controller
writes: the workers' reports reach it as they happen. On SIGTERM (what `timeout` sends)
the tests still running are written as UNFINISHED before pytest stops.
`--outcomes-tb PATH` also appends each failure's full traceback to PATH.

Write `--outcomes-log=PATH` when PATH exists already (a log appended to) and no test path
is given: pytest picks its root directory before any plugin or conftest is loaded, and
then reads a space-separated existing PATH as the path to test. xdist workers are handed
the `=` form (pytest_xdist_setupnodes below): the controller has created PATH by then.

`python -m tests.outcomes summarize PATH` prints the FAILED/ERROR summary of the last
session in PATH; bench/gpu_check.sh appends it after each test step, killed or not.
"""
import dataclasses
import signal
import sys
import time

import pytest

SESSION_START = "# session start"
SESSION_END = "# session end"
PROBLEMS = ("FAILED", "ERROR", "UNFINISHED")


def pytest_addoption(parser):
    group = parser.getgroup("outcomes", "per-test outcomes streamed to a log (tests/outcomes.py)")
    group.addoption("--outcomes-log", default=None, metavar="PATH",
                    help="append one line per test outcome to PATH as each test finishes")
    group.addoption("--outcomes-tb", default=None, metavar="PATH",
                    help="with --outcomes-log: append each failure's full traceback to PATH")


def pytest_configure(config):
    path = config.getoption("outcomes_log", None)
    if path and not hasattr(config, "workerinput"):  # the xdist controller, or a plain run
        config.pluginmanager.register(OutcomeLog(path, config.getoption("outcomes_tb")), "outcome-log")


@pytest.hookimpl(optionalhook=True)  # an xdist hook: optional where xdist is not installed
def pytest_xdist_setupnodes(config, specs):
    """Hand the workers `--outcomes-log=PATH`, not `--outcomes-log PATH`: each worker parses
    the controller's command line again, and the log this controller just created would
    pass for a path to test, moving the worker's root directory (no ini file, no conftest,
    so an unknown option: every worker exits before running a test)."""
    args, joined = list(config.invocation_params.args), []
    while args:
        arg = args.pop(0)
        if arg in ("--outcomes-log", "--outcomes-tb") and args:
            arg = f"{arg}={args.pop(0)}"
        joined.append(arg)
    config.invocation_params = dataclasses.replace(config.invocation_params, args=tuple(joined))


def first_error_line(report):
    """The exception line of a failed report (e.g. 'AssertionError: ...'), else its last line."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else report.longreprtext
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    if not lines:
        return ""
    return (lines[0] if crash is not None else lines[-1])[:300]


class OutcomeLog:
    def __init__(self, path, tb_path=None):
        self.log = open(path, "a", buffering=1)  # line-buffered: each line reaches the file whole
        self.tb = open(tb_path, "a", buffering=1) if tb_path else None
        self.running = {}  # nodeid -> start time, in the order the tests started
        self.write(f"{SESSION_START} {time.strftime('%H:%M:%S')}: pytest {' '.join(sys.argv[1:])}")
        self.previous_sigterm = signal.signal(signal.SIGTERM, self.on_sigterm)

    def write(self, line):
        self.log.write(line + "\n")
        self.log.flush()

    def on_sigterm(self, signum, frame):
        for nodeid, t0 in list(self.running.items()):
            self.write(f"UNFINISHED  {nodeid}  {time.monotonic() - t0:.1f}s  (running when SIGTERM came)")
        self.write(f"# SIGTERM at {time.strftime('%H:%M:%S')}: pytest stopped before the end")
        self.running.clear()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # `timeout` signals the process group too
        raise KeyboardInterrupt  # pytest prints its short summary and stops

    @pytest.hookimpl
    def pytest_runtest_logstart(self, nodeid, location):
        self.running[nodeid] = time.monotonic()

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report):
        outcome = None
        if report.when == "call" or (report.when not in ("setup", "teardown") and report.failed):
            # the test itself (or an xdist worker crash, reported with when="???")
            if hasattr(report, "wasxfail"):
                outcome = "XPASS" if report.passed else "XFAIL"
            else:
                outcome = report.outcome.upper()
        elif report.when == "setup" and not report.passed:
            outcome = "SKIPPED" if report.skipped else "ERROR"
        elif report.when == "teardown" and report.failed:
            outcome = "ERROR"
        if outcome is None and report.when in ("setup", "call"):
            return
        # its outcome is written (or it is torn down): not UNFINISHED if a SIGTERM comes now
        self.running.pop(report.nodeid, None)
        if outcome is None:
            return
        detail = ""
        if report.failed:
            detail = first_error_line(report)
            if report.when in ("setup", "teardown"):
                detail = f"(in {report.when}) {detail}"
            if self.tb is not None:
                self.tb.write(f"_____ {outcome} {report.nodeid} _____\n{report.longreprtext}\n\n")
        elif report.skipped and isinstance(report.longrepr, tuple):
            detail = str(report.longrepr[2])[:200]  # (path, line, "Skipped: reason")
        self.write(f"{outcome}  {report.nodeid}  {report.duration:.2f}s  {detail}".rstrip())

    @pytest.hookimpl
    def pytest_collectreport(self, report):
        if report.failed:
            self.write(f"ERROR  {report.nodeid or '<collection>'}  (collecting) {first_error_line(report)}")

    @pytest.hookimpl
    def pytest_sessionfinish(self, session, exitstatus):
        self.write(f"{SESSION_END} {time.strftime('%H:%M:%S')}: exit status {int(exitstatus)}")
        signal.signal(signal.SIGTERM, self.previous_sigterm)
        self.log.close()
        if self.tb is not None:
            self.tb.close()


def summarize(lines):
    """The FAILED/ERROR/UNFINISHED summary of the last session in an outcomes log."""
    starts = [i for i, ln in enumerate(lines) if ln.startswith(SESSION_START)]
    session = lines[starts[-1]:] if starts else lines
    counts, problems = {}, []
    for ln in session:
        fields = ln.split("  ")  # outcome, nodeid, duration, detail
        if ln.startswith("#") or len(fields) < 2 or not fields[0].isupper():
            continue
        counts[fields[0]] = counts.get(fields[0], 0) + 1
        if fields[0] in PROBLEMS:
            problems.append(f"{fields[0]} {fields[1]} - {'  '.join(fields[3:])}".rstrip(" -"))
    tally = ", ".join(f"{n} {word.lower()}" for word, n in sorted(counts.items())) or "no test finished"
    ended = [ln for ln in session if ln.startswith(SESSION_END)]
    if any(ln.startswith("# SIGTERM") for ln in session):
        how = "KILLED by SIGTERM (a timeout): the tests not named here did not run"
    elif not ended:
        how = "no session end in the log: pytest was killed (or did not start); the tests not named here did not run"
    else:
        how = ended[-1].split(": ", 1)[-1]
    return [f"== summary: {tally}; {how}"] + problems


def main(argv):
    if len(argv) != 2 or argv[0] != "summarize":
        sys.exit("usage: python -m tests.outcomes summarize OUTCOMES_LOG")
    try:
        with open(argv[1]) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    print("\n".join(summarize(lines)))


if __name__ == "__main__":
    main(sys.argv[1:])
