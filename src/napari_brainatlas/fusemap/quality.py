"""A one-line quality summary of a trained FuseMap (what ``napari-brainatlas embed``
prints at the end), so a user sees when training went badly.

Per section:

* **mixing**: the section's share of the iLISI of the cell embedding z_C - for each of
  its cells, the inverse Simpson index of the sections among its ``k`` nearest cells
  (all sections together), rescaled to [0, 1] as ``(LISI - 1) / (V - 1)``; the mean
  over the section's cells. 0 = its cells only have neighbours from the same section
  (not integrated), 1 = neighbourhoods hold every section in equal parts. A section
  whose cell types are absent elsewhere is expected to mix less.
* **reconstruction**: R^2 of the section's model input (normalised, log1p, scaled)
  reconstructed from its own cells, ``max(z_C E_v^T, 0)``, over its genes:
  ``1 - SSE / SS`` around the gene means. Near 0 or below: the embedding has not
  learnt the section's expression.

Sections are subsampled to at most ``max_cells`` cells each (the summary stays fast
on atlas-sized sections).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["quality_summary", "section_quality"]

#: below these a section is flagged in the summary line
LOW_MIXING = 0.1
LOW_RECONSTRUCTION = 0.05


def section_quality(model, k: int = 30, max_cells: int = 5000, seed: int = 0) -> list[dict]:
    """Per section: ``{"section", "cells", "mixing", "reconstruction"}`` (see module
    docstring); ``mixing`` is NaN with a single section."""
    from sklearn.neighbors import NearestNeighbors

    from ._training import rows_dense

    rng = np.random.default_rng(seed)
    lat = model._latent_kept()["cell"]
    picks, Z, B = [], [], []
    for v, z in enumerate(lat):
        p = np.sort(rng.choice(len(z), max_cells, replace=False)) if len(z) > max_cells else None
        p = np.arange(len(z)) if p is None else p
        picks.append(p)
        Z.append(z[p])
        B.append(np.full(len(p), v))
    Z, B = np.concatenate(Z), np.concatenate(B)
    V = len(lat)
    mix = np.full(V, np.nan)
    if V > 1 and len(Z) > 1:
        kk = min(k, len(Z) - 1)
        idx = NearestNeighbors(n_neighbors=kk + 1).fit(Z).kneighbors(Z)[1][:, 1:]
        counts = np.stack([(B[idx] == v).sum(1) for v in range(V)], 1) / kk
        lisi = 1.0 / (counts**2).sum(1)
        per_cell = (lisi - 1.0) / (V - 1)
        mix = np.array([per_cell[B == v].mean() for v in range(V)])
    out = []
    m = model.module
    for v, (sd, z, p) in enumerate(zip(model.data, lat, picks)):
        X = rows_dense(sd.X, p).astype(np.float64)
        with torch.no_grad():
            zt = torch.from_numpy(np.ascontiguousarray(z[p])).to(model.device)
            Xh = m.decode(sd.name, zt).float().cpu().numpy().astype(np.float64)
        ss = ((X - X.mean(0)) ** 2).sum()
        r2 = float(1.0 - ((X - Xh) ** 2).sum() / ss) if ss > 0 else float("nan")
        out.append(
            {
                "section": model.section_names[v],
                "cells": int(len(z)),
                "mixing": float(mix[v]),
                "reconstruction": r2,
            }
        )
    return out


def quality_summary(model, **kw) -> str:
    """One line: per section its mixing and reconstruction R^2, and a warning naming
    the sections below ``LOW_MIXING`` / ``LOW_RECONSTRUCTION``."""
    rows = section_quality(model, **kw)
    parts, low = [], []
    for r in rows:
        mix = "-" if not np.isfinite(r["mixing"]) else f"{r['mixing']:.2f}"
        parts.append(f"{r['section']} mixing {mix} recon R2 {r['reconstruction']:.2f}")
        if (np.isfinite(r["mixing"]) and r["mixing"] < LOW_MIXING) or not (
            r["reconstruction"] >= LOW_RECONSTRUCTION
        ):
            low.append(r["section"])
    line = "quality: " + "; ".join(parts)
    if low:
        line += f" - LOW for {', '.join(low)}: training may have gone badly"
    return line
