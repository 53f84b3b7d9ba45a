"""Figures of the analyses (matplotlib ``Figure`` objects, no pyplot, no GUI backend):
the gene UMAP coloured by module with hub genes named, and a proximity heatmap."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .modules import GeneModules
from .proximity import ProximityResult

__all__ = ["gene_umap_figure", "plot_gene_umap", "plot_proximity_heatmap", "proximity_figure"]


def _save(fig, path) -> Path:
    import os
    import tempfile

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def gene_umap_figure(modules: GeneModules, *, label_hubs: bool = True):
    """Figure: genes on their UMAP, coloured by module, hub genes labelled."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    t = modules.table
    fig = Figure(figsize=(7, 6))
    ax = fig.add_subplot(111)
    cmap = colormaps["tab20"]
    for k in range(1, modules.n_modules + 1):
        m = t["module"] == k
        ax.scatter(
            t.loc[m, "umap_x"],
            t.loc[m, "umap_y"],
            s=10,
            color=cmap((k - 1) % 20),
            label=f"GM{k} ({int(m.sum())})",
        )
        if label_hubs:
            h = t[m & t["is_hub"]]
            ax.scatter(h["umap_x"], h["umap_y"], s=40, facecolor="none", edgecolor="black")
            for g, row in h.iterrows():
                ax.annotate(g, (row["umap_x"], row["umap_y"]), fontsize=6)
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_title(f"gene embedding: {modules.n_modules} modules, resolution {modules.resolution:g}")
    ax.legend(fontsize=6, markerscale=1.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def plot_gene_umap(modules: GeneModules, path) -> Path:
    """Write :func:`gene_umap_figure` to ``path`` (png / pdf / svg), atomically."""
    return _save(gene_umap_figure(modules), path)


def proximity_figure(result: ProximityResult, region: str, *, value: str = "z"):
    """Figure: the types x types heatmap of ``value`` in ``region`` (significant cells
    marked with a dot)."""
    from matplotlib.figure import Figure

    m = result.matrix(region, value)
    q = result.matrix(region, "q_value")
    fig = Figure(figsize=(1.5 + 0.32 * len(m), 1.0 + 0.32 * len(m)))
    ax = fig.add_subplot(111)
    v = np.abs(m.to_numpy()).max() if m.size else 1.0
    im = ax.imshow(m.to_numpy(), cmap="RdBu_r", vmin=-v, vmax=v)
    sig = q.to_numpy() < result.params.get("alpha", 0.05)
    yy, xx = np.nonzero(sig)
    ax.scatter(xx, yy, s=6, color="black")
    ax.set_xticks(range(len(m)), m.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(len(m)), m.index, fontsize=7)
    ax.set_title(f"{region}: {value} (dots: q < {result.params.get('alpha', 0.05)})")
    fig.colorbar(im, ax=ax, shrink=0.7)
    return fig


def plot_proximity_heatmap(result: ProximityResult, region: str, path, value: str = "z") -> Path:
    """Write :func:`proximity_figure` to ``path``, atomically."""
    return _save(proximity_figure(result, region, value=value), path)
