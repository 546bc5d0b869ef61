#!/usr/bin/env python3
"""Side-by-side benchmarks: replens bench binaries vs the Python reference, same inputs, same
machine, same threads. Each work item runs in its own process on both sides (peak RSS per item),
the two sides' `check` values must agree before a time is reported, and the table shows medians
and the speed ratio (reference time / replens time: > 1 means replens is faster).

usage: python3 scripts/bench.py [--threads N] [--only SUBSTR] [--write BENCHMARKS.md]
The reference Python is $REPLENS_REF_PYTHON (default /opt/ref/venv/bin/python; it needs torch,
transformers, numpy, scikit-learn). The Rust side is built with the dev profile (what
`cargo run`/`cargo test` build: dependencies at opt-level 2, the matmul kernels at 3).
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
REF = os.path.join(ROOT, "scripts", "reference")

# (work item, rust bench, rust args, reference script, reference args, relative tolerance of check)
ITEMS = [
    ("extract-default-b1", "extraction", ["default", "1"], "bench_extract.py", ["default", "1"], 1e-3),
    ("extract-default-b8", "extraction", ["default", "8"], "bench_extract.py", ["default", "8"], 1e-3),
    ("extract-minilm-b1", "extraction", ["minilm", "1"], "bench_extract.py", ["minilm", "1"], 1e-3),
    ("extract-minilm-b8", "extraction", ["minilm", "8"], "bench_extract.py", ["minilm", "8"], 1e-3),
    # the same float32 reference, with replens's opt-in f32 encoder (LoadOptions::encoder_precision)
    ("extract-minilm-f32-b1", "extraction", ["minilm-f32", "1"], "bench_extract.py", ["minilm", "1"], 1e-3),
    ("extract-minilm-f32-b8", "extraction", ["minilm-f32", "8"], "bench_extract.py", ["minilm", "8"], 1e-3),
    ("erank-10k", "metrics", ["erank-10k"], "bench_metrics.py", ["erank-10k"], 1e-5),
    # the same fp32 reference, with replens's Gram product in f32 too (eigen-solve still f64)
    ("erank-10k-f32gram", "metrics", ["erank-10k-f32gram"], "bench_metrics.py", ["erank-10k"], 1e-4),
    # Diff-eRank's dataset workload: one eRank per sentence (16-128 tokens x 768), exp(mean H);
    # the reference computes in fp32 (9.5e-6 from its own float64, which replens matches to 1e-11)
    ("erank-corpus-50", "metrics", ["erank-corpus-50"], "bench_metrics.py", ["erank-corpus-50"], 1e-4),
    ("erank-stream-100k", "metrics", ["erank-stream-100k"], "bench_metrics.py", ["erank-stream-100k"], 1e-5),
    ("erank-stream-100k-f32gram", "metrics", ["erank-stream-100k-f32gram"], "bench_metrics.py", ["erank-stream-100k"], 1e-4),
    ("cka-50k", "metrics", ["cka-50k"], "bench_metrics.py", ["cka-50k"], 1e-4),
    ("mmd-perm-5k", "metrics", ["mmd-perm-5k"], "bench_metrics.py", ["mmd-perm-5k"], 1e-5),
    ("adue-fit-6k", "metrics", ["adue-fit-6k"], "bench_metrics.py", ["adue-fit-6k"], 1e-4),
]


def bench_binaries():
    out = subprocess.run(
        ["cargo", "build", "--benches", "--message-format=json"],
        cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    bins = {}
    for line in out.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") == "compiler-artifact" and "bench" in msg["target"]["kind"] and msg.get("executable"):
            bins[msg["target"]["name"]] = msg["executable"]
    return bins


def run_measured(cmd, env):
    """Like run(), with the child's peak RSS from wait4."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.dup2(w, 1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(r)
        os.execvpe(cmd[0], cmd, env)
    os.close(w)
    chunks = []
    while True:
        data = os.read(r, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(r)
    _, status, usage = os.wait4(pid, 0)
    out = b"".join(chunks).decode()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {code}; output:\n{out[-2000:]}")
    lines = [l for l in out.splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(cmd)} printed no result line:\n{out[-1000:]}")
    return json.loads(lines[-1]), usage.ru_maxrss / 1024.0


def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="")
    ap.add_argument("--write", default="")
    args = ap.parse_args()
    py = os.environ.get("REPLENS_REF_PYTHON", "/opt/ref/venv/bin/python")
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    bins = bench_binaries()
    rows = []
    failed = False
    for work, bench, rargs, script, pargs, tol in ITEMS:
        if args.only and args.only not in work:
            continue
        try:
            ours, our_rss = run_measured([bins[bench]] + rargs, env)
            theirs, their_rss = run_measured([py, os.path.join(REF, script)] + pargs + [str(args.threads)], env)
        except Exception as e:  # noqa: BLE001 - report and continue with the other items
            print(f"{work}: FAILED: {e}", file=sys.stderr)
            failed = True
            continue
        a, b = ours["check"], theirs["check"]
        rel = abs(a - b) / max(abs(b), 1e-30)
        agree = rel <= tol
        failed |= not agree
        ratio = theirs["median_s"] / ours["median_s"]
        rows.append((work, ours["median_s"], theirs["median_s"], ratio, our_rss, their_rss, theirs["impl"], rel, agree))
        print(f"{work}: replens {ours['median_s']:.3f} s, {theirs['impl']} {theirs['median_s']:.3f} s, "
              f"ratio {ratio:.2f}x, check rel diff {rel:.1e} ({'agree' if agree else 'DISAGREE'})", flush=True)
    table = [
        f"Machine: {machine()}; threads: {args.threads} on both sides.",
        "",
        "| work | replens (s) | reference (s) | ratio (ref/replens) | peak RSS replens (MiB) | peak RSS reference (MiB) | reference | check rel. diff |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for work, ot, tt, ratio, orss, trss, impl, rel, agree in rows:
        table.append(f"| {work} | {ot:.3f} | {tt:.3f} | {ratio:.2f}x | {orss:.0f} | {trss:.0f} | {impl} | {rel:.1e}{'' if agree else ' DISAGREE'} |")
    text = "\n".join(table)
    print("\n" + text)
    if args.write:
        path = os.path.join(ROOT, args.write)
        doc = open(path).read()
        doc = re.sub(r"(<!-- bench-table -->\n).*?(\n<!-- /bench-table -->)", lambda m: m.group(1) + text + m.group(2), doc, flags=re.S)
        open(path, "w").write(doc)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
