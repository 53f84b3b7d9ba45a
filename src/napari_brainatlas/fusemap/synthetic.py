"""Synthetic spatial sections for tests and throughput benchmarks (not a demo of biology).

Cells lie uniformly in a rectangle split into horizontal layers ("regions"); each region
has its own cell-type mix; each cell type has a mean expression profile over a common
gene pool; each section measures its own panel (shared core + section-specific genes),
with a per-section, per-gene multiplicative batch effect and Poisson counts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

__all__ = ["make_synthetic_sections"]


def make_synthetic_sections(
    n_sections: int = 3,
    n_cells: int | list[int] = 500,
    n_genes: int = 60,
    n_shared: int = 30,
    n_types: int = 6,
    n_regions: int = 4,
    batch_strength: float = 0.5,
    depth: float = 200.0,
    sparse: bool = False,
    seed: int = 0,
) -> list[AnnData]:
    """Return ``n_sections`` AnnData with integer counts in ``X`` and ``layers['counts']``,
    ``obsm['spatial']`` (um), ``obs['celltype']``, ``obs['region']``, ``obs['section']``.

    Each section measures the ``n_shared`` shared genes plus ``n_genes - n_shared`` genes
    of its own (drawn from a pool, so panels overlap partly).
    """
    rng = np.random.default_rng(seed)
    sizes = [n_cells] * n_sections if np.isscalar(n_cells) else list(n_cells)
    n_extra = max(n_genes - n_shared, 0)
    pool = n_shared + max(n_extra * 2, 1)
    gene_names = np.array([f"Gene{i}" for i in range(pool)])
    profiles = rng.gamma(0.6, 1.0, size=(n_types, pool))
    markers = rng.integers(0, pool, size=(n_types, 4))
    for t in range(n_types):
        profiles[t, markers[t]] += 8.0
    profiles /= profiles.sum(1, keepdims=True)
    mix = rng.dirichlet(np.full(n_types, 0.3), size=n_regions)
    out = []
    for v, n in enumerate(sizes):
        extra = rng.choice(
            np.arange(n_shared, pool), size=min(n_extra, pool - n_shared), replace=False
        )
        panel = np.concatenate([np.arange(n_shared), np.sort(extra)]).astype(int)
        w, h = 1000.0 * np.sqrt(n / 1000.0), 1000.0 * np.sqrt(n / 1000.0)
        xy = np.column_stack([rng.random(n) * w, rng.random(n) * h])
        region = np.minimum((xy[:, 1] / h * n_regions).astype(int), n_regions - 1)
        cum = np.cumsum(mix[region], axis=1)
        ctype = (rng.random((n, 1)) > cum).sum(1)
        ctype = np.minimum(ctype, n_types - 1)
        batch = np.exp(rng.normal(0, batch_strength, size=pool))
        lib = rng.lognormal(np.log(depth), 0.3, size=n)
        mean = profiles[ctype][:, panel] * batch[panel] * lib[:, None]
        counts = rng.poisson(mean).astype(np.float32)
        X = sp.csr_matrix(counts) if sparse else counts
        name = f"syn{v}"
        obs = pd.DataFrame(
            {
                "celltype": pd.Categorical([f"T{t}" for t in ctype]),
                "region": pd.Categorical([f"R{r}" for r in region]),
                "section": pd.Categorical([name] * n),
            },
            index=[f"{name}_c{i}" for i in range(n)],
        )
        a = AnnData(X=X, obs=obs, var=pd.DataFrame(index=gene_names[panel]))
        a.layers["counts"] = X.copy()
        a.obsm["spatial"] = xy
        out.append(a)
    return out
