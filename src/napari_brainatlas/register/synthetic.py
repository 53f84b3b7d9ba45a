"""Synthetic sections cut from an atlas, with the truth kept (for tests and benchmarks).

Cells are sampled uniformly inside the tissue of an atlas slice (optionally tilted),
then moved into a "section frame" by a random affine (rotation, scale, shear, mirror,
offset), optionally warped smoothly, torn along a chord and thinned. The truth is kept
so that a registration can be scored cell by cell.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .affine import apply_affine, compose, reflection_x, rotation, translation

__all__ = ["SectionCut", "major_division_labels", "sample_section"]


def major_division_labels(atlas, ids: np.ndarray, divisions=None) -> np.ndarray:
    """Acronym of the major division (see :func:`..metrics.major_divisions`) of each id."""
    from .metrics import division_index

    idx, names = division_index(atlas, ids, divisions)
    out = np.array([""] + list(names), dtype=object)[idx + 1]
    return out.astype(str)


@dataclass(frozen=True)
class SectionCut:
    """How a synthetic section is cut and handled (the keywords of :func:`sample_section`).

    n_cells : cells sampled before dropping / tearing.
    angles_deg : cutting angles (a_x, a_y) of the true slice.
    rotation_deg, scale, shear, mirror, offset_um : the section frame: section um =
        T(atlas slice um), T = offset . rotation . scale . shear [. mirror].
    drop_fraction : random cells removed.
    warp_um : peak amplitude of a smooth random displacement (atlas um, before T).
    tear_fraction : about this fraction of the tissue removed on one side of a chord.
    midline_jitter : midline clicks moved by up to this fraction of the section size.
    seed : of the random draws.
    """

    n_cells: int = 10000
    angles_deg: tuple = (0.0, 0.0)
    rotation_deg: float = 0.0
    scale: float = 1.0
    shear: float = 0.0
    mirror: bool = False
    drop_fraction: float = 0.0
    warp_um: float = 0.0
    tear_fraction: float = 0.0
    midline_jitter: float = 0.0
    offset_um: tuple = (1000.0, -500.0)
    seed: int = 0


def sample_section(
    atlas,
    plane: str = "coronal",
    position_um: float | None = None,
    hemisphere: str = "both",
    *,
    name: str = "synthetic",
    **cut,
):
    """Sample a synthetic section from ``atlas``; returns an AnnData.

    Parameters
    ----------
    plane, position_um, hemisphere : the true atlas slice.
    name : the section's name (``uns['section']``, obs names).
    **cut : the fields of :class:`SectionCut` (n_cells, angles_deg, rotation_deg,
        scale, shear, mirror, drop_fraction, warp_um, tear_fraction, midline_jitter,
        offset_um, seed).

    The AnnData has obsm['spatial'] (section um), obs['region'] (major division),
    obs['ccf_id_true'], obsm['ccf_coords_true'] (AP, DV, ML um), obsm['slice_xy_true'],
    and uns['demo_truth'] = {plane, position_um, hemisphere, angles_deg, affine (3x3
    section um -> atlas slice um, without the warp), midline (2x2 section um)}.
    """
    from .slices import atlas_slice

    unknown = sorted(set(cut) - {f.name for f in fields(SectionCut)})
    if unknown:
        raise TypeError(f"sample_section() got an unexpected keyword argument {unknown[0]!r}")
    ct = SectionCut(**cut)
    rng = np.random.default_rng(ct.seed)
    sl = atlas_slice(atlas, plane, position_um, hemisphere, tuple(ct.angles_deg))
    xy, ids, rows = _cells_in_slice(sl, ct.n_cells, rng)
    ccf = sl.to_3d(xy)
    mid_atlas = _slice_midline(sl, plane, hemisphere, rows)
    xy_w = _warped(xy, sl, ct.warp_um, rng)
    T = _section_frame(xy, ct)
    sec = apply_affine(T, xy_w)
    mid_sec = apply_affine(T, mid_atlas)
    keep, mid_sec = _damaged(sec, mid_sec, ct, rng)
    idx = np.flatnonzero(keep)
    a = _section_anndata(atlas, name, ids[idx], sec[idx], ccf[idx], xy[idx])
    a.uns["demo_truth"] = {
        "plane": plane,
        "position_um": float(sl.position_um),
        "hemisphere": hemisphere,
        "angles_deg": np.asarray(ct.angles_deg, dtype=float),
        "affine": np.linalg.inv(T),
        "midline": mid_sec,
        "mirror": bool(ct.mirror),
    }
    return a


def _cells_in_slice(sl, n_cells: int, rng):
    """``n_cells`` cells uniform in the slice's tissue: (xy slice um, ids, tissue rows)."""
    res = sl.resolution_um
    rows, cols = np.nonzero(sl.labels > 0)
    pick = rng.integers(0, len(rows), n_cells)
    xy = np.column_stack(
        [(cols[pick] + rng.random(n_cells)) * res, (rows[pick] + rng.random(n_cells)) * res]
    )
    ids = sl.labels[rows[pick], cols[pick]].astype(np.int64)
    return xy, ids, rows


