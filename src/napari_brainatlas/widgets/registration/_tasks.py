"""What the Registration dock runs in worker threads beyond a single fit (plain Python:
no Qt, no napari): the batch with its checks, the series, the QuickNII export.

Each function takes copies of the sections (:func:`.._base.snapshot`) and the atlas,
reports through ``progress(done, total, info)`` and polls ``cancel()``
(:mod:`napari_brainatlas.jobs`), and calls the workflows (the code the command line runs).
"""

from __future__ import annotations

import numpy as np

from ..._errors import Cancelled
from ...jobs import check_cancel, report

__all__ = ["export_quicknii", "precheck", "register_sections"]


def _pose_is_set(options: dict) -> bool:
    from ...workflows.register_pose import StartPose

    pose = StartPose.coerce(options.get("start_pose"))
    return pose is not None and not pose.identity


def precheck(adata, atlas, options: dict, *, allow_no_midline: bool = False) -> str | None:
    """Why a batch run should leave this section alone ("skipped: ..."), or None.

    Skipped: no midline (and no start pose to take it from) unless ``allow_no_midline``;
    units that do not fit the atlas; a section whose tissue is far smaller than the
    template slice's (a crop): it would be stretched over the whole slice."""
    from ...workflows.register_checks import partial_reason

    if options.get("midline") is None and not _pose_is_set(options) and not allow_no_midline:
        return (
            "skipped: no midline (click it, turn the start pose, or tick 'fit sections "
            "without a midline')"
        )
    pos = options.get("position_um")
    why = partial_reason(
        adata,
        atlas,
        options.get("plane", "coronal"),
        None if isinstance(pos, str) else pos,
        options.get("hemisphere", "both"),
        options.get("angles_deg", (0.0, 0.0)),
    )
    return f"skipped: {why}" if why else None


def register_sections(
    jobs,
    atlas,
    *,
    allow_no_midline: bool = False,
    done_status: str = "fitted",
    progress=None,
    cancel=None,
):
    """Register each ``(name, adata copy, options)`` (``register_section`` keywords,
    with ``midline`` and ``start_pose``) after :func:`precheck`. A section that fails or
    is skipped does not stop the others. Returns ``{name: RegistrationResult |
    "skipped: <why>" | "failed: <why>" | "cancelled"}``; on Cancel the sections done so
    far are kept and the rest are "cancelled"."""
    from ...workflows import register_one
    from .._notify import one_line

    out: dict = {}
    for k, (name, adata, options) in enumerate(jobs):
        if cancel is not None and cancel():
            break
        kw = dict(options)
        if kw.get("midline") is None and not _pose_is_set(kw):
            kw["hemisphere"] = "both"  # without a cut edge: fitted as a full section
        try:
            why = precheck(adata, atlas, kw, allow_no_midline=allow_no_midline)
            if why:
                status = out[name] = why
            else:
                out[name] = register_one(adata, atlas, name=name, cancel=cancel, **kw).result
                status = done_status
        except Cancelled:
            break
        except Exception as exc:  # noqa: BLE001 - that section fails, the others go on
            status = out[name] = f"failed: {one_line(exc)}"
        report(progress, k + 1, len(jobs), section=name, status=status, message=f"{name}: {status}")
    for name, _, _ in jobs:
        out.setdefault(name, "cancelled")
    return out


def export_quicknii(
    entries, atlas, path, *, name: str = "napari-brainatlas", progress=None, cancel=None
):
    """Write the QuickNII / VisuAlign series file (and a PNG per section) for
    ``entries`` ``(result, xy, rgba)``; returns the paths written."""
    from ...io.quicknii import write_quicknii

    check_cancel(cancel)
    entries = [(r, np.asarray(xy, float), c) for r, xy, c in entries]
    paths = write_quicknii(path, entries, atlas, name=name)
    report(progress, 1, 1, message=f"wrote {paths[0].name} and {len(paths) - 1} image(s)")
    return paths
