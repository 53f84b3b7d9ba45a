"""A section's start pose (rotation, scale) and the placement it implies (plain Python).

Peers (brainglobe-registration, ABBA, QuickNII) let the user turn, scale and flip a
section over the template before (or instead of) an automatic fit. Here the pose is
:class:`StartPose` (rotation and scale about the section's centroid; the flip is the
engine's ``mirrored`` option) and:

* :func:`placement` - the affine (section um -> atlas-slice um) that shows the section
  in that pose over the template: its centroid on the template's midline (a full coronal
  section), its cut edge on the midline (a hemisection), or on the template tissue's
  centroid (sagittal);
* :func:`pose_midline` - the midline that pose implies, in section um: what the fit
  starts from when the user turned the section instead of clicking a midline;
* :func:`with_pose` / :func:`compose_result` - run the engine on the posed cells and
  give the result back in the section's own frame (affine composed, anchors and midline
  mapped back), so a scale pose also rescues a section in the wrong units.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

__all__ = ["StartPose", "compose_result", "placement", "pose_midline", "with_pose"]


def _rot(deg: float) -> np.ndarray:
    t = np.deg2rad(float(deg))
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _shift(v) -> np.ndarray:
    M = np.eye(3)
    M[:2, 2] = np.asarray(v, float)[:2]
    return M


def _apply(M: np.ndarray, xy) -> np.ndarray:
    xy = np.asarray(xy, float).reshape(-1, 2)
    return xy @ M[:2, :2].T + M[:2, 2]


@dataclass(frozen=True)
class StartPose:
    """Rotation (degrees, counter-clockwise on the displayed section) and scale about
    the section's centroid."""

    rotation_deg: float = 0.0
    scale: float = 1.0

    def __post_init__(self):
        from .._errors import BrainAtlasInputError

        if not (np.isfinite(self.rotation_deg) and np.isfinite(self.scale) and self.scale > 0):
            raise BrainAtlasInputError("a start pose needs a finite rotation and a positive scale")

    @property
    def identity(self) -> bool:
        return abs(self.rotation_deg % 360.0) < 1e-9 and abs(self.scale - 1.0) < 1e-12

    def matrix(self, centre) -> np.ndarray:
        """3x3: section um -> posed section um (about ``centre``)."""
        c = np.asarray(centre, float)[:2]
        S = np.diag([self.scale, self.scale, 1.0])
        return _shift(c) @ _rot(self.rotation_deg) @ S @ _shift(-c)

    @classmethod
    def coerce(cls, pose) -> StartPose | None:
        """A StartPose from a StartPose, a dict or a (rotation, scale) pair; None stays."""
        if pose is None or isinstance(pose, StartPose):
            return pose
        if isinstance(pose, dict):
            return cls(float(pose.get("rotation_deg", 0.0)), float(pose.get("scale", 1.0)))
        r, s = pose
        return cls(float(r), float(s))


def _flip(centre) -> np.ndarray:
    c = np.asarray(centre, float)[:2]
    return _shift(c) @ np.diag([-1.0, 1.0, 1.0]) @ _shift(-c)


def placement(
    xy,
    atlas,
    plane: str = "coronal",
    position_um: float | None = None,
    hemisphere: str = "both",
    angles_deg=(0.0, 0.0),
    pose: StartPose | None = None,
    flip: bool = False,
) -> np.ndarray:
    """3x3 affine, section um -> atlas-slice um, showing the section in ``pose`` (and
    mirrored with ``flip``) over the template slice (see the module docstring)."""
    from ..register.slices import atlas_slice

    xy = np.asarray(xy, float)[:, :2]
    c = xy.mean(0)
    Q = (pose or StartPose()).matrix(c)
    if flip:
        Q = _flip(c) @ Q
    z = _apply(Q, xy)
    lo, hi = atlas.position_range_um(plane)
    pos = (lo + hi) / 2 if position_um is None else float(position_um)
    pos = float(np.clip(pos, lo, hi - atlas.resolution_um))
    sl = atlas_slice(atlas, plane, pos, hemisphere, tuple(float(a) for a in angles_deg))
    rows, cols = np.nonzero(sl.mask)
    if len(rows):
        tc = np.array([cols.mean() + 0.5, rows.mean() + 0.5]) * sl.resolution_um
    else:
        tc = np.array(sl.extent_um) / 2
    tx = tc[0] - z[:, 0].mean()
    if plane == "coronal" and sl.midline_x_um is not None:
        mx = float(sl.midline_x_um)
        if hemisphere == "left":
            tx = mx - z[:, 0].max()
        elif hemisphere == "right":
            tx = mx - z[:, 0].min()
        else:
            tx = mx - z[:, 0].mean()
    ty = tc[1] - z[:, 1].mean()
    return _shift([tx, ty]) @ Q


