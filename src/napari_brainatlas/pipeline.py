"""The main job, headless: demo data -> (registration, embedding, transfer where those
engines are installed) -> results folder with h5ad files and a QC picture."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["display_available", "qc_figure", "run_demo_pipeline"]


def display_available() -> bool:
    """True when a GUI can open (an X or Wayland display, or a non-Linux desktop)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def qc_figure(
    sections,
    path: Path,
    colour_by: str = "region",
    gene: str | None = None,
    title: str = "",
    atlas=None,
) -> Path:
    """Save a picture of every section's cells coloured by ``colour_by`` (and ``gene``).

    With ``atlas`` and registered sections (``obsm['ccf_coords']``), a last column shows
    the cells in atlas space over the template slice they were registered to.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .colors import categorical_colors, continuous_colors

    registered = atlas is not None and all("ccf_coords" in s.obsm for s in sections)
    cols = 1 + bool(gene) + registered
    fig, axes = plt.subplots(
        len(sections), cols, figsize=(5 * cols, 4 * len(sections)), squeeze=False
    )
    for r, ad in enumerate(sections):
        xy = ad.obsm["spatial"]
        name = ad.uns.get("napari_brainatlas", {}).get("section", f"section {r}")
        rgba, legend = categorical_colors(ad.obs[colour_by].to_numpy())
        ax = axes[r, 0]
        ax.scatter(xy[:, 0], xy[:, 1], c=rgba, s=2, linewidths=0)
        ax.set_title(f"{name}: {colour_by}", fontsize=9)
        handles = [
            plt.Line2D([], [], marker="o", ls="", color=c[:3], label=k) for k, c in legend.items()
        ]
        ax.legend(handles=handles, fontsize=6, loc="upper right", markerscale=0.8, frameon=False)
        if gene:
            from .io import gene_values

            v = gene_values(ad, gene) if gene in ad.var_names else np.full(ad.n_obs, np.nan)
            rgba, clim = continuous_colors(np.log1p(v))
            axes[r, 1].scatter(xy[:, 0], xy[:, 1], c=rgba, s=2, linewidths=0)
            axes[r, 1].set_title(
                f"{name}: log1p {gene} (clim {clim[0]:.1f}-{clim[1]:.1f})", fontsize=9
            )
        for ax in axes[r]:
            ax.set_aspect("equal")
            ax.invert_yaxis()
            ax.set_xlabel("x (um)", fontsize=7)
        if registered:  # drawn after the loop: its y axis is already image-like
            _draw_registered(axes[r, -1], ad, atlas, colour_by)
            axes[r, -1].set_xlabel("ML (um)", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _draw_registered(ax, ad, atlas, colour_by: str) -> None:
    """Template slice in atlas colours, its outline, and the cells where they landed."""
    from skimage.segmentation import find_boundaries

    from .colors import categorical_colors

    name = ad.uns.get("napari_brainatlas", {}).get("section", "")
    rec = ad.uns.get("ccf_registration", {}).get(name, {})
    plane = rec.get("plane", "coronal")
    pos = float(rec.get("position_um", np.median(ad.obsm["ccf_coords"][:, 0])))
    sl = atlas.slice(plane, pos, hemisphere="both")
    lut = atlas.ontology.lut(sl.labels)
    img = np.zeros(sl.labels.shape + (4,))
    for k, v in lut.items():
        img[sl.labels == k] = v
    img[..., 3] *= 0.45
    img[find_boundaries(sl.labels > 0)] = (0, 0, 0, 1)
    w, h = sl.extent_um
    ax.imshow(img, extent=(0, w, h, 0))
    ccf = ad.obsm["ccf_coords"]
    x = ccf[:, 2] if plane == "coronal" else ccf[:, 0]
    rgba, _ = categorical_colors(ad.obs[colour_by].to_numpy())
    ax.scatter(x, ccf[:, 1], c=rgba, s=1, linewidths=0)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_title(f"{name}: in atlas space ({plane} {pos:.0f} um), cells by {colour_by}", fontsize=9)


def run_demo_pipeline(
    out: str | Path, seed: int = 0, log: Callable[[str], None] = lambda s: None
) -> Path:
    """Generate the demo, run every installed engine on it, write results to ``out``."""
    from .demo import write_demo_data
    from .io import read_sections, write_h5ad

    out = Path(out)
    files = write_demo_data(out / "input", seed=seed)
    log(f"demo data written to {out / 'input'}")
    sections = []
    for p in files["sections"]:
        sections.extend(read_sections(p))
    log(
        f"read {len(sections)} sections: "
        + ", ".join(
            f"{s.uns['napari_brainatlas']['section']} ({s.n_obs} cells, {s.n_vars} genes)"
            for s in sections
        )
    )
    for step in _optional_steps():
        sections = step(sections, out, log)
    for s in sections:
        write_h5ad(s, out / "results" / f"{s.uns['napari_brainatlas']['section']}.h5ad")
    from .atlas import make_demo_atlas

    qc = qc_figure(
        sections,
        out / "qc.png",
        colour_by="region",
        gene="Slc17a7",
        title="napari-brainatlas demo",
        atlas=make_demo_atlas(),
    )
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
