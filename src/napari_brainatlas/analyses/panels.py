"""Targeted gene panels from gene modules (the FuseMap paper's Fig. 4l) and two baselines.

The paper groups genes into modules from the gene embedding and picks "highly variable
genes, ensuring an even distribution across all gene modules, even when these genes did
not rank as the most variable" (``floor(N / 13)`` top-variable genes per module).
:func:`select_panel` does the same with an exact panel size:

* **Variability** (:func:`gene_variability`): per section, the standardised variance of
  Seurat v3 / scanpy ``flavor="seurat_v3"`` on counts - each gene's variance after
  dividing by the variance expected at its mean, with the mean-variance trend fitted as
  a quadratic in log10 space (scanpy uses loess; a quadratic also works for panels of 30
  genes) and values clipped at ``sqrt(n_cells)`` - turned into a percentile within the
  section; a gene measured in several sections gets the mean of its percentiles. Non-
  integer input is read as is (its own variance trend). Higher = more variable.
* **Even spread**: genes are drafted one at a time; each pick goes to the module that
  holds the fewest panel genes so far (ties: the module whose best remaining gene is the
  most variable), which takes its most variable remaining gene. Must-have genes count
  for their module first; a module that runs out of genes drops out. So module counts
  differ by at most one, except where must-have genes or small modules force otherwise;
  with more modules than panel genes, the modules with the most variable genes get one
  each. (The paper's ``floor(N / 13)`` per module is the same rule without the remainder.)

Baselines: :func:`hvg_panel` (the N most variable genes, the paper's "top highly variable
genes") and :func:`random_panel` (N genes drawn uniformly).

Each returns a DataFrame with one row per panel gene, in picking order: ``gene``,
``module`` (0 for the baselines without modules), ``variability``, ``pick`` ("include",
"module", "hvg" or "random").
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._errors import BrainAtlasInputError
from .modules import GeneModules, gene_modules

__all__ = ["gene_variability", "hvg_panel", "random_panel", "select_panel"]

PANEL_COLUMNS = ["gene", "module", "variability", "pick"]


# ------------------------------------------------------------------------ variability
def _counts(a: AnnData):
    from ..fusemap import clean_gene_names
    from ..fusemap._preprocess import is_integer_matrix

    X = a.layers["counts"] if "counts" in a.layers else a.X
    if X is None:
        raise BrainAtlasInputError("the section has no expression matrix")
    names, keep = clean_gene_names(a.var_names)
    X = X[:, keep]
    X = sp.csr_matrix(X, dtype=np.float64) if sp.issparse(X) else np.asarray(X, np.float64)
    return X, names, is_integer_matrix(X)


def _standardised_variance(X) -> np.ndarray:
    n = X.shape[0]
    if sp.issparse(X):
        mean = np.asarray(X.mean(0)).ravel()
        sq = np.asarray(X.multiply(X).mean(0)).ravel()
    else:
        mean = X.mean(0)
        sq = (X * X).mean(0)
    var = np.maximum(sq - mean**2, 0.0) * n / max(n - 1, 1)
    ok = (mean > 0) & (var > 0)
    out = np.zeros(X.shape[1])
    if ok.sum() == 0:
        return out
    lm, lv = np.log10(mean[ok]), np.log10(var[ok])
    deg = 2 if ok.sum() >= 5 else (1 if ok.sum() >= 2 else 0)
    coef = np.polyfit(lm, lv, deg) if deg else np.array([lv.mean()])
    exp_sd = np.sqrt(10 ** np.polyval(coef, lm))
    clip = mean[ok] + exp_sd * np.sqrt(n)
    Xo = X[:, np.flatnonzero(ok)]
    if sp.issparse(Xo):
        Xc = Xo.tocsc(copy=True)
        for j in range(Xc.shape[1]):
            d = Xc.data[Xc.indptr[j] : Xc.indptr[j + 1]]
            np.minimum(d, clip[j], out=d)
        m2 = np.asarray(Xc.mean(0)).ravel()
        s2 = np.asarray(Xc.multiply(Xc).mean(0)).ravel()
    else:
        Xc = np.minimum(Xo, clip[None, :])
        m2, s2 = Xc.mean(0), (Xc * Xc).mean(0)
    v2 = np.maximum(s2 - m2**2, 0.0) * n / max(n - 1, 1)
    out[ok] = v2 / exp_sd**2
    return out


def gene_variability(sections, *, genes=None) -> pd.Series:
    """Variability score per gene (mean within-section percentile of the standardised
    variance; see the module docstring), indexed by upper-cased gene symbol."""
    secs = [sections] if isinstance(sections, AnnData) else list(sections or [])
    if not secs:
        raise BrainAtlasInputError("give the expression of at least one section")
    acc: dict[str, list[float]] = {}
    for a in secs:
        if not isinstance(a, AnnData):
            raise BrainAtlasInputError("expression must be AnnData sections")
        if a.n_obs < 3 or a.n_vars == 0:
            continue
        X, names, _ = _counts(a)
        sv = _standardised_variance(X)
        pct = pd.Series(sv).rank(method="average", pct=True).to_numpy()
        for g, v in zip(names, pct):
            acc.setdefault(g, []).append(float(v))
    if not acc:
        raise BrainAtlasInputError("the sections have too few cells to rank genes")
    s = pd.Series({g: float(np.mean(v)) for g, v in acc.items()}, name="variability")
    s.index.name = "gene"
    if genes is not None:
        s = s[s.index.isin([str(g).strip().upper() for g in genes])]
    return s.sort_values(ascending=False, kind="stable")


# ------------------------------------------------------------------------ shared checks
def _gene_list(genes, what: str) -> list[str]:
    if genes is None:
        return []
    if isinstance(genes, str):
        genes = [g for g in genes.replace(";", ",").split(",")]
    return list(dict.fromkeys(str(g).strip().upper() for g in genes if str(g).strip()))


def _check_size(size, n_available: int, n_include: int) -> int:
    try:
        n = int(size)
    except (TypeError, ValueError):
        raise BrainAtlasInputError(f"the panel size must be a whole number, not {size!r}") from None
    if n != size or n < 1:
        raise BrainAtlasInputError(f"the panel size must be a positive whole number, not {size}")
    if n > n_available:
        raise BrainAtlasInputError(
            f"a panel of {n} genes is larger than the {n_available} genes available"
        )
    if n_include > n:
        raise BrainAtlasInputError(f"{n_include} must-have genes do not fit a panel of {n}")
    return n


def _unknown(genes: list[str], known, what: str) -> None:
    missing = [g for g in genes if g not in known]
    if missing:
        raise BrainAtlasInputError(
            f"{what} gene(s) not known to the model: {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
        )


def _lists(include, exclude, known) -> tuple[list[str], set[str]]:
    inc = _gene_list(include, "include")
    exc = _gene_list(exclude, "exclude")
    _unknown(inc, known, "must-have")
    _unknown(exc, known, "excluded")
    both = sorted(set(inc) & set(exc))
    if both:
        raise BrainAtlasInputError(f"gene(s) both required and excluded: {', '.join(both[:5])}")
    return inc, set(exc)


def _variability_for(source, expression, variability) -> pd.Series:
    if variability is not None:
        v = pd.Series(variability, dtype=float)
        v.index = [str(g).strip().upper() for g in v.index]
        return v
    if expression is None:
        expression = list(getattr(source, "adatas", None) or [])
    if not expression:
        raise BrainAtlasInputError(
            "ranking genes needs expression: give the sections (or a model that holds them)"
        )
    return gene_variability(expression)


# ------------------------------------------------------------------------ panels
def select_panel(
    source,
    size: int,
    *,
    expression=None,
    variability: pd.Series | None = None,
    modules: GeneModules | None = None,
    include=None,
    exclude=None,
    genes=None,
) -> pd.DataFrame:
    """A panel of ``size`` genes spread evenly over gene modules, most variable first
    within each (see the module docstring).

    source : FuseMap, QueryMapping, model folder, gene embedding DataFrame, or
        :class:`GeneModules` (then ``modules`` is not needed).
    size : panel size N.
    expression : AnnData sections to rank genes by (default: the sections the model
        holds); or give ``variability`` (gene -> score, higher = more variable).
    modules : precomputed :class:`GeneModules` (default: :func:`gene_modules` with its
        default rule, on ``source``).
    include, exclude : must-have / forbidden genes (lists or "A,B").
    genes : candidate genes (default: every gene with a module and a variability score).
    """
    if source is None and modules is None:
        raise BrainAtlasInputError("give a FuseMap model, a model folder or a gene embedding")
    if isinstance(source, GeneModules):
        modules = source
    if modules is None:
        modules = gene_modules(source, umap=False)
    var = _variability_for(source, expression, variability)
    mod = modules.module_of()
    inc, exc = _lists(include, exclude, set(mod.index))
    cand = [g for g in mod.index if g in var.index and g not in exc]
    if genes is not None:
        keep = set(_gene_list(genes, "candidate"))
        cand = [g for g in cand if g in keep]
    pool = set(cand) | set(inc)
    n = _check_size(size, len(pool), len(inc))
    queues: dict[int, list[str]] = {}
    for g in sorted(
        (g for g in cand if g not in inc), key=lambda g: (-var[g], g)
    ):  # most variable first
        queues.setdefault(int(mod[g]), []).append(g)
    taken = {k: 0 for k in queues}
    rows = []
    for g in inc:
        k = int(mod[g])
        taken[k] = taken.get(k, 0) + 1
        rows.append((g, k, float(var.get(g, np.nan)), "include"))
    pos = {k: 0 for k in queues}
    while len(rows) < n:
        open_ = [k for k in queues if pos[k] < len(queues[k])]
        k = min(open_, key=lambda k: (taken[k], -var[queues[k][pos[k]]], k))
        g = queues[k][pos[k]]
        pos[k] += 1
        taken[k] += 1
        rows.append((g, k, float(var[g]), "module"))
    return _frame(rows)


def _frame(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=PANEL_COLUMNS)
    df["module"] = df["module"].astype(np.int64)
    df["variability"] = df["variability"].fillna(0.0)
    return df


def hvg_panel(
    variability: pd.Series, size: int, *, include=None, exclude=None, genes=None
) -> pd.DataFrame:
    """The ``size`` most variable genes (must-have genes first)."""
    var = _variability_for(None, None, variability)
    inc, exc = _lists(include, exclude, set(var.index))
    cand = [g for g in var.sort_values(ascending=False, kind="stable").index if g not in exc]
    if genes is not None:
        keep = set(_gene_list(genes, "candidate"))
        cand = [g for g in cand if g in keep]
    n = _check_size(size, len(set(cand) | set(inc)), len(inc))
    rows = [(g, 0, float(var[g]), "include") for g in inc]
    rows += [(g, 0, float(var[g]), "hvg") for g in cand if g not in inc][: n - len(inc)]
    return _frame(rows)


def random_panel(
    genes, size: int, *, include=None, exclude=None, seed: int = 0, variability=None
) -> pd.DataFrame:
    """``size`` genes drawn uniformly from ``genes`` (must-have genes first)."""
    pool = _gene_list(genes, "candidate")
    if not pool:
        raise BrainAtlasInputError("give the genes to draw a random panel from")
    inc, exc = _lists(include, exclude, set(pool))
    cand = [g for g in pool if g not in exc and g not in inc]
    n = _check_size(size, len(cand) + len(inc), len(inc))
    rng = np.random.default_rng(seed)
    pick = list(rng.choice(len(cand), n - len(inc), replace=False)) if n > len(inc) else []
    var = _variability_for(None, None, variability) if variability is not None else None

    def v(g):
        return float(var.get(g, np.nan)) if var is not None else np.nan

    rows = [(g, 0, v(g), "include") for g in inc]
    rows += [(cand[i], 0, v(cand[i]), "random") for i in pick]
    return _frame(rows)
