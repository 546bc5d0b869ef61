#!/usr/bin/env python3
"""Reference side of benches/metrics.rs: the same inputs (bench_common.matrix) and the same
work, written the way the papers' official code does it (torch / numpy).

usage: python scripts/reference/bench_metrics.py WORK [threads]
"""
import math
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench_common import matrix, median_time, report  # noqa: E402

D = 768


def erank_official(r: torch.Tensor) -> float:
    """Diff-eRank's official pipeline (waltonfuture/Diff-eRank): centre, L2-normalise rows,
    Z^T Z / N, singular values of A / trace(A), exp(entropy) — in the input dtype (fp32)."""
    z = r - r.mean(dim=0)
    z = z / torch.linalg.vector_norm(z, dim=1, keepdim=True)
    a = z.T @ z / z.shape[0]
    lam = torch.linalg.svdvals(a / torch.trace(a))
    return math.exp(-(lam * torch.log(lam)).nansum().item())


def main():
    work = sys.argv[1]
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    torch.set_num_threads(threads)
    if work in ("erank-10k", "erank-100k", "erank-stream-100k"):
        rows = 10_000 if work == "erank-10k" else 100_000
        x = torch.from_numpy(matrix(0, rows, D, 1))
        runs = 5 if rows == 10_000 else 3
        secs, value = median_time(runs, lambda: erank_official(x))
        report(work, "torch (official code path)", secs, runs, value)
    else:
        sys.exit(f"unknown work item {work}")


if __name__ == "__main__":
    main()
