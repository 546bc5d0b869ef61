"""Execute every notebook in notebooks/ headless in the evcxr Rust kernel and fail on any error.

nbconvert/nbclient only fail on compile errors: a panic or an `Err` printed by a cell goes to
stderr and the run "succeeds". So after executing, this script scans every output for error
outputs, panics and `Error:` lines, and checks that cells tagged `chart` produced an inline image.
Executed copies go to target/notebooks/ (the sources stay clean). Prints the run time per notebook.

usage: .venv/bin/python scripts/run_notebooks.py [notebooks/01-....ipynb ...]
"""
import fcntl
import glob
import os
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(ROOT, "target", "notebooks")
# evcxr builds each cell as a crate in EVCXR_TMPDIR with one profile for everything (the
# notebooks' `:opt 0`). Cargo also reads `.cargo/config.toml` in every ancestor of that crate, so a
# config one level up gives the numeric crates (matmul kernels, candle, replens itself) real
# optimisation while polars & co. stay at opt-level 0 (fast cold compile). One shared tmpdir also
# lets every notebook after the first reuse the compiled dependencies. (The kernel cannot reuse
# the test build's dependencies: evcxr builds with RUSTFLAGS=-Cprefer-dynamic, which gives every
# crate a different artifact hash.)
EVCXR_ROOT = os.path.join(ROOT, "target", "evcxr")
# package -> opt-level; all of them without debug assertions or overflow checks
EVCXR_OPTIMISED = {"gemm-common": 3, "gemm-f32": 3, "gemm-f64": 3, "gemm": 3,
                   "candle-core": 3, "candle-nn": 2, "replens-kernels": 3, "replens": 1,
                   # tokenisation and tokenizer.json / safetensors loading: at opt-level 0 they
                   # took most of a MiniLM classifier's load-and-score time in notebook 05
                   "tokenizers": 2, "regex": 2, "regex-automata": 2, "regex-syntax": 2,
                   "fancy-regex": 2, "aho-corasick": 2, "memchr": 2, "daachorse": 2,
                   "unicode-normalization-alignments": 2, "unicode-segmentation": 2,
                   "unicode_categories": 2, "serde_json": 2, "safetensors": 2}
EVCXR_PROFILE = "# written by scripts/run_notebooks.py\n" + "\n".join(
    f"[profile.dev.package.{name}]\nopt-level = {level}\ndebug-assertions = false\noverflow-checks = false\n"
    for name, level in EVCXR_OPTIMISED.items()
)


def prepare_evcxr_dir():
    os.makedirs(os.path.join(EVCXR_ROOT, ".cargo"), exist_ok=True)
    with open(os.path.join(EVCXR_ROOT, ".cargo", "config.toml"), "w") as f:
        f.write(EVCXR_PROFILE)
    kernel_dir = os.path.join(EVCXR_ROOT, "kernel")
    os.makedirs(kernel_dir, exist_ok=True)
    os.environ.setdefault("EVCXR_TMPDIR", kernel_dir)
    # evcxr's `:cache` keys a compiled crate by its rustc command line alone, and tells the local
    # crates (each cell's crate, replens itself) apart from registry ones only because cargo
    # compiles local crates incrementally. With CARGO_INCREMENTAL=0 (as .ci/run sets for its own
    # build) every cell's crate has the same command line, so a cell loads an earlier cell's
    # cached library and the kernel's runtime exits with status 99. The kernel must not inherit it.
    os.environ.pop("CARGO_INCREMENTAL", None)
BAD_MARKERS = ("panicked at", "Error:", "error[E", "FAILED:")
IMAGE_TYPES = ("image/svg+xml", "image/png")


def problems(nb):
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        tags = cell.get("metadata", {}).get("tags", [])
        has_image = False
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"cell {index}: {out.get('ename')}: {out.get('evalue')}")
            text = out.get("text", "")
            if isinstance(text, list):
                text = "".join(text)
            for marker in BAD_MARKERS:
                if marker in text:
                    line = next(l for l in text.splitlines() if marker in l)
                    found.append(f"cell {index}: {line.strip()[:300]}")
                    break
            data = out.get("data", {})
            if any(t in data for t in IMAGE_TYPES):
                has_image = True
        if "chart" in tags and not has_image:
            found.append(f"cell {index}: tagged 'chart' but produced no inline image")
    return found


def main(paths):
    paths = paths or sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
    prepare_evcxr_dir()
    # Two runs at once would build their cells in the same kernel crate and overwrite each
    # other's code: the second run waits for the first.
    lock = open(os.path.join(EVCXR_ROOT, "run.lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("another run_notebooks.py is running; waiting for it", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    os.makedirs(OUT, exist_ok=True)
    failures = 0
    timings = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        started = time.time()
        client = NotebookClient(
            nb,
            kernel_name="rust",
            timeout=1800,
            resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}},
        )
        try:
            client.execute()
            errors = problems(nb)
        except CellExecutionError as e:
            errors = [str(e).splitlines()[0] if str(e) else "cell execution error"] + problems(nb)
        except Exception as e:  # kernel died, timeout
            errors = [f"{type(e).__name__}: {e}"]
        elapsed = time.time() - started
        nbformat.write(nb, os.path.join(OUT, os.path.basename(path)))
        status = "ok" if not errors else "FAILED"
        timings.append((os.path.basename(path), elapsed, status))
        print(f"{os.path.basename(path)}: {status} in {elapsed:.0f} s", flush=True)
        for e in errors:
            print(f"  {e}", flush=True)
        failures += bool(errors)
    print("\nnotebook run times:")
    for name, secs, status in timings:
        print(f"  {name:45s} {secs:7.0f} s  {status}")
    passed = len(paths) - failures
    print(f"notebooks: {passed} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
