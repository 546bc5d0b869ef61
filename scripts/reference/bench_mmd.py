#!/usr/bin/env python3
"""numpy side of the MMD permutation-test benchmark (the Rust side is the ignored test
`bench_mmd_permutation_test` in tests/shift.rs).

Same problem and the same algorithm as `replens::metrics::shift::mmd_permutation_test`, written
the efficient way in numpy (float64, BLAS matmuls on all cores): n = 5000 rows per group,
d = 384, 500 permutations; squared distances via |a|^2 + |b|^2 - 2 a.b on the centred pooled
sample, alibi-detect's median bandwidth (lower median of the distinct-pair squared distances),
the RBF kernel matrix once, then the permuted block sums as K @ Z for batches of 0/1 membership
columns, unbiased MMD^2, p = (1 + #{perm >= obs}) / (1 + B).

usage: /opt/ref/venv/bin/python scripts/reference/bench_mmd.py [n_per_group] [d] [permutations]
"""
import sys
import time

import numpy as np


def mmd_permutation_test(x, y, n_perm, seed=0, batch=128):
    m, n_total = len(x), len(x) + len(y)
    z = np.vstack([x, y])
    z -= z.mean(0)
    sq = (z * z).sum(1)
    dist = sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    iu = np.triu_indices(n_total, 1)
    pairs = dist[iu]
    med = np.partition(pairs, (len(pairs) - 1) // 2)[(len(pairs) - 1) // 2]
    del pairs, iu
    sigma2 = 0.5 * med
    k = np.exp(dist * (-1.0 / (2.0 * sigma2)), out=dist)
    total = k.sum()
    rng = np.random.default_rng(seed)
    stats = []
    remaining, first = n_perm + 1, True
    nn = n_total - m
    while remaining > 0:
        b = min(remaining, batch)
        member = np.zeros((n_total, b))
        for c in range(b):
            if first and c == 0:
                member[:m, 0] = 1.0
            else:
                member[rng.permutation(n_total)[:m], c] = 1.0
        first = False
        kz = k @ member
        sxx = (member * kz).sum(0)
        sxy = ((1.0 - member) * kz).sum(0)
        syy = total - sxx - 2.0 * sxy
        stats.extend((sxx - m) / (m * (m - 1)) + (syy - nn) / (nn * (nn - 1)) - 2.0 * sxy / (m * nn))
        remaining -= b
    obs, null = stats[0], np.array(stats[1:])
    return obs, (1 + (null >= obs).sum()) / (1 + len(null))


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    d = int(sys.argv[2]) if len(sys.argv) > 2 else 384
    perms = int(sys.argv[3]) if len(sys.argv) > 3 else 500
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (rng.normal(size=(n, d)) + 0.02).astype(np.float32)
    t = time.perf_counter()
    obs, p = mmd_permutation_test(x.astype(np.float64), y.astype(np.float64), perms)
    dt = time.perf_counter() - t
    print(f"numpy MMD permutation test: n = {n} per group, d = {d}, {perms} permutations: "
          f"{dt:.2f} s (MMD2_u = {obs:.6e}, p = {p:.4f})")


if __name__ == "__main__":
    main()
