#!/usr/bin/env python3
"""Reference oracle for `replens::metrics::uncertainty` and `replens::train::adue` (study 5,
AdUE: Zabolotnyi et al., arXiv 2505.15443; official code github.com/zaaabik/AdUE).

Writes tests/fixtures/uncertainty/uncertainty_cases.safetensors (float64 unless noted):

* auc/<case>/{scores, labels(u8), auc, fpr, tpr, thresholds}: sklearn.metrics.roc_auc_score
  and roc_curve(drop_intermediate=False), on cases with many ties.
* md/<case>/{train, train_labels(i64), test, md_all, md, md0, rmd, ridge, l2}: Mahalanobis
  distance with class means and a tied covariance (1/N normalisation, Lee et al. 2018) on
  L2-normalised features, inverted as Sigma + ridge * tr(Sigma)/d * I, min over classes;
  relative MD (Ren et al. 2021) = min_c MD_c - MD_0 with MD_0 from one background Gaussian.
  Written directly in numpy (np.linalg.inv + einsum), independent of the Rust Cholesky route.
* cal/{probs, labels, ece10, ece15, entropy, sr, bins15_count, bins15_acc, bins15_conf}:
  ECE with equal-width bins (lo, hi] = (m/M, (m+1)/M] on max-probability confidence
  (Guo et al. 2017), entropy from scipy.stats.entropy (nats), SR = 1 - max p. Some rows sit
  exactly on bin edges.
* onecycle/<T>/{lr, beta1}: torch.optim.lr_scheduler.OneCycleLR(anneal_strategy='cos',
  pct_start=0.1, div_factor=25, final_div_factor=1e4) on Adam, the lr and beta1 per step.
* adue/*: a full-batch AdUE fit in torch (float32) exactly as the official AdueModel
  (BCELoss + alpha * mean((U - U_SR)^2) + beta * L2-SP, Adam + OneCycleLR per step):
  per-epoch training loss and validation ROC-AUC, the head weights after every epoch, and
  U of the initial head on the validation split. With batch = n_train there is no
  shuffling, so the Rust fit with batch_size >= n_train must reproduce it.

Run from the repository root:
    /opt/ref/venv/bin/python scripts/reference/uncertainty_reference.py
"""

import os

import numpy as np
import scipy.stats
import torch
from safetensors.numpy import save_file
from sklearn.metrics import roc_auc_score, roc_curve

OUT = "tests/fixtures/uncertainty/uncertainty_cases.safetensors"
rng = np.random.default_rng(20250515)
T = {}


# ---------------------------------------------------------------- ROC-AUC / ROC curve
def auc_case(name, scores, labels):
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    T[f"auc/{name}/scores"] = scores
    T[f"auc/{name}/labels"] = labels.astype(np.uint8)
    T[f"auc/{name}/auc"] = np.array([roc_auc_score(labels, scores)])
    T[f"auc/{name}/fpr"] = fpr.astype(np.float64)
    T[f"auc/{name}/tpr"] = tpr.astype(np.float64)
    T[f"auc/{name}/thresholds"] = thr.astype(np.float64)


n = 600
s = rng.integers(0, 6, n).astype(np.float64)  # 6 distinct values: heavy ties
auc_case("int_ties", s, rng.random(n) < 0.15 + 0.1 * s)
s = np.round(rng.normal(size=1000), 1)
auc_case("rounded", s, rng.random(1000) < 1 / (1 + np.exp(-2 * s)))
s = rng.normal(size=300)
auc_case("continuous", s, rng.random(300) < 1 / (1 + np.exp(-s)))
auc_case("all_tied", np.full(50, 0.3), rng.random(50) < 0.4)
auc_case("perfect", np.arange(20.0), np.arange(20) >= 12)
auc_case("inverted", np.arange(20.0), np.arange(20) < 5)
lab = np.zeros(400, dtype=bool)
lab[[3, 150, 151]] = True
auc_case("imbalanced", np.round(rng.random(400), 2), lab)
# probabilities as a classifier emits them: many exact 1.0 / 0.0 saturations
p = 1 / (1 + np.exp(-rng.normal(scale=30, size=500)))
auc_case("saturated", p.astype(np.float32).astype(np.float64), rng.random(500) < 0.3)


# ---------------------------------------------------------------- Mahalanobis / RMD
def gaussian(x, groups, k, ridge):
    n, d = x.shape
    means = np.stack([x[groups == c].mean(axis=0) for c in range(k)])
    xc = x - means[groups]
    cov = xc.T @ xc / n
    cov = cov + ridge * np.trace(cov) / d * np.eye(d)
    return means, np.linalg.inv(cov)


def md_all(x, means, prec):
    diff = x[:, None, :] - means[None, :, :]
    return np.einsum("nkd,de,nke->nk", diff, prec, diff)


