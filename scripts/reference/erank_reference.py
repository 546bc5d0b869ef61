#!/usr/bin/env python3
"""Reference oracle for `replens::metrics::erank` (Diff-eRank, Wei et al., NeurIPS 2024,
arXiv 2401.17139; official code: github.com/waltonfuture/Diff-eRank).

Computes eRank the way the official code does (torch): centre the rows by the column mean,
L2-normalise every row, A = Z^T Z / N, singular values of A / trace(A), entropy
H = -nansum(lambda * log lambda), eRank = exp(H); dataset level: exp(mean H) per model,
Diff-eRank = exp(mean H_untrained) - exp(mean H_trained), sentences with N < 2 skipped.

The computation below is written independently of the official code, in float64 (the
"exact" answer the Rust code is checked against to <= 1e-5 relative). The float32 result of
the same pipeline (what the official code gives on fp32 hidden states) is stored alongside as
`*.erank_fp32` for information.

One documented deviation: a row that is exactly the column mean becomes zero after centring.
The official code divides it by its zero norm and gets NaN for the whole sentence. replens
skips such rows (and counts them); the `zero_row` case here applies the same rule: a centred
row r_i - mu is dropped when ||r_i - mu|| <= 1e-12 (||r_i|| + ||mu||).

Writes tests/fixtures/erank/erank_cases.safetensors. Run from the repository root:
    /opt/ref/venv/bin/python scripts/reference/erank_reference.py
"""

import os

import numpy as np
import torch
from safetensors.numpy import save_file

ZERO_ROW_REL_TOL = 1e-12


def normalize_rows(r: torch.Tensor) -> torch.Tensor:
    """Centre by the column mean over all rows, drop rows that are zero after centring,
    L2-normalise what is left (official: R - mean, R / ||R||, then F.normalize again)."""
    mu = r.mean(dim=0)
    z = r - mu
    norms = torch.linalg.vector_norm(z, dim=1)
    keep = norms > ZERO_ROW_REL_TOL * (torch.linalg.vector_norm(r, dim=1) + torch.linalg.vector_norm(mu))
    z = z[keep]
    z = z / torch.linalg.vector_norm(z, dim=1, keepdim=True)
    z = torch.nn.functional.normalize(z, dim=1)
    return z, int((~keep).sum())


def entropy_of(r: torch.Tensor):
    z, zero_rows = normalize_rows(r)
    a = z.T @ z / z.shape[0]
    lam = torch.linalg.svdvals(a / torch.trace(a))
    h = -(lam * torch.log(lam)).nansum().item()
    return h, lam, zero_rows


def case_matrices(rng: np.random.Generator):
    cases = {}
    # N < d: the Rust code takes the N x N side.
    cases["small_5x16"] = rng.standard_normal((5, 16))
    # N > d, mildly anisotropic.
    cases["mid_40x32"] = rng.standard_normal((40, 32)) * np.linspace(2.0, 0.5, 32)
    # N > d with a decaying spectrum (like LLM hidden states), plus a large common offset.
    n, d = 300, 64
    u, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scales = np.exp(-np.arange(d) / 6.0)
    cases["decay_300x64"] = (rng.standard_normal((n, d)) * scales) @ u.T + 3.0 * rng.standard_normal(d)
    # N < d with a decaying spectrum.
    cases["decay_20x100"] = rng.standard_normal((20, 100)) * np.exp(-np.arange(100) / 10.0)
    # Rank one after centring: every row is a_i * v + c, so every unit row is +-v/|v|: eRank = 1.
    v = rng.standard_normal(24)
    c = rng.standard_normal(24)
    a = rng.standard_normal(30)
    cases["rank1_30x24"] = np.outer(a, v) + c
    # A set of rows repeated several times (duplicates are fine, they are not zero rows).
    base = rng.standard_normal((6, 12))
    cases["duplicated_18x12"] = np.concatenate([base, base[:3], base[:3], base[1:4], base[2:5]], axis=0)
    # One row equals the column mean exactly (small integers, exact in f32 and f64):
    # rows a, b, (a + b) / 2 plus a row pair symmetric around it.
    ia = rng.integers(-8, 8, size=10).astype(np.float64) * 2.0
    ib = rng.integers(-8, 8, size=10).astype(np.float64) * 2.0
    mid = (ia + ib) / 2.0
    off = rng.integers(-4, 4, size=10).astype(np.float64)
    cases["zero_row_5x10"] = np.stack([ia, ib, mid, mid + off, mid - off])
    # Two rows: eRank of two distinct centred rows (they are +-w): 1.
    cases["two_rows_2x8"] = rng.standard_normal((2, 8))
    return {k: v.astype(np.float32) for k, v in cases.items()}


