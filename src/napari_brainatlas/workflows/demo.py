"""The main job on the built-in demo, headless, and the demo files.

* :func:`run_demo` - writes ``<out>/input/`` (the demo atlas and sections as files, see
  :func:`write_demo_files`), reads the sections back, registers each to the demo atlas
  from its midline "clicks" (:func:`.register.register_many`), writes
  ``<out>/results/<section>.h5ad`` (``obsm['ccf_coords']`` CCF um, ``obs['ccf_id' /
  'ccf_acronym']``), ``<out>/registration_report.json`` (per section: median and p95
  cell error against the demo truth in um, CCF structure agreement, confidence) and
  ``<out>/qc.png``; returns a :class:`DemoRun`. ``progress(done, total, info)`` after
  each step with one line for a log in ``info['message']``.
* :func:`qc_figure` - the QC picture (cells by a label, a gene, and in atlas space).
* :func:`display_available` - whether a window can open.
* :func:`run_demo_pipeline` - the former ``napari_brainatlas.pipeline`` entry point
  (``log(line)`` instead of ``progress``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..jobs import ProgressFn, check_cancel, report

__all__ = [
    "DemoRun",
    "display_available",
    "qc_figure",
    "run_demo",
    "run_demo_pipeline",
    "write_demo_files",
]

#: steps of :func:`run_demo` reported through ``progress`` (write, read, one per
#: section registered, results, QC); the section count is added at run time
_FIXED_STEPS = 4


def display_available() -> bool:
    """True when a GUI can open (an X or Wayland display, or a non-Linux desktop)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def write_demo_files(
    out, *, seed: int = 0, n_sections: int = 4, cells_per_mm2: float = 400.0
) -> dict:
    """``out/sections/<name>.h5ad`` and ``out/atlas/`` (annotation .nrrd + structure
    tree .csv); returns ``{"sections": [paths], "annotation": path, "ontology": path}``."""
    from ..demo import write_demo_data

    return write_demo_data(out, seed=seed, n_sections=n_sections, cells_per_mm2=cells_per_mm2)


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

    from ..colors import categorical_colors, continuous_colors

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
            from ..io import gene_values

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

    from ..colors import categorical_colors

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


@dataclass
class DemoRun:
    """What :func:`run_demo` wrote: the folder, the result files, report and QC picture."""

    out: Path
    results: list[Path] = field(default_factory=list)
    report: dict = field(default_factory=dict)
    qc: Path | None = None


def _truth_options(section) -> dict | None:
    """register_section options a user would choose for a demo section: its true plane,
    position and hemisphere, and its true midline end points as the clicks."""
    truth = section.uns.get("demo_truth")
    if not truth:
        return None
    return {
        "plane": truth["plane"],
        "position_um": truth["position_um"],
        "hemisphere": truth["hemisphere"],
        "midline": np.asarray(truth["midline"]),
    }


def _error_report(reg) -> tuple[dict, str]:
    """The registered section against the demo truth: numbers and one line."""
    r, res = reg.adata, reg.result
    err = np.linalg.norm(r.obsm["ccf_coords"] - r.obsm["ccf_coords_true"], axis=1)
    acc = float((r.obs["ccf_id"].to_numpy() == r.obs["ccf_id_true"].to_numpy()).mean())
    numbers = {
        "median_error_um": float(np.median(err)),
        "p95_error_um": float(np.percentile(err, 95)),
        "region_agreement": acc,
        "confidence": float(res.confidence),
        "iterations": int(res.iterations),
        "converged": bool(res.converged),
    }
    line = (
        f"registered {reg.name}: median cell error {np.median(err):.1f} um, "
        f"p95 {np.percentile(err, 95):.1f} um, CCF structure agreement {acc:.1%}, "
        f"confidence {res.confidence:.2f}"
    )
    return numbers, line


def _register_demo(sections, atlas, out: Path, step, cancel):
    """Register the sections with a demo truth; returns the sections and the report."""
    from ..io import atomic_write_text
    from .register import register_one

    done, numbers = [], {}
    for s in sections:
        check_cancel(cancel)
        opts = _truth_options(s)
        if opts is None:
            done.append(s)
            continue
        reg = register_one(s, atlas, cancel=cancel, **opts)
        numbers[reg.name], line = _error_report(reg)
        step(line)
        done.append(reg.adata)
    atomic_write_text(json.dumps(numbers, indent=1), out / "registration_report.json")
    return done, numbers


def run_demo(out, *, seed: int = 0, progress: ProgressFn | None = None, cancel=None) -> DemoRun:
    """Run the main job headless on the demo (see the module docstring)."""
    from ..atlas import make_demo_atlas
    from ..io import write_h5ad
    from .sections import read_paths, section_names

    out = Path(out)
    run = DemoRun(out)
    counter = {"done": 0, "total": _FIXED_STEPS}

    def step(message: str) -> None:
        counter["done"] += 1
        report(progress, counter["done"], counter["total"], message=message)

    files = write_demo_files(out / "input", seed=seed)
    counter["total"] += len(files["sections"])
    step(f"demo data written to {out / 'input'}")
    sections = read_paths(files["sections"])
    step(
        f"read {len(sections)} sections: "
        + ", ".join(
            f"{n} ({s.n_obs} cells, {s.n_vars} genes)"
            for n, s in zip(section_names(sections), sections)
        )
    )
    atlas = make_demo_atlas()
    sections, run.report = _register_demo(sections, atlas, out, step, cancel)
    for s, name in zip(sections, section_names(sections)):
        run.results.append(write_h5ad(s, out / "results" / f"{name}.h5ad"))
    step(f"wrote {len(run.results)} result files to {out / 'results'}")
    run.qc = qc_figure(
        sections,
        out / "qc.png",
        colour_by="region",
        gene="Slc17a7",
        title="napari-brainatlas demo",
        atlas=atlas,
    )
    step(f"QC picture: {run.qc}")
    return run


def run_demo_pipeline(
    out: str | Path, seed: int = 0, log: Callable[[str], None] = lambda s: None
) -> Path:
    """Former entry point: :func:`run_demo` with ``log(line)``; returns the folder."""

    def progress(done, total, info):
        if info.get("message"):
            log(info["message"])

    return run_demo(out, seed=seed, progress=progress).out
