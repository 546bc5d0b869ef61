#!/usr/bin/env python3
"""Reference oracle for `replens::metrics::similarity` and `replens::metrics::linalg`
(study 2: representation similarity).

Every index is re-derived here in numpy (float64) from the papers and the public reference
implementations, written independently (nothing is imported from them):

* linear CKA, RBF CKA, debiased CKA: Kornblith et al., ICML 2019 (their `cka.py`: `gram_linear`,
  `gram_rbf(x, threshold)` with the median over all n^2 squared distances, `center_gram`,
  `cka(..., debiased)`); the debiased value is computed twice, with Kornblith's unbiased
  `center_gram` and with platonic-rep's `hsic_unbiased` formula (Song et al. 2012) on the
  *uncentred* features, and the two must agree (checks the centring invariance replens uses).
* SVCCA: Raghu et al., NeurIPS 2017 -- centre, keep the smallest number of singular
  directions whose squared singular values reach `keep` of the total, mean canonical
  correlation. CCA by SVD as in anatome's `cca_by_svd` (singular values of U1^T U2).
* PWCCA: Morcos et al., NeurIPS 2018 -- alpha_i = sum_j |<h_i, x_j>| over the neurons x_j
  (centred columns of X), h_i the X-side canonical variates; sum alpha_i rho_i / sum alpha_i.
  anatome's variant (abs-sum over data points of x @ a) is written for information only.
* Procrustes: Ding et al., NeurIPS 2021 -- 2 - 2 ||Xn^T Yn||_* with Xn = Xc / ||Xc||_F.
* mutual kNN: Huh et al., ICML 2024 (platonic-rep `mutual_knn`): L2-normalised rows, top-k
  of feats @ feats.T with the diagonal excluded, mean overlap / k.
* symmetric eigen-decomposition: numpy.linalg.eigh.

Writes tests/fixtures/similarity/cases.safetensors (the matrices, float64) and
tests/fixtures/similarity/expected.json (the values). Run from the repository root:
    /opt/ref/venv/bin/python scripts/reference/similarity_reference.py
`--bench` instead times the numpy linear CKA on 50000 x 768 float32 (and float64) inputs.
"""

import json
import os

import numpy as np
from safetensors.numpy import save_file

OUT = os.path.join("tests", "fixtures", "similarity")
CCA_REL_FLOOR = 1e-10  # on eigenvalues of the covariance, i.e. s^2


def centre(x):
    return x - x.mean(axis=0, keepdims=True)


# ----------------------------------------------------------------------------- CKA family
def gram_linear(x):
    return x @ x.T


def gram_rbf(x, threshold):
    dot = x @ x.T
    sq = np.diag(dot)
    d2 = -2 * dot + sq[:, None] + sq[None, :]
    return np.exp(-d2 / (2 * threshold**2 * np.median(d2)))


def center_gram(g, unbiased=False):
    g = g.copy()
    if unbiased:
        n = g.shape[0]
        np.fill_diagonal(g, 0)
        means = g.sum(0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        g -= means[:, None]
        g -= means[None, :]
        np.fill_diagonal(g, 0)
    else:
        means = g.mean(0)
        means -= means.mean() / 2
        g -= means[:, None]
        g -= means[None, :]
    return g


def cka(gx, gy, debiased=False):
    gx = center_gram(gx, debiased)
    gy = center_gram(gy, debiased)
    return float(gx.ravel() @ gy.ravel() / (np.linalg.norm(gx) * np.linalg.norm(gy)))


def linear_cka_feature(x, y):
    xc, yc = centre(x), centre(y)
    return float(np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)))


def hsic_unbiased(k, l):
    m = k.shape[0]
    kt = k.copy()
    lt = l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    v = (kt * lt.T).sum() + kt.sum() * lt.sum() / ((m - 1) * (m - 2)) - 2 * (kt @ lt).sum() / (m - 2)
    return v / (m * (m - 3))


def debiased_cka_platonic(x, y):
    k, l = x @ x.T, y @ y.T  # platonic-rep does not centre
    return float(hsic_unbiased(k, l) / np.sqrt(hsic_unbiased(k, k) * hsic_unbiased(l, l)))


