"""Steps of the headless main job that use the engines (registration, embedding, transfer).

Each step takes ``(sections, out_dir, log)`` and returns the sections (new AnnData
objects; the inputs are not modified). Steps whose engine is not importable are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["STEPS", "register_step"]


def register_step(sections, out: Path, log):
    """Register every demo section to the demo atlas from its midline 'clicks'.

    The clicks are the section's true midline end points (what a user would click), the
    template position and hemisphere are the ones the user would choose. Reports the
    median cell error against the ground truth.
    """
    from .atlas import make_demo_atlas
    from .io import atomic_write_text
    from .register import apply_registration, register_section

    atlas = make_demo_atlas()
    done, report = [], {}
    for s in sections:
        truth = s.uns.get("demo_truth")
        name = s.uns["napari_brainatlas"]["section"]
        if not truth:
            done.append(s)
            continue
        res = register_section(
            s,
            atlas,
            plane=truth["plane"],
            position_um=truth["position_um"],
            hemisphere=truth["hemisphere"],
            midline=np.asarray(truth["midline"]),
            section_name=name,
        )
        r = apply_registration(s, res, atlas)
        err = np.linalg.norm(r.obsm["ccf_coords"] - r.obsm["ccf_coords_true"], axis=1)
        acc = float((r.obs["ccf_id"].to_numpy() == r.obs["ccf_id_true"].to_numpy()).mean())
        report[name] = {
            "median_error_um": float(np.median(err)),
            "p95_error_um": float(np.percentile(err, 95)),
            "region_agreement": acc,
            "confidence": float(res.confidence),
            "iterations": int(res.iterations),
            "converged": bool(res.converged),
        }
        log(
            f"registered {name}: median cell error {np.median(err):.1f} um, "
            f"p95 {np.percentile(err, 95):.1f} um, CCF structure agreement {acc:.1%}, "
            f"confidence {res.confidence:.2f}"
        )
        done.append(r)
    atomic_write_text(json.dumps(report, indent=1), out / "registration_report.json")
    return done


STEPS = (register_step,)
