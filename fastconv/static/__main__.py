"""python -m fastconv.static [--full] [--arch 90|80] [--jobs N] [--out DIR] [--triton VERSION]

  --full     the whole sweep (fastconv.static.cases.full); default: the everyday set
  --out DIR  writes static-sm<arch>-triton<version>[-full].{md,json}; default: the table to stdout
  --triton   compile with another Triton release (e.g. 3.6.0, the GPU machine's): pip downloads
             its wheel once into $FASTCONV_CACHE (default ~/.cache/fastconv) and this command
             runs again with it first on PYTHONPATH
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path


def triton_release(version):
    """A folder holding Triton `version` unpacked from its wheel (downloaded once, cached)."""
    cache = Path(os.environ.get("FASTCONV_CACHE") or Path.home() / ".cache" / "fastconv")
    folder = cache / f"triton-{version}"
    if not (folder / "triton" / "__init__.py").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", f"triton=={version}", "--no-deps",
                            "--dest", tmp, "--quiet"], check=True)
            unpacked = Path(tmp) / "unpacked"
            with zipfile.ZipFile(next(Path(tmp).glob("triton-*.whl"))) as wheel:
                wheel.extractall(unpacked)
            for tool in (unpacked / "triton" / "backends" / "nvidia" / "bin").iterdir():
                tool.chmod(0o755)  # zip extraction drops the executable bit of ptxas & co.
            unpacked.rename(folder)
    return folder


def _rerun_with(version, argv):
    """This command again, in a process that imports Triton `version`."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(triton_release(version)), os.getcwd()] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["FASTCONV_EXPECT_TRITON"] = version
    return subprocess.run([sys.executable, "-m", "fastconv.static", *argv], env=env).returncode


def dump(meta, rows):
    """The table as JSON, one row per line (readable diffs between two runs)."""
    head = json.dumps(meta)[:-1]
    return head + ', "rows": [\n' + ",\n".join(json.dumps(r) for r in rows) + "\n]}\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m fastconv.static", description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="the whole sweep (default: the everyday set)")
    p.add_argument("--arch", type=int, default=90, choices=(80, 90))
    p.add_argument("--jobs", type=int, help="compiler processes (default: min(2, CPUs))")
    p.add_argument("--out", type=Path, help="folder for the .md and .json tables (default: stdout)")
    p.add_argument("--triton", help="compile with this Triton release (downloaded once)")
    args = p.parse_args(argv)
    if args.triton:
        i = argv.index("--triton")
        return _rerun_with(args.triton, argv[:i] + argv[i + 2:])

    import triton

    from fastconv.static import cases, compile_cases, markdown
    expected = os.environ.get("FASTCONV_EXPECT_TRITON")
    if expected and triton.__version__ != expected:
        p.error(f"imported Triton {triton.__version__} from {triton.__file__}, expected {expected}")
    chosen = (cases.full if args.full else cases.everyday)(args.arch)
    start = time.perf_counter()

    def progress(done, total, row):
        print(f"\r[{done}/{total}] {row['kernel']} {row['config']} {row['dtype']} {row['seconds']:.1f} s    ",
              end="", file=sys.stderr, flush=True)
    rows = compile_cases(chosen, args.arch, args.jobs, progress)
    seconds = time.perf_counter() - start
    print(file=sys.stderr)
    meta = {"triton": triton.__version__, "arch": args.arch, "set": "full" if args.full else "everyday",
            "smem_limit": cases.SMEM_BYTES[args.arch], "wall_seconds": round(seconds, 1),
            "compile_seconds": round(sum(r["seconds"] for r in rows), 1), "machine": platform.machine(),
            "cpus": os.cpu_count()}
    header = (f"# Triton {meta['triton']} for sm_{args.arch}, {meta['set']} set: {len(rows)} kernels compiled "
              f"in {meta['wall_seconds']} s ({meta['compile_seconds']} s of compiles, "
              f"{args.jobs or min(2, os.cpu_count() or 1)} processes)")
    table = markdown(rows, header)
    if args.out is None:
        print(table)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"static-sm{args.arch}-triton{meta['triton']}" + ("-full" if args.full else "")
    (args.out / f"{stem}.md").write_text(table)
    (args.out / f"{stem}.json").write_text(dump(meta, rows))
    print(f"{len(rows)} kernels -> {args.out / stem}.{{md,json}}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