# ----------------------------------------------------------------------------- CCA family
def svd_basis(xc, keep):
    """Left singular vectors / values of the centred matrix, truncated to `keep` of the
    variance (s^2) and never below the relative floor."""
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    lam = s**2
    rank = int((lam > CCA_REL_FLOOR * lam[0]).sum())
    u, s, vt, lam = u[:, :rank], s[:rank], vt[:rank], lam[:rank]
    if keep < 1.0:
        cum = np.cumsum(lam) / lam.sum()
        k = int(np.argmax(cum >= keep)) + 1
    else:
        k = rank
    return u[:, :k], s[:k], vt[:k]


def cca_svd(xc, yc, keep=1.0):
    u1, s1, v1 = svd_basis(xc, keep)
    u2, s2, v2 = svd_basis(yc, keep)
    p, rho, qt = np.linalg.svd(u1.T @ u2, full_matrices=False)
    return u1, p, np.clip(rho, 0, 1), (u1.shape[1], u2.shape[1])


def svcca(x, y, keep):
    _, _, rho, dims = cca_svd(centre(x), centre(y), keep)
    return float(rho.mean()), dims


def pwcca(x, y):
    xc, yc = centre(x), centre(y)
    u1, p, rho, _ = cca_svd(xc, yc)
    h = u1 @ p  # n x m canonical variates, orthonormal
    alpha = np.abs(xc.T @ h).sum(axis=0)
    return float((alpha * rho).sum() / alpha.sum())


def pwcca_anatome(x, y):
    """anatome's weighting (for information): a = V1 S1^-1 u; alpha = sum over data points."""
    xc, yc = centre(x), centre(y)
    u_1, s_1, v_1t = np.linalg.svd(xc, full_matrices=False)
    u_2, s_2, v_2t = np.linalg.svd(yc, full_matrices=False)
    u, diag, vt = np.linalg.svd(u_1.T @ u_2, full_matrices=False)
    a = v_1t.T @ (u / s_1[:, None])
    alpha = np.abs(x @ a).sum(axis=0)
    alpha /= alpha.sum()
    return float(alpha @ diag)


def procrustes(x, y):
    xc, yc = centre(x), centre(y)
    xc /= np.linalg.norm(xc)
    yc /= np.linalg.norm(yc)
    return float(2 - 2 * np.linalg.norm(xc.T @ yc, ord="nuc"))


def mutual_knn(x, y, k):
    def knn(f):
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
        s = f @ f.T
        np.fill_diagonal(s, -1e8)
        order = np.argsort(-s, axis=1, kind="stable")
        # guard: the k-th and (k+1)-th similarities must differ (no ties at the cut)
        srt = -np.sort(-s, axis=1)
        assert np.all(srt[:, k - 1] - srt[:, k] > 1e-12), "tie at the kNN cut"
        return order[:, :k]

    a, b = knn(x), knn(y)
    n = x.shape[0]
    ma = np.zeros((n, n))
    mb = np.zeros((n, n))
    rows = np.arange(n)[:, None]
    ma[rows, a] = 1
    mb[rows, b] = 1
    return float(((ma * mb).sum(1) / k).mean())


# ----------------------------------------------------------------------------- cases
def make_cases(rng):
    cases = {}
    # Y is a noisy non-linear function of X: every index lands strictly inside its range.
    n, d1, d2 = 60, 12, 9
    x = rng.standard_normal((n, d1)) * np.linspace(2.0, 0.3, d1)
    w = rng.standard_normal((d1, d2))
    y = np.tanh(x @ w / 3) + 0.3 * rng.standard_normal((n, d2))
    cases["small"] = (x, y)
    # Wider, with a huge common offset on some features (residual-stream-like massive
    # activations): checks centring before the Gram products.
    n, d1, d2 = 120, 40, 24
    z = rng.standard_normal((n, 6))
    x = z @ rng.standard_normal((6, d1)) + 0.5 * rng.standard_normal((n, d1))
    x[:, 3] += 1000.0
    x[:, 17] -= 250.0
    y = np.maximum(z @ rng.standard_normal((6, d2)), 0) + 0.5 * rng.standard_normal((n, d2))
    y[:, 0] += 500.0
    cases["wide_offset"] = (x, y)
    # Rank-deficient X (a constant and a collinear column): pseudo-inverse whitening in CCA.
    n, d1, d2 = 50, 10, 7
    x = rng.standard_normal((n, d1))
    x[:, 3] = 2.5
    x[:, 7] = x[:, 1] - 2 * x[:, 2]
    y = x[:, :7] @ rng.standard_normal((7, d2)) + rng.standard_normal((n, d2))
    cases["rank_deficient"] = (x, y)
    return cases