def dataset_case(rng: np.random.Generator):
    """Six 'sentences' seen by an untrained (isotropic) and a trained (low-rank) model."""
    lengths = [7, 1, 12, 25, 3, 40]  # the N = 1 sentence is skipped
    d = 16
    out = {}
    proj = rng.standard_normal((4, d))
    for i, n in enumerate(lengths):
        out[f"dataset.untrained.{i}"] = rng.standard_normal((n, d)).astype(np.float32)
        out[f"dataset.trained.{i}"] = (
            rng.standard_normal((n, 4)) @ proj + 0.05 * rng.standard_normal((n, d))
        ).astype(np.float32)
    return out, len(lengths)


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out_dir = os.path.join(root, "tests", "fixtures", "erank")
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(20240130)
    tensors = {}
    names = []
    for name, x in case_matrices(rng).items():
        h, lam, zero_rows = entropy_of(torch.from_numpy(x).double())
        h32, _, _ = entropy_of(torch.from_numpy(x))
        tensors[f"{name}.input"] = x
        tensors[f"{name}.entropy"] = np.array([h], dtype=np.float64)
        tensors[f"{name}.erank"] = np.array([np.exp(h)], dtype=np.float64)
        tensors[f"{name}.erank_fp32"] = np.array([np.exp(h32)], dtype=np.float64)
        tensors[f"{name}.spectrum"] = lam.numpy().astype(np.float64)
        tensors[f"{name}.zero_rows"] = np.array([zero_rows], dtype=np.int64)
        names.append(name)
        print(f"{name:18s} shape={x.shape} H={h:.12f} eRank={np.exp(h):.12f} "
              f"eRank_fp32={np.exp(h32):.9f} zero_rows={zero_rows}")

    ds, n_sent = dataset_case(rng)
    tensors.update(ds)
    h0, h1 = [], []
    for i in range(n_sent):
        r0 = torch.from_numpy(ds[f"dataset.untrained.{i}"]).double()
        r1 = torch.from_numpy(ds[f"dataset.trained.{i}"]).double()
        if r0.shape[0] < 2:
            continue
        h0.append(entropy_of(r0)[0])
        h1.append(entropy_of(r1)[0])
    e0 = np.exp(np.mean(h0))
    e1 = np.exp(np.mean(h1))
    tensors["dataset.entropies_untrained"] = np.array(h0, dtype=np.float64)
    tensors["dataset.entropies_trained"] = np.array(h1, dtype=np.float64)
    tensors["dataset.erank_untrained"] = np.array([e0], dtype=np.float64)
    tensors["dataset.erank_trained"] = np.array([e1], dtype=np.float64)
    tensors["dataset.diff_erank"] = np.array([e0 - e1], dtype=np.float64)
    tensors["dataset.num_sentences"] = np.array([n_sent], dtype=np.int64)
    print(f"dataset: eRank0={e0:.10f} eRank1={e1:.10f} diff={e0 - e1:.10f} (used {len(h0)} of {n_sent})")

    path = os.path.join(out_dir, "erank_cases.safetensors")
    save_file(tensors, path, metadata={"cases": ",".join(names), "seed": "20240130"})
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
