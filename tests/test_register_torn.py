"""Torn tissue in the label fit and the plane score (real Allen CCFv3, 25 um).

A section torn along a chord lacks part of the slice: the template's division edges
and outline there have no cells near them. The reverse pairs of the label fit are
trimmed at ``LabelFitSettings.reverse_trim_q`` and the plane score averages the outline
distances over the lowest ``LabelFitSettings.score_trim_q`` only, so that the torn-away part
does not pull the fit into the gap. The section below is one of the benchmark's
held-out hard sections (generator seed 1, case 25): an anterior left hemisection with
11 % of the tissue torn away and 10 % of its labels wrong.
"""

from dataclasses import replace

import numpy as np
import pytest

from napari_brainatlas.atlas import Atlas
from napari_brainatlas.register import register_section
from napari_brainatlas.register.affine import apply_affine
from napari_brainatlas.register.boundary import section_outline
from napari_brainatlas.register.labelfit import _trimmed_mean, label_fit, make_label_template
from napari_brainatlas.register.section import cell_divisions
from napari_brainatlas.register.settings import RegistrationSettings
from napari_brainatlas.register.slices import atlas_slice
from napari_brainatlas.register.synthetic import sample_section
from napari_brainatlas.register.template import template_for

from ._data import CCF25, ONTO_CSV, shared

TORN = {
    "plane": "coronal",
    "position_um": 2802.97,
    "hemisphere": "left",
    "n_cells": 19683,
    "rotation_deg": 50.77,
    "scale": 1.081,
    "shear": 0.0218,
    "mirror": True,
    "drop_fraction": 0.0899,
    "midline_jitter": 0.0062,
    "offset_um": (-828.5, -1522.9),
    "seed": 125,
    "angles_deg": (-1.511, -0.467),
    "warp_um": 7.12,
    "tear_fraction": 0.1113,
}


@pytest.fixture(scope="module")
def ccf25():
    return Atlas.load(shared(CCF25), ontology=shared(ONTO_CSV))


@pytest.fixture(scope="module")
def torn(ccf25):
    a = sample_section(ccf25, name="torn", **TORN)
    # 10 % of the region labels wrong, as in the benchmark
    rng = np.random.default_rng(25)
    lab = a.obs["region"].astype(str).to_numpy().copy()
    cats = np.unique(lab[lab != ""])
    flip = rng.random(len(lab)) < 0.10
    lab[flip] = rng.choice(cats, flip.sum())
    a.obs["region"] = lab
    tr = a.uns["demo_truth"]
    sl = atlas_slice(
        ccf25,
        tr["plane"],
        float(tr["position_um"]),
        tr["hemisphere"],
        tuple(float(v) for v in tr["angles_deg"]),
    )
    return a, sl


def test_trimmed_mean():
    d = np.array([1.0, 2.0, 3.0, 4.0, 100.0, 200.0, 7.0, 8.0])
    assert _trimmed_mean(d, 1.0) == pytest.approx(d.mean())
    assert _trimmed_mean(d, 0.5) == pytest.approx(2.5)  # the lowest four
    assert _trimmed_mean(d, 0.75) == pytest.approx(np.mean([1, 2, 3, 4, 7, 8]))
    assert np.isnan(_trimmed_mean(np.zeros(0), 0.5))


def test_label_fit_of_torn_tissue_stays_at_the_truth(ccf25, torn):
    a, sl = torn
    tr = a.uns["demo_truth"]
    xy = a.obsm["spatial"]
    true3 = a.obsm["ccf_coords_true"]
    outline = section_outline(xy)
    tmpl = template_for(
        ccf25,
        tr["plane"],
        float(tr["position_um"]),
        tr["hemisphere"],
        tuple(float(v) for v in tr["angles_deg"]),
        outline,
    )
    div = cell_divisions(a, ccf25, "region")
    ok = np.flatnonzero(div >= 0)
    ok = np.sort(np.random.default_rng(1).choice(ok, 4000, replace=False))
    lt = make_label_template(ccf25, tmpl.slice)
    A_true = np.asarray(tr["affine"], dtype=float)
    labels = RegistrationSettings().labels  # the registration's label terms
    fit = replace(labels, n_iter=40, tol_um=0.2)

    def fitted_error(**kw):
        A, _ = label_fit(A_true, xy[ok], div[ok], lt, outline.points, tmpl.tree, replace(fit, **kw))
        return float(np.median(np.linalg.norm(sl.to_3d(apply_affine(A, xy)) - true3, axis=1)))

    start = float(np.median(np.linalg.norm(sl.to_3d(apply_affine(A_true, xy)) - true3, axis=1)))
    assert start < 5.0
    # the default trim keeps the fit where it started ...
    assert labels.reverse_trim_q <= 0.75
    assert fitted_error() < 15.0
    # ... the earlier 0.85 let the template edges of the torn-away part pull it away
    assert fitted_error(reverse_trim_q=0.85) > 40.0


def test_registration_of_a_torn_hemisection_tries_label_starts(ccf25, torn):
    """Hemisections always get the global label starts
    (``LabelStartSettings.hemisections``), whatever the outline fit's label agreement;
    the progress callback reports each position they are tried at."""
    a, _ = torn
    tr = a.uns["demo_truth"]

    def run(settings=None):
        seen = []
        res = register_section(
            a,
            ccf25,
            tr["plane"],
            float(tr["position_um"]) + 80.0,
            tr["hemisphere"],
            tr["midline"],
            settings=settings,
            refine_position=True,
            progress=lambda done, total, info: seen.append(info["stage"]),
        )
        return res, seen

    res, seen = run()
    assert seen.count("label_starts") >= 2  # the given plane's fits, then each position
    assert np.isfinite(res.confidence)
    s = RegistrationSettings()
    _, seen = run(replace(s, starts=replace(s.starts, hemisections=False)))
    assert "label_starts" not in seen  # this outline fit's labels agree well enough: no starts
    assert "plane_search" in seen