def md_case(name, train, labels, test, k, ridge, l2):
    if l2:
        trn = train / np.linalg.norm(train, axis=1, keepdims=True)
        tst = test / np.linalg.norm(test, axis=1, keepdims=True)
    else:
        trn, tst = train, test
    means, prec = gaussian(trn, labels, k, ridge)
    mall = md_all(tst, means, prec)
    m0, p0 = gaussian(trn, np.zeros(len(trn), dtype=int), 1, ridge)
    md0 = md_all(tst, m0, p0)[:, 0]
    T[f"md/{name}/train"] = train
    T[f"md/{name}/train_labels"] = labels.astype(np.int64)
    T[f"md/{name}/test"] = test
    T[f"md/{name}/md_all"] = mall
    T[f"md/{name}/md"] = mall.min(axis=1)
    T[f"md/{name}/md0"] = md0
    T[f"md/{name}/rmd"] = mall.min(axis=1) - md0
    T[f"md/{name}/ridge"] = np.array([ridge])
    T[f"md/{name}/l2"] = np.array([1.0 if l2 else 0.0])


k, d = 3, 8
centres = rng.normal(scale=2.0, size=(k, d)) + 3.0
labels = rng.integers(0, k, 300)
train = centres[labels] + rng.normal(size=(300, d)) @ rng.normal(size=(d, d)) * 0.5
tl = rng.integers(0, k, 60)
test = centres[tl] + rng.normal(size=(60, d)) * 0.8
test[:5] = rng.normal(scale=4.0, size=(5, d))  # far-away points
md_case("default", train, labels, test, k, 1e-6, True)
md_case("no_ridge_raw", train, labels, test, k, 0.0, False)
# fewer rows than dimensions: the covariance is singular, the ridge makes it invertible
k2, d2 = 4, 40
lab2 = np.repeat(np.arange(k2), 8)
train2 = rng.normal(size=(k2, d2))[lab2] + rng.normal(size=(32, d2)) * 0.3
test2 = rng.normal(size=(20, d2))
md_case("rank_deficient", train2, lab2, test2, k2, 1e-3, True)


# ---------------------------------------------------------------- calibration, SR, entropy
def ece_ref(probs, labels, m):
    conf = probs.max(axis=1)
    pred = probs.argmax(axis=1)
    acc = (pred == labels).astype(np.float64)
    out, counts, accs, confs = 0.0, [], [], []
    for b in range(m):
        lo, hi = b / m, (b + 1) / m
        inb = (conf > lo) & (conf <= hi)
        if b == 0:
            inb |= conf <= 0.0
        cnt = int(inb.sum())
        counts.append(cnt)
        if cnt > 0:
            accs.append(acc[inb].mean())
            confs.append(conf[inb].mean())
            out += cnt / len(conf) * abs(acc[inb].mean() - conf[inb].mean())
        else:
            accs.append(0.0)
            confs.append(0.0)
    return out, np.array(counts, dtype=np.float64), np.array(accs), np.array(confs)


logits = rng.normal(scale=2.0, size=(500, 4))
probs = np.exp(logits - logits.max(axis=1, keepdims=True))
probs /= probs.sum(axis=1, keepdims=True)
edge_rows = np.array(
    [
        [0.7, 0.1, 0.1, 0.1],
        [0.6, 0.2, 0.1, 0.1],
        [0.25, 0.25, 0.25, 0.25],
        [1.0, 0.0, 0.0, 0.0],
        [0.4, 0.4, 0.1, 0.1],
        [0.8, 0.2, 0.0, 0.0],
    ]
)
probs = np.vstack([probs, edge_rows])
cal_labels = np.where(rng.random(len(probs)) < 0.7, probs.argmax(axis=1), rng.integers(0, 4, len(probs)))
T["cal/probs"] = probs
T["cal/labels"] = cal_labels.astype(np.int64)
T["cal/ece10"] = np.array([ece_ref(probs, cal_labels, 10)[0]])
e15, c15, a15, f15 = ece_ref(probs, cal_labels, 15)
T["cal/ece15"] = np.array([e15])
T["cal/bins15_count"] = c15
T["cal/bins15_acc"] = a15
T["cal/bins15_conf"] = f15
T["cal/entropy"] = scipy.stats.entropy(probs, axis=1)
T["cal/sr"] = 1.0 - probs.max(axis=1)


# ---------------------------------------------------------------- one-cycle schedule
def onecycle(total, max_lr=1e-3):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=max_lr)
    sch = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=max_lr, total_steps=total, anneal_strategy="cos",
        pct_start=0.1, div_factor=25.0, final_div_factor=10000.0,
    )
    lrs, b1 = [], []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        b1.append(opt.param_groups[0]["betas"][0])
        opt.step()
        sch.step()
    return np.array(lrs), np.array(b1)


