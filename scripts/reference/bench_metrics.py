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


def sentence_lengths(sentences):
    """Token counts of the corpus sentences (benches/metrics.rs `sentence_lengths`)."""
    return [16 + (37 * i) % 113 for i in range(sentences)]


def corpus_erank_official(sentences):
    """Diff-eRank's dataset loop: the official per-sentence eRank of each sentence's
    N_i x 768 hidden states, combined as exp(mean log eRank) = exp(mean H) (STUDIES.md)."""
    return math.exp(sum(math.log(erank_official(s)) for s in sentences) / len(sentences))


def feature_space_linear_cka(x, y):
    """Kornblith et al. 2019's feature-space linear CKA (their notebook's formula), numpy."""
    x = x - x.mean(axis=0, keepdims=True)
    y = y - y.mean(axis=0, keepdims=True)
    return np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def adue_fit(z_train, y_train, z_val, y_val, w, b, epochs=20, lr=1e-2, alpha=0.1, beta=0.01, lam=100.0):
    """The official AdUE head training step (BCE + alpha * SR regulariser + beta * L2-SP,
    Adam + OneCycleLR), full batch, validation ROC-AUC after every epoch."""
    from sklearn.metrics import roc_auc_score
    c = w.shape[0]
    lin = torch.nn.Linear(w.shape[1], c)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
        lin.bias.copy_(torch.from_numpy(b))
    init = {n: p.detach().clone() for n, p in lin.named_parameters()}

    def u_of(z):
        p = torch.softmax(lin(z), dim=1)
        sm = (1 / lam) * torch.logsumexp(lam * p, dim=1)
        return torch.clamp((1 - sm) / (1 - 1 / c), min=1e-8, max=1 - 1e-8)

    def targets(z, y):
        with torch.no_grad():
            p = torch.softmax(z @ torch.from_numpy(w).T + torch.from_numpy(b), dim=1)
        e = (p.argmax(dim=1) != torch.from_numpy(y)).float()
        return e, (1 - p.max(dim=1).values) / (1 - 1 / c)

    ztr, zva = torch.from_numpy(z_train), torch.from_numpy(z_val)
    etr, usrtr = targets(ztr, y_train)
    eva, _ = targets(zva, y_val)
    opt = torch.optim.Adam(lin.parameters(), lr=lr)
    sch = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs, anneal_strategy="cos",
                                              pct_start=0.1, div_factor=25.0, final_div_factor=1e4)
    bce = torch.nn.BCELoss()
    loss = None
    for _ in range(epochs):
        u = u_of(ztr)
        l2sp = sum(((p - init[n]) ** 2).sum() for n, p in lin.named_parameters())
        loss = bce(u, etr) + alpha * torch.mean((u - usrtr) ** 2) + beta * l2sp
        opt.zero_grad()
        loss.backward()
        opt.step()
        sch.step()
        with torch.no_grad():
            roc_auc_score(eva.numpy(), u_of(zva).numpy())
    return loss.item()


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
    elif work.startswith("erank-corpus-"):
        count = int(work.rsplit("-", 1)[1])
        sentences, first_row = [], 0
        for n in sentence_lengths(count):
            sentences.append(torch.from_numpy(matrix(first_row, n, D, 9)))
            first_row += n
        secs, value = median_time(3, lambda: corpus_erank_official(sentences))
        report(work, "torch (official code path)", secs, 3, value)
    elif work == "cka-50k":
        x = matrix(0, 50_000, D, 2)
        y = (np.float32(0.5) * x + matrix(0, 50_000, D, 3)).astype(np.float32)
        secs, value = median_time(3, lambda: feature_space_linear_cka(x, y))
        report(work, "numpy (Kornblith et al.)", secs, 3, value)
    elif work == "adue-fit-6k":
        n_train, n_val = 6000, 2000
        z = matrix(0, n_train + n_val, D, 4)
        from bench_common import uniform
        labels = (uniform(np.arange(n_train + n_val, dtype=np.uint64), 6) > 0).astype(np.int64)
        w = (np.float32(0.1) * matrix(0, 2, D, 5)).astype(np.float32)
        b = np.zeros(2, dtype=np.float32)
        secs, value = median_time(3, lambda: adue_fit(z[:n_train], labels[:n_train], z[n_train:], labels[n_train:], w, b))
        report(work, "torch (official AdUE loop)", secs, 3, value)
    elif work == "mmd-perm-5k":
        from bench_mmd import mmd_permutation_test
        x = matrix(0, 5000, 384, 7).astype(np.float64)
        y = (matrix(0, 5000, 384, 8) + np.float32(0.02)).astype(np.float64)
        secs, value = median_time(3, lambda: mmd_permutation_test(x.copy(), y.copy(), 500)[0])
        report(work, "numpy (alibi-detect-style)", secs, 3, value)
    else:
        sys.exit(f"unknown work item {work}")


if __name__ == "__main__":
    main()