def _slice_midline(sl, plane: str, hemisphere: str, rows) -> np.ndarray:
    """The midline in atlas slice um: the vertical line through the midline (coronal)
    or the tissue's centre (sagittal), between 10% and 90% of its dorsoventral extent."""
    res = sl.resolution_um
    if plane == "coronal":
        mx = float(sl.midline_x_um)
    else:
        cols = np.nonzero(sl.labels > 0)[1]
        mx = float(np.mean((cols + 0.5) * res))
    col = int(np.clip(np.floor(mx / res), 0, sl.shape[1] - 1))
    if hemisphere == "left":
        col = max(col - 1, 0)
    rr = np.nonzero(sl.labels[:, col] > 0)[0]
    if len(rr) == 0:
        rr = rows
    y0, y1 = (rr.min()) * res, (rr.max() + 1) * res
    return np.array([[mx, y0 + 0.1 * (y1 - y0)], [mx, y0 + 0.9 * (y1 - y0)]])


def _warped(xy, sl, warp_um: float, rng) -> np.ndarray:
    """The cells moved by a smooth random warp of peak ``warp_um`` (atlas um)."""
    if warp_um <= 0:
        return xy
    W, H = sl.extent_um
    disp = np.zeros_like(xy)
    for _ in range(3):
        k = rng.normal(size=2) / max(W, H) * 2.0 * np.pi * rng.uniform(0.5, 1.5)
        ph = rng.uniform(0, 2 * np.pi, 2)
        amp = rng.normal(size=2)
        disp += np.sin(xy @ k + ph[:, None]).T * amp
    disp *= warp_um / max(np.abs(disp).max(), 1e-9)
    return xy + disp


def _section_frame(xy, ct: SectionCut) -> np.ndarray:
    """T: atlas slice um -> section um (offset . rotation . scale . shear [. mirror])."""
    c = xy.mean(0)
    S = np.diag([ct.scale, ct.scale, 1.0])
    Sh = np.array([[1.0, ct.shear, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    M = reflection_x(c[0]) if ct.mirror else np.eye(3)
    return compose(
        translation(np.asarray(ct.offset_um, dtype=float) + c),
        rotation(np.deg2rad(ct.rotation_deg)),
        S,
        Sh,
        translation(-c),
        M,
    )


def _damaged(sec, mid_sec, ct: SectionCut, rng):
    """The cells kept after the tear and the drop, and the jittered midline clicks."""
    keep = np.ones(len(sec), dtype=bool)
    if ct.tear_fraction > 0:
        # a chord at a random angle, placed so that ~tear_fraction of cells lie beyond it
        th = rng.uniform(0, 2 * np.pi)
        nrm = np.array([np.cos(th), np.sin(th)])
        proj = sec @ nrm
        cut = np.quantile(proj, 1.0 - ct.tear_fraction)
        keep &= proj < cut
    if ct.drop_fraction > 0:
        keep &= rng.random(len(sec)) >= ct.drop_fraction
    if ct.midline_jitter > 0:
        size = float(np.max(sec.max(0) - sec.min(0)))
        ang = rng.uniform(0, 2 * np.pi, 2)
        r = rng.uniform(0, ct.midline_jitter * size, 2)
        mid_sec = mid_sec + np.column_stack([np.cos(ang), np.sin(ang)]) * r[:, None]
    return keep, mid_sec


def _section_anndata(atlas, name: str, ids, sec, ccf, xy):
    """The AnnData of the kept cells (without ``demo_truth``)."""
    import anndata as ad
    import pandas as pd

    region = major_division_labels(atlas, ids)
    obs = pd.DataFrame(
        {
            "region": pd.Categorical(region),
            "ccf_id_true": ids,
        },
        index=[f"{name}_{i}" for i in range(len(ids))],
    )
    a = ad.AnnData(X=np.zeros((len(ids), 0), dtype=np.float32), obs=obs)
    a.obsm["spatial"] = sec
    a.obsm["ccf_coords_true"] = ccf
    a.obsm["slice_xy_true"] = xy
    a.uns["section"] = name
    return a
