"""Predict a region's projection profile (its row of W) from its expression.

For each connectome region with cells, the features are the region's mean
log-normalised expression (and optionally the region mean of a SpaCon embedding as
extra features); the target is ``log1p`` of its row of ``W_ipsi`` (and ``W_contra``,
concatenated) over all matrix regions. A ridge model (features z-scored on the training
fold, ridge strength chosen by closed-form leave-one-out on the training fold) is
evaluated by k-fold cross-validation over regions; the score is the pooled
cross-validated R^2 = 1 - sum (Y - Y_hat)^2 / sum (Y - mean(Y))^2 over every held-out
entry (column means over all regions).

Caveat, measured in the benchmark: the connectivity embedding of a held-out region is
built from the connectome itself, so using it to predict the same connectome leaks the
answer unless the held-out rows are removed before training (see
:func:`connectome_without_rows`, used per fold by ``benchmarks/domains/run.py``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._errors import BrainAtlasInputError
from .connectome import Connectome

__all__ = [
    "connectivity_targets",
    "connectome_without_rows",
    "kfold_regions",
    "predict_connectivity",
    "region_means",
    "ridge_cv_r2",
]

ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def kfold_regions(n: int, n_folds: int = 5, seed: int = 0) -> list[np.ndarray]:
    """Held-out index sets of a shuffled k-fold split (leave-one-out when n <= n_folds)."""
    if n < 3:
        raise BrainAtlasInputError("need at least 3 regions to cross-validate")
    k = min(n_folds, n)
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(f) for f in np.array_split(perm, k)]


def _ridge_fit(X: np.ndarray, Y: np.ndarray, alphas=ALPHAS):
    """Ridge on centred data, alpha by closed-form LOO; returns (coef, x_mu, x_sd, y_mu)."""
    mu, sd = X.mean(0), X.std(0)
    sd[sd < 1e-9] = 1.0
    Xs = (X - mu) / sd
    ym = Y.mean(0)
    Yc = Y - ym
    U, s, Vt = np.linalg.svd(Xs, full_matrices=False)
    UtY = U.T @ Yc
    best = None
    n = len(X)
    for a in alphas:
        d = s / (s**2 + a)
        coef = Vt.T @ (d[:, None] * UtY)
        H = (U * (s**2 / (s**2 + a))) @ U.T
        h = np.diag(H) + 1.0 / n  # centring adds 1/n to the leverage
        resid = (Yc - Xs @ coef) / np.maximum(1 - h, 1e-6)[:, None]
        err = float((resid**2).sum())
        if best is None or err < best[0]:
            best = (err, coef, a)
    return best[1], mu, sd, ym, best[2]


def ridge_cv_r2(X, Y, n_folds: int = 5, seed: int = 0, alphas=ALPHAS) -> dict:
    """Cross-validated R^2 of ridge ``X -> Y`` over rows (k-fold). Returns
    ``{'r2', 'r2_per_target_mean', 'pred', 'alphas', 'folds'}``."""
    X = np.asarray(X, float)
    Y = np.asarray(Y, float)
    if len(X) != len(Y):
        raise BrainAtlasInputError("features and targets have different numbers of regions")
    folds = kfold_regions(len(X), n_folds, seed)
    pred = np.zeros_like(Y)
    chosen = []
    for test in folds:
        train = np.setdiff1d(np.arange(len(X)), test)
        coef, mu, sd, ym, a = _ridge_fit(X[train], Y[train], alphas)
        pred[test] = ((X[test] - mu) / sd) @ coef + ym
        chosen.append(a)
    ss_res = ((Y - pred) ** 2).sum()
    ss_tot = ((Y - Y.mean(0)) ** 2).sum()
    r2 = 1 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    col_tot = ((Y - Y.mean(0)) ** 2).sum(0)
    ok = col_tot > 0
    per = 1 - ((Y - pred) ** 2).sum(0)[ok] / col_tot[ok]
    return {
        "r2": float(r2),
        "r2_per_target_mean": float(per.mean()) if ok.any() else float("nan"),
        "pred": pred,
        "alphas": chosen,
        "folds": len(folds),
    }


def region_means(
    values: np.ndarray, region: np.ndarray, connectome: Connectome, min_cells: int = 1
) -> pd.DataFrame:
    """Mean of ``values`` (n, k) per connectome region (rows: regions with >= min_cells)."""
    values = np.asarray(values, float)
    region = np.asarray(region)
    ok = region >= 0
    codes, inv, cnt = np.unique(region[ok], return_inverse=True, return_counts=True)
    sums = np.zeros((codes.size, values.shape[1]))
    np.add.at(sums, inv, values[ok])
    df = pd.DataFrame(sums / cnt[:, None], index=[connectome.regions[c] for c in codes])
    return df[cnt >= min_cells]


def connectivity_targets(connectome: Connectome, regions, contra: bool = True) -> np.ndarray:
    """``log1p`` of the rows of ``regions`` in W_ipsi (and W_contra), over all columns."""
    idx = [connectome.index(r) for r in regions]
    Y = connectome.w_ipsi[idx]
    if contra:
        Y = np.hstack([Y, connectome.w_contra[idx]])
    return np.log1p(Y)


def predict_connectivity(
    region_expression: pd.DataFrame,
    connectome: Connectome,
    embedding: pd.DataFrame | None = None,
    *,
    contra: bool = True,
    n_folds: int = 5,
    seed: int = 0,
) -> dict:
    """Cross-validated R^2 of predicting each region's W row from its mean expression,
    without and (if ``embedding``: regions x k region means of z) with the embedding."""
    regions = [r for r in region_expression.index if connectome.index(r) >= 0]
    if embedding is not None:
        regions = [r for r in regions if r in embedding.index]
    if len(regions) < 3:
        raise BrainAtlasInputError(
            f"only {len(regions)} connectome region(s) have expression: need at least 3"
        )
    Y = connectivity_targets(connectome, regions, contra)
    Xe = region_expression.loc[regions].to_numpy(float)
    out = {
        "regions": regions,
        "n_regions": len(regions),
        "expression": ridge_cv_r2(Xe, Y, n_folds, seed),
    }
    if embedding is not None:
        Xz = np.hstack([Xe, embedding.loc[regions].to_numpy(float)])
        out["expression+embedding"] = ridge_cv_r2(Xz, Y, n_folds, seed)
    return out


def connectome_without_rows(connectome: Connectome, regions) -> Connectome:
    """A copy whose rows (outgoing projections) of ``regions`` are zero (held out)."""
    wi = connectome.w_ipsi.copy()
    wc = connectome.w_contra.copy()
    for r in regions:
        i = connectome.index(r)
        if i >= 0:
            wi[i] = 0.0
            wc[i] = 0.0
    return Connectome(
        connectome.regions,
        wi,
        wc,
        source=connectome.source,
        notes=[*connectome.notes, f"rows held out: {', '.join(regions)}"],
    )
