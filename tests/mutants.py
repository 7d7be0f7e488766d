"""The mutation run: deliberate one-line bugs, and proof that the tests catch each.

    python -m tests.mutants [-j JOBS] [--list] [--no-baseline] [NAME ...]    (or `make mutants`)

Each mutant is an exact replacement (file, old text, new text) applied to a copy of the tree
in a temporary directory (never the working tree); then the tests named for it run there and
must fail. The run fails loudly where a mutant's old text is not found exactly once, so the
list cannot rot silently when the code moves (tests/test_mutants.py checks that in CI without
running anything). Before the mutants, the union of their tests runs on the unmutated copy and
must pass: a test that fails anyway proves nothing. The mutants are in tests/mutant_list.py:
at least one per kernel and per op family; add one with every new kernel. CUDA C++ mutants
rebuild the copy's extension and run only with a GPU (the GPU check); the rest run on the CPU
(the torch backend and Triton's interpreter).
"""
import argparse
import concurrent.futures
import os
import pathlib
import queue
import shutil
import subprocess
import sys
import tempfile
import time

from tests.mutant_list import MUTANTS

ROOT = pathlib.Path(__file__).resolve().parents[1]


def mutated_text(mutant, root=ROOT):
    """The text of mutant.file under `root` with the mutant applied; raises where the old text
    is not found exactly once."""
    path = root / mutant.file
    text = path.read_text() if path.exists() else ""
    count = text.count(mutant.old)
    if count != 1:
        raise LookupError(f"mutant {mutant.name}: its old text is found {count} times in {mutant.file} "
                          f"(exactly once needed; re-anchor it to the code as it is now):\n{mutant.old}")
    return text.replace(mutant.old, mutant.new)


def _copy_tree(dest):
    """The working tree's files (tracked, and untracked ones git does not ignore) and the
    built extension, copied under `dest`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, check=True, capture_output=True, text=True).stdout.split("\0")
    for name in [n for n in listed if n] + [str(p.relative_to(ROOT)) for p in ROOT.glob("fastconv/_C*.so")]:
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _env(copy):
    return dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")


def _check_imports_copy(copy):
    """The copy's fastconv is the one its runs import (not the working tree's, nor an install)."""
    found = subprocess.run([sys.executable, "-c", "import fastconv; print(fastconv.__file__)"], cwd=copy,
                           env=_env(copy), check=True, capture_output=True, text=True).stdout.strip()
    if not pathlib.Path(found).resolve().is_relative_to(copy.resolve()):
        raise RuntimeError(f"the copy in {copy} imports fastconv from {found}")


def _pytest(copy, tests, timeout, workers=1):
    """(exit status or None on timeout, pytest's last line) of `tests` run in `copy`."""
    env = _env(copy)
    args = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header"]
    args += ["-n", str(workers)] if workers > 1 else []
    try:
        done = subprocess.run(args + list(tests), cwd=copy, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, lines[-1] if lines else done.stderr.strip()[-300:]


def _build_extension(copy, timeout):
    """Rebuild the copy's CUDA extension from its csrc/ (a CUDA C++ mutant)."""
    done = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=copy,
                          capture_output=True, text=True, timeout=timeout)
    return done.returncode == 0


def run_mutant(mutant, copy, timeout):
    """(result, pytest's summary, seconds): the mutant applied to `copy`, its tests run, the
    copy restored. "caught": a test failed; "MISSED": they all passed; "error": anything else
    (no test ran, all skipped, a collection error, a failed build)."""
    path = copy / mutant.file
    original = path.read_text()
    library = sorted(copy.glob("fastconv/_C*.so"))
    saved = [(so, so.read_bytes()) for so in library] if mutant.gpu else []
    start = time.monotonic()
    try:
        path.write_text(mutated_text(mutant, copy))
        if mutant.gpu and not _build_extension(copy, timeout):
            return "error", "the extension did not build", time.monotonic() - start
        status, summary = _pytest(copy, mutant.tests, timeout)
    finally:
        path.write_text(original)
        for so, data in saved:
            so.write_bytes(data)
    if status is None:
        result = "caught"  # killed by the timeout (a hang is a failure too)
    elif status == 1:
        result = "caught"
    elif status == 0 and " passed" in summary:
        result = "MISSED"
    else:
        result = "error"
    return result, summary, time.monotonic() - start


def _gpu():
    import torch
    return torch.cuda.is_available()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only the mutants whose name contains one of these")
    parser.add_argument("-j", "--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="mutants run at once, each in a copy of its own (default: 2 or the CPU count)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per mutant (build + tests)")
    parser.add_argument("--list", action="store_true", help="list the mutants and check their anchors")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip running the mutants' tests on the unmutated copy first")
    args = parser.parse_args(argv)

    chosen = [m for m in MUTANTS if not args.names or any(n in m.name for n in args.names)]
    for m in chosen:
        mutated_text(m)  # every anchor checked before anything runs
    if args.list:
        for m in chosen:
            print(f"{m.name:42s} {m.file:36s} {'GPU ' if m.gpu else ''}{' '.join(m.tests)}")
        return 0
    gpu = _gpu()
    runnable = [m for m in chosen if gpu or not m.gpu]
    rows = [(m, "skipped", "needs a CUDA device: the copy's extension is rebuilt and run", 0.0)
            for m in chosen if m not in runnable]

    with tempfile.TemporaryDirectory(prefix="fastconv-mutants-") as tmp:
        paths = [pathlib.Path(tmp) / str(i) for i in range(max(1, min(args.jobs, len(runnable))))]
        copies = queue.Queue()
        for path in paths:
            path.mkdir()
            _copy_tree(path)
            _check_imports_copy(path)
            copies.put(path)
        if runnable and not args.no_baseline:
            tests = list(dict.fromkeys(t for m in runnable for t in m.tests))
            print(f"baseline: {len(tests)} test selections on the unmutated copy ...", flush=True)
            status, summary = _pytest(paths[0], tests, args.timeout * 2, workers=args.jobs)
            if status != 0:
                print(f"baseline failed ({summary}): the mutants' tests must pass on the unmutated "
                      "tree first", file=sys.stderr)
                return 2

        def job(m):
            copy = copies.get()
            try:
                return (m, *run_mutant(m, copy, args.timeout))
            finally:
                copies.put(copy)

        with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
            for row in pool.map(job, runnable):
                print(f"{row[1]:8s} {row[0].name} ({row[3]:.0f} s): {row[2]}", flush=True)
                rows.append(row)

    rows.sort(key=lambda r: MUTANTS.index(r[0]))
    print("\n| mutant | file | tests | result | pytest | s |\n| --- | --- | --- | --- | --- | --- |")
    for m, result, summary, seconds in rows:
        print(f"| {m.name} | {m.file} | {', '.join(m.tests)} | {result} | {summary} | {seconds:.0f} |")
    counts = {r: sum(row[1] == r for row in rows) for r in ("caught", "MISSED", "error", "skipped")}
    print("\n" + ", ".join(f"{n} {r}" for r, n in counts.items()))
    return 0 if counts["MISSED"] == counts["error"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
