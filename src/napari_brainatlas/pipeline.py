"""The main job, headless: demo data -> (registration, embedding, transfer where those
engines are installed) -> results folder with h5ad files and a QC picture."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["run_demo_pipeline", "display_available", "qc_figure"]


def display_available() -> bool:
    """True when a GUI can open (an X or Wayland display, or a non-Linux desktop)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def qc_figure(sections, path: Path, colour_by: str = "region", gene: str | None = None,
              title: str = "") -> Path:
    """Save a picture of every section's cells coloured by ``colour_by`` (and ``gene``)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .colors import categorical_colors, continuous_colors

    cols = 2 if gene else 1
    fig, axes = plt.subplots(len(sections), cols, figsize=(5 * cols, 4 * len(sections)),
                             squeeze=False)
    for r, ad in enumerate(sections):
        xy = ad.obsm["spatial"]
        name = ad.uns.get("napari_brainatlas", {}).get("section", f"section {r}")
        rgba, legend = categorical_colors(ad.obs[colour_by].to_numpy())
        ax = axes[r, 0]
        ax.scatter(xy[:, 0], xy[:, 1], c=rgba, s=2, linewidths=0)
        ax.set_title(f"{name}: {colour_by}", fontsize=9)
        handles = [plt.Line2D([], [], marker="o", ls="", color=c[:3], label=k)
                   for k, c in legend.items()]
        ax.legend(handles=handles, fontsize=6, loc="upper right", markerscale=0.8, frameon=False)
        if gene:
            from .io import gene_values

            v = gene_values(ad, gene) if gene in ad.var_names else np.full(ad.n_obs, np.nan)
            rgba, clim = continuous_colors(np.log1p(v))
            axes[r, 1].scatter(xy[:, 0], xy[:, 1], c=rgba, s=2, linewidths=0)
            axes[r, 1].set_title(f"{name}: log1p {gene} (clim {clim[0]:.1f}-{clim[1]:.1f})",
                                 fontsize=9)
        for ax in axes[r]:
            ax.set_aspect("equal")
            ax.invert_yaxis()
            ax.set_xlabel("x (um)", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def run_demo_pipeline(out: str | Path, seed: int = 0,
                      log: Callable[[str], None] = lambda s: None) -> Path:
    """Generate the demo, run every installed engine on it, write results to ``out``."""
    from .demo import write_demo_data
    from .io import read_sections, write_h5ad

    out = Path(out)
    files = write_demo_data(out / "input", seed=seed)
    log(f"demo data written to {out / 'input'}")
    sections = []
    for p in files["sections"]:
        sections.extend(read_sections(p))
    log(f"read {len(sections)} sections: " + ", ".join(
        f"{s.uns['napari_brainatlas']['section']} ({s.n_obs} cells, {s.n_vars} genes)"
        for s in sections))
    for step in _optional_steps():
        sections = step(sections, out, log)
    for s in sections:
        write_h5ad(s, out / "results" / f"{s.uns['napari_brainatlas']['section']}.h5ad")
    qc = qc_figure(sections, out / "qc.png", colour_by="region", gene="Slc17a7",
                   title="napari-brainatlas demo")
    log(f"QC picture: {qc}")
    return out


def _optional_steps():
    """Pipeline steps contributed by engines (registration, embedding, transfer)."""
    steps = []
    try:
        from .pipeline_steps import STEPS
    except ModuleNotFoundError:
        STEPS = ()
    steps.extend(STEPS)
    return steps