def main():
    rng = np.random.default_rng(20261126)
    os.makedirs(OUT, exist_ok=True)
    tensors = {}
    expected = {"cases": {}, "eigen": {}}
    for name, (x, y) in make_cases(rng).items():
        tensors[f"{name}.x"] = np.ascontiguousarray(x)
        tensors[f"{name}.y"] = np.ascontiguousarray(y)
        lin_kernel = cka(gram_linear(centre(x)), gram_linear(centre(y)))
        lin_feat = linear_cka_feature(x, y)
        assert abs(lin_kernel - lin_feat) < 1e-12, (lin_kernel, lin_feat)
        deb_kornblith = cka(gram_linear(centre(x)), gram_linear(centre(y)), debiased=True)
        deb_platonic = debiased_cka_platonic(x, y)
        # Equal up to the rounding of the uncentred n x n kernels (entries ~1e6 with the
        # offset case's 1000-sized means): the estimator is translation invariant.
        assert abs(deb_kornblith - deb_platonic) < 1e-6, (deb_kornblith, deb_platonic)
        sv99, dims99 = svcca(x, y, 0.99)
        sv90, dims90 = svcca(x, y, 0.9)
        e = {
            "n": x.shape[0],
            "d1": x.shape[1],
            "d2": y.shape[1],
            "linear_cka": lin_feat,
            "rbf_cka_0.5": cka(gram_rbf(x, 0.5), gram_rbf(y, 0.5)),
            "rbf_cka_0.8": cka(gram_rbf(x, 0.8), gram_rbf(y, 0.8)),
            "debiased_cka": deb_kornblith,
            "svcca_0.99": sv99,
            "svcca_0.99_dims": list(dims99),
            "svcca_0.9": sv90,
            "svcca_0.9_dims": list(dims90),
            "pwcca_xy": pwcca(x, y),
            "pwcca_yx": pwcca(y, x),
            "pwcca_anatome_xy_info": pwcca_anatome(x, y),
            "procrustes": procrustes(x, y),
            "mutual_knn_5": mutual_knn(x, y, 5),
            "mutual_knn_10": mutual_knn(x, y, 10),
        }
        expected["cases"][name] = e
        print(name, json.dumps({k: v for k, v in e.items()}, indent=None))

    # Symmetric eigen-decomposition: a random symmetric matrix (distinct eigenvalues, both
    # signs) and a rank-5 Gram matrix (a cluster of zeros).
    a = rng.standard_normal((30, 30))
    a = (a + a.T) / 2
    g = rng.standard_normal((16, 5))
    g = g @ g.T
    for name, m in (("sym30", a), ("gram16_rank5", g)):
        vals, vecs = np.linalg.eigh(m)
        order = np.argsort(-vals)
        tensors[f"eigen.{name}.a"] = np.ascontiguousarray(m)
        tensors[f"eigen.{name}.vectors"] = np.ascontiguousarray(vecs[:, order])
        expected["eigen"][name] = {"n": m.shape[0], "values": vals[order].tolist()}

    save_file(tensors, os.path.join(OUT, "cases.safetensors"))
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    print("wrote", OUT)


def bench(n=50_000, d=768, repeats=3):
    """Wall time of linear CKA on n x d float32 activations, the numpy way (what a user of
    Kornblith's / anatome's feature-space formula runs): centre, three Gram products in the
    input dtype, Frobenius norms. Compare with
    `cargo test --test similarity time_linear_cka -- --ignored --nocapture`."""
    import time

    rng = np.random.default_rng(4)
    x = rng.standard_normal((n, d), dtype=np.float32)
    y = x + 0.5 * rng.standard_normal((n, d), dtype=np.float32)
    for dtype in (np.float32, np.float64):
        xs, ys = x.astype(dtype), y.astype(dtype)
        best = (float("inf"), 0.0)
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            xc = xs - xs.mean(axis=0, dtype=np.float64).astype(dtype)
            yc = ys - ys.mean(axis=0, dtype=np.float64).astype(dtype)
            v = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
            best = min(best, (time.perf_counter() - t0, time.process_time() - c0))
        print(
            f"numpy linear CKA {n}x{d} {np.dtype(dtype).name}: best of {repeats} {best[0]:.2f} s wall, "
            f"{best[1]:.2f} s CPU (value {float(v):.9f})"
        )


if __name__ == "__main__":
    import sys

    if "--bench" in sys.argv:
        bench()
    else:
        main()