def pose_midline(
    xy,
    atlas,
    plane: str = "coronal",
    position_um: float | None = None,
    hemisphere: str = "both",
    angles_deg=(0.0, 0.0),
    pose: StartPose | None = None,
    flip: bool = False,
) -> np.ndarray:
    """(2, 2) section um, dorsal then ventral: the template's midline (coronal; the
    vertical through the tissue's centre for sagittal) seen through :func:`placement`."""
    xy = np.asarray(xy, float)[:, :2]
    M = placement(xy, atlas, plane, position_um, hemisphere, angles_deg, pose, flip)
    z = _apply(M, xy)
    if plane == "coronal":
        from ..register.slices import atlas_slice

        lo, hi = atlas.position_range_um(plane)
        pos = (lo + hi) / 2 if position_um is None else float(position_um)
        pos = float(np.clip(pos, lo, hi - atlas.resolution_um))
        x = float(atlas_slice(atlas, plane, pos, hemisphere, tuple(angles_deg)).midline_x_um)
        if hemisphere == "left":
            x = z[:, 0].max()
        elif hemisphere == "right":
            x = z[:, 0].min()
    else:
        x = float(z[:, 0].mean())
    y0, y1 = np.percentile(z[:, 1], [5, 95])
    line = np.array([[x, y0], [x, y1]])  # dorsal (small y) first
    return _apply(np.linalg.inv(M), line)


def with_pose(adata, pose: StartPose, options: dict):
    """(posed AnnData, posed options, P): the cells (and the midline, the section side of
    the landmarks) in the posed frame ``P`` = rotation and scale about the centroid."""
    from anndata import AnnData

    xy = np.asarray(adata.obsm["spatial"], float)[:, :2]
    P = pose.matrix(np.nanmean(xy, axis=0))
    posed = AnnData(
        obs=adata.obs.copy(),
        obsm={"spatial": _apply(P, xy)},
        uns=dict(adata.uns),
    )
    opts = dict(options)
    if opts.get("midline") is not None:
        opts["midline"] = _apply(P, opts["midline"]).tolist()
    lm = opts.get("landmarks")
    if lm is not None and not isinstance(lm, dict) and len(lm):
        lm = np.asarray(lm, float).reshape(-1, 4).copy()
        lm[:, :2] = _apply(P, lm[:, :2])
        opts["landmarks"] = lm
    return posed, opts, P


def compose_result(res, P: np.ndarray, pose: StartPose):
    """The engine's result on posed cells, back in the section's own frame."""
    Pinv = np.linalg.inv(P)
    A = np.asarray(res.affine, float).reshape(3, 3) @ P
    m = dict(res.metrics)
    m["scale"] = float(np.sqrt(abs(np.linalg.det(A[:2, :2]))))

    def back(pts):
        pts = np.asarray(pts, float)
        return _apply(Pinv, pts).tolist() if pts.size else []

    return replace(
        res,
        affine=A.tolist(),
        anchors_section=back(res.anchors_section),
        midline=back(res.midline),
        metrics=m,
        notes=list(res.notes)
        + [f"start pose: rotation {pose.rotation_deg:g} deg, scale {pose.scale:g}"],
    )