for total in (50, 137):
    lr, b1 = onecycle(total)
    T[f"onecycle/{total}/lr"] = lr
    T[f"onecycle/{total}/beta1"] = b1


# ---------------------------------------------------------------- AdUE full-batch parity
torch.manual_seed(0)
C, D, NTR, NVA, EPOCHS = 3, 6, 240, 120, 20
LR, ALPHA, BETA, LAM = 2e-2, 0.1, 0.01, 100.0
W = rng.normal(size=(C, D)).astype(np.float32)
B = (rng.normal(size=C) * 0.3).astype(np.float32)


def make_split(n):
    z = rng.normal(size=(n, D)).astype(np.float32)
    logits = z @ W.T + B
    y = logits.argmax(axis=1)
    # asymmetric label noise: predictions of class 0 are wrong far more often, which SR
    # (symmetric in the classes) cannot see and a trained head can
    flip = rng.random(n) < np.where(y == 0, 0.4, 0.05)
    y = np.where(flip, (y + rng.integers(1, C, n)) % C, y)
    return z, y


ztr, ytr = make_split(NTR)
zva, yva = make_split(NVA)


class Head(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(D, C)
        with torch.no_grad():
            self.lin.weight.copy_(torch.from_numpy(W))
            self.lin.bias.copy_(torch.from_numpy(B))

    def forward(self, z):
        p = torch.softmax(self.lin(z), dim=1)
        sm = (1 / LAM) * torch.logsumexp(LAM * p, dim=1)
        return torch.clamp((1 - sm) / (1 - 1 / C), min=1e-8, max=1 - 1e-8)


def targets(z, y):
    with torch.no_grad():
        p = torch.softmax(torch.from_numpy(z) @ torch.from_numpy(W).T + torch.from_numpy(B), dim=1)
    e = (p.argmax(dim=1).numpy() != y).astype(np.float32)
    usr = ((1 - p.max(dim=1).values) / (1 - 1 / C)).numpy()
    return torch.from_numpy(e), torch.from_numpy(usr)


etr, usrtr = targets(ztr, ytr)
eva, usrva = targets(zva, yva)
head = Head()
init = {n_: p_.detach().clone() for n_, p_ in head.named_parameters()}
with torch.no_grad():
    u0 = head(torch.from_numpy(zva)).numpy()
opt = torch.optim.Adam(head.parameters(), lr=LR)
sch = torch.optim.lr_scheduler.OneCycleLR(
    opt, max_lr=LR, total_steps=EPOCHS, anneal_strategy="cos",
    pct_start=0.1, div_factor=25.0, final_div_factor=10000.0,
)
bce = torch.nn.BCELoss()
losses, aucs, ws, bs = [], [], [], []
for epoch in range(EPOCHS):
    u = head(torch.from_numpy(ztr))
    l2sp = sum(((p_ - init[n_]) ** 2).sum() for n_, p_ in head.named_parameters())
    loss = bce(u, etr) + ALPHA * torch.mean((u - usrtr) ** 2) + BETA * l2sp
    opt.zero_grad()
    loss.backward()
    opt.step()
    sch.step()
    losses.append(loss.item())
    with torch.no_grad():
        aucs.append(roc_auc_score(eva.numpy(), head(torch.from_numpy(zva)).numpy()))
    ws.append(head.lin.weight.detach().numpy().copy())
    bs.append(head.lin.bias.detach().numpy().copy())

T["adue/w"] = W
T["adue/b"] = B
T["adue/z_train"] = ztr
T["adue/y_train"] = ytr.astype(np.int64)
T["adue/z_val"] = zva
T["adue/y_val"] = yva.astype(np.int64)
T["adue/hparams"] = np.array([LR, ALPHA, BETA, LAM, EPOCHS], dtype=np.float64)
T["adue/loss"] = np.array(losses, dtype=np.float64)
T["adue/val_auc"] = np.array(aucs, dtype=np.float64)
T["adue/weights"] = np.stack(ws).astype(np.float32)
T["adue/biases"] = np.stack(bs).astype(np.float32)
T["adue/u_init_val"] = u0.astype(np.float32)
T["adue/sr_val_auc"] = np.array([roc_auc_score(eva.numpy(), usrva.numpy())])

os.makedirs(os.path.dirname(OUT), exist_ok=True)
save_file({k_: np.ascontiguousarray(v) for k_, v in T.items()}, OUT)
print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes, {len(T)} tensors)")
print("adue losses", np.round(losses, 4))
print("adue val auc", np.round(aucs, 4), "SR", T["adue/sr_val_auc"])
