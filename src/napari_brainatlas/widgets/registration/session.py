"""The Registration dock's state, in plain Python (no Qt, no napari): tested without a
display.

A :class:`RegistrationSession` holds, per section (by name):

* the user's clicks (:class:`Clicks`: midline, landmark pairs, position, hemisphere,
  cutting angles) - what a fit was asked with;
* the current :class:`~napari_brainatlas.register.RegistrationResult` and whether it
  was accepted (written into the section), and a status for the batch table;
* an undo stack: every fit, accept or load pushes the state before it, with the
  AnnData the section held then (and whatever else the dock asks to keep, e.g. the
  layer's features table), so undo and reset can give the section back.

The batch ("register the rest") rows, the options every fit shares
(:class:`RegisterOptions`) and the JSON state files (one per section, written atomically,
carrying the atlas name and version; compatible with
``napari_brainatlas.register.state``; by default in a user folder,
:func:`default_state_dir`, never beside the input data, which may be read-only) are here
too. The dock only turns clicks into these calls and draws what they hold.
"""

from __future__ import annotations

import json
from copy import deepcopy
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..._errors import BrainAtlasInputError

__all__ = [
    "BATCH_COLUMNS",
    "FLIPS",
    "STATE_VERSION",
    "Clicks",
    "RegisterOptions",
    "RegistrationSession",
    "SectionState",
    "default_state_dir",
    "read_state",
    "safe_name",
]

#: columns of the batch table
BATCH_COLUMNS = ("section", "status", "agree", "Dice", "conf.")
#: the flip choices and the engine's ``mirrored`` for each
FLIPS = {"auto": None, "no": False, "yes": True}
#: where state files go by default (a user folder); the environment variable overrides it
STATE_DIR_ENV = "NAPARI_BRAINATLAS_STATE_DIR"


def default_state_dir() -> Path:
    """The folder state files are saved to by default: ``$NAPARI_BRAINATLAS_STATE_DIR``,
    else the user data folder of napari-brainatlas (``platformdirs``) +
    ``registrations``, else ``~/.napari-brainatlas/registrations``. Never the folder of
    the input data."""
    import os

    env = os.environ.get(STATE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    try:
        from platformdirs import user_data_dir

        return Path(user_data_dir("napari-brainatlas", appauthor=False)) / "registrations"
    except ImportError:  # pragma: no cover - platformdirs comes with napari
        return Path.home() / ".napari-brainatlas" / "registrations"


def safe_name(name: str) -> str:
    """``name`` usable as a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name)) or "section"


#: version of the state file (the same document ``register.state.save_state`` writes,
#: plus ``clicks``)
STATE_VERSION = 1


# ---------------------------------------------------------------------- plain records
def _xy(a, width: int) -> np.ndarray:
    return np.asarray(a if a is not None else [], dtype=float).reshape(-1, width)


@dataclass(eq=False)
class Clicks:
    """What the user gave for a section (section / atlas-slice um, x then y).

    midline : (2, 2) dorsal then ventral point, or None (no midline: rotation sweep).
    landmarks : (k, 4) rows ``x_s, y_s, x_atlas, y_atlas`` (moved anchors and the
        user's landmark pairs).
    flip : "auto" (the fit decides), "no" or "yes" (the section is mirrored).
    pose : (rotation deg, scale) of the section's start pose.
    """

    midline: np.ndarray | None = None
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    position_um: float | str | None = None
    hemisphere: str = "both"
    angles_deg: tuple[float, float] = (0.0, 0.0)
    flip: str = "auto"
    pose: tuple[float, float] = (0.0, 1.0)

    @property
    def mirrored(self) -> bool | None:
        """The engine's ``mirrored`` for :attr:`flip`."""
        return FLIPS.get(self.flip)

    def to_dict(self) -> dict:
        pos = self.position_um
        return {
            "midline": [] if self.midline is None else _xy(self.midline, 2).tolist(),
            "landmarks": _xy(self.landmarks, 4).tolist(),
            "position_um": pos if isinstance(pos, str) or pos is None else float(pos),
            "hemisphere": str(self.hemisphere),
            "angles_deg": [float(a) for a in self.angles_deg],
            "flip": str(self.flip),
            "pose": [float(v) for v in self.pose],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Clicks:
        mid = _xy(d.get("midline"), 2)
        angles = [float(a) for a in (d.get("angles_deg") or (0.0, 0.0))]
        if len(angles) != 2:
            raise ValueError("angles_deg needs two values")
        pos = d.get("position_um")
        flip = str(d.get("flip", "auto"))
        if flip not in FLIPS:
            raise ValueError(f"flip must be one of {sorted(FLIPS)}")
        pose = [float(v) for v in (d.get("pose") or (0.0, 1.0))]
        if len(pose) != 2 or not pose[1] > 0:
            raise ValueError("pose needs a rotation and a positive scale")
        return cls(
            midline=mid if len(mid) == 2 else None,
            landmarks=_xy(d.get("landmarks"), 4),
            position_um=pos if isinstance(pos, str) or pos is None else float(pos),
            hemisphere=str(d.get("hemisphere", "both")),
            angles_deg=(angles[0], angles[1]),
            flip=flip,
            pose=(pose[0], pose[1]),
        )


@dataclass(frozen=True)
class RegisterOptions:
    """The settings every fit of the dock shares (``register_section`` keywords)."""

    plane: str = "coronal"
    hemisphere: str = "both"
    max_iter: int = 100
    nonlinear: bool = False
    refine_position: bool = False
    quick_search: bool = False

    @property
    def plane_search(self) -> str:
        return "quick" if self.refine_position and self.quick_search else "joint"

    def kwargs(self) -> dict:
        """The keywords for ``register_section``."""
        return {
            "plane": self.plane,
            "hemisphere": self.hemisphere if self.plane == "coronal" else "both",
            "max_iter": int(self.max_iter),
            "nonlinear": bool(self.nonlinear),
            "refine_position": bool(self.refine_position),
            "plane_search": self.plane_search,
        }


@dataclass
class SectionState:
    """One section's registration state (also one entry of its undo stack).

    ``adata`` and ``kept`` are filled for undo entries only: the AnnData the section
    held before the change and what the dock asked to keep with it.
    """

    clicks: Clicks = field(default_factory=Clicks)
    result: object = None  # RegistrationResult | None
    accepted: bool = False
    status: str = ""
    adata: object = None
    kept: dict = field(default_factory=dict)
    #: fraction of the labelled cells whose own label agrees with the landed region
    agreement: float | None = None


# ---------------------------------------------------------------------- the session
class RegistrationSession:
    """Per-section registration state, undo, batch rows and state files."""

    def __init__(self):
        self._states: dict[str, SectionState] = {}
        self._history: dict[str, list[SectionState]] = {}
        self._original: dict[str, SectionState] = {}
        #: the atlas of the fits: name, version, and how it was opened (spec, ontology)
        self.atlas_name = ""
        self.atlas_version = ""
        self.atlas_spec = ""
        self.ontology = ""

    # ------------------------------------------------------------------ atlas
    def set_atlas(self, name: str, version: str = "", spec: str = "", ontology: str = ""):
        self.atlas_name, self.atlas_version = str(name), str(version or "")
        self.atlas_spec, self.ontology = str(spec or name), str(ontology or "")

    # ------------------------------------------------------------------ reading
    def state(self, name: str) -> SectionState:
        """The current state of section ``name`` (an empty one at first)."""
        return self._states.setdefault(name, SectionState())

    def result(self, name: str):
        st = self._states.get(name)
        return None if st is None else st.result

    def results(self) -> dict:
        """``{section: RegistrationResult}`` of every fitted section."""
        return {n: s.result for n, s in self._states.items() if s.result is not None}

    def accepted(self, name: str) -> bool:
        st = self._states.get(name)
        return bool(st is not None and st.accepted)

    def can_undo(self, name: str) -> bool:
        return bool(self._history.get(name))

    # ------------------------------------------------------------------ changes
    def set_clicks(self, name: str, **changes) -> Clicks:
        """Record what the user clicked / chose (fields of :class:`Clicks`)."""
        st = self.state(name)
        st.clicks = replace(st.clicks, **changes)
        return st.clicks

    def set_status(self, name: str, status: str) -> None:
        self.state(name).status = str(status)

    def set_agreement(self, name: str, value: float | None) -> None:
        """The own-label agreement of the current fit (shown in the batch table)."""
        self.state(name).agreement = None if value is None else float(value)

    def _push(self, name: str, adata, kept: dict | None) -> None:
        st = self.state(name)
        snap = SectionState(
            clicks=deepcopy(st.clicks),
            result=st.result,
            accepted=st.accepted,
            status=st.status,
            adata=adata,
            kept=dict(kept or {}),
        )
        self._original.setdefault(name, snap)
        self._history.setdefault(name, []).append(snap)

    def fitted(self, name: str, result, *, adata=None, kept=None, status: str = "fitted"):
        """A new fit of ``name`` (undoable): not accepted yet."""
        self._push(name, adata, kept)
        st = self.state(name)
        st.result, st.accepted, st.status, st.agreement = result, False, status, None
        if getattr(result, "angles_deg", None) is not None:
            st.clicks = replace(
                st.clicks,
                angles_deg=tuple(float(a) for a in result.angles_deg),
                position_um=float(result.position_um),
                hemisphere=str(result.hemisphere),
            )

    def accept(self, name: str, adata, atlas, *, kept=None):
        """Write the current fit into (a copy of) ``adata``: obsm['ccf_coords'],
        obs['ccf_id'], obs['ccf_acronym'], uns['ccf_registration']. Undoable; returns
        the new AnnData for the section."""
        from ...register import apply_registration

        res = self.result(name)
        if res is None:
            raise BrainAtlasInputError("nothing to accept: register the section first")
        out = apply_registration(adata, res, atlas)
        self._push(name, adata, kept)
        st = self.state(name)
        st.accepted, st.status = True, "accepted"
        return out

    def undo(self, name: str) -> SectionState | None:
        """Back to the state before the last fit / accept / load of ``name``; returns
        that state (its ``adata``: what the section held then), None when nothing is
        left to undo."""
        stack = self._history.get(name) or []
        if not stack:
            return None
        snap = stack.pop()
        self._states[name] = replace(snap, adata=None, kept={})
        return snap

    def reset(self, name: str) -> SectionState | None:
        """Back to the section as it was before any registration; returns that state
        (None when nothing was done to it)."""
        snap = self._original.pop(name, None)
        self._history.pop(name, None)
        if snap is None:
            return None
        self._states[name] = replace(snap, adata=None, kept={})
        return snap

    # ------------------------------------------------------------------ batch
    def unregistered(self, names) -> list[str]:
        """The sections of ``names`` without a fit (what "register the rest" runs)."""
        return [n for n in names if self.result(n) is None]

    def queue(self, names) -> None:
        for n in names:
            self.set_status(n, "queued")

    def batch_row(self, name: str) -> tuple[str, ...]:
        st = self._states.get(name) or SectionState()
        res = st.result
        m = res.metrics if res is not None else {}
        status = st.status or ("fitted" if res is not None else "-")
        agree = st.agreement
        return (
            name,
            status,
            f"{100 * agree:.0f}%" if agree is not None and np.isfinite(agree) else "",
            f"{m['dice']:.3f}" if "dice" in m else "",
            f"{res.confidence:.2f}" if res is not None else "",
        )

    def batch_rows(self, names) -> list[tuple[str, ...]]:
        """One row per section (:data:`BATCH_COLUMNS`)."""
        return [self.batch_row(n) for n in names]

    # ------------------------------------------------------------------ files
    def state_path(self, name: str) -> Path:
        """The default file of section ``name``'s state: ``<default_state_dir>/<atlas>/
        <section>.registration.json`` (a user folder, never beside the data)."""
        folder = default_state_dir() / safe_name(self.atlas_name or "atlas")
        return folder / f"{safe_name(name)}.registration.json"

    def save(self, name: str, path) -> Path:
        """Write section ``name``'s state as JSON to ``path`` (atomically)."""
        from ...io import atomic_write_text

        st = self._states.get(name)
        if st is None or st.result is None:
            raise BrainAtlasInputError("nothing to save: register the section first")
        res = st.result
        doc = {
            "napari_brainatlas_registration": STATE_VERSION,
            "section": res.section,
            "atlas": res.atlas,
            "atlas_version": res.atlas_version,
            "atlas_spec": str(self.atlas_spec or res.atlas),
            "ontology": str(self.ontology or ""),
            "midline": Clicks(midline=st.clicks.midline).to_dict()["midline"],
            "accepted": bool(st.accepted),
            "clicks": st.clicks.to_dict(),
            "result": res.to_dict(),
        }
        return atomic_write_text(json.dumps(doc, indent=1), path)

    def load(self, name: str, path, *, adata=None, kept=None):
        """Read a state file for section ``name`` (undoable; not accepted until
        :meth:`accept`). The file's atlas must be the session's (name, and version
        when both are known). Returns the RegistrationResult."""
        doc = read_state(path)
        res = doc["result"]
        if not self.atlas_name:
            raise BrainAtlasInputError(f"load atlas {res.atlas!r} first")
        if res.atlas != self.atlas_name:
            raise BrainAtlasInputError(
                f"this registration was made on atlas {res.atlas!r}; load that atlas first"
            )
        if res.atlas_version and self.atlas_version and res.atlas_version != self.atlas_version:
            raise BrainAtlasInputError(
                f"this registration was made on {res.atlas} version {res.atlas_version!r}, "
                f"not the loaded {self.atlas_version!r}"
            )
        self.fitted(name, res, adata=adata, kept=kept, status="loaded")
        st = self.state(name)
        st.clicks = doc["clicks"]
        return res


def read_state(path) -> dict:
    """Read and check a state file: ``doc['result']`` a RegistrationResult,
    ``doc['clicks']`` :class:`Clicks`. Raises :class:`BrainAtlasInputError` (one
    sentence) for a missing, unreadable or malformed file."""
    from ...register import RegistrationResult

    p = Path(path)
    if not p.is_file():
        raise BrainAtlasInputError(f"registration state file not found: {p}")
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BrainAtlasInputError(f"{p.name} is not a registration state file ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("result"), dict):
        raise BrainAtlasInputError(f"{p.name} is not a registration state file (no 'result')")
    try:
        res = RegistrationResult.from_dict(doc["result"])
        affine = np.asarray(res.affine, dtype=float).reshape(3, 3)
        clicks = doc.get("clicks")
        if not isinstance(clicks, dict):  # files written by register.state.save_state
            clicks = {
                "midline": doc.get("midline") or [],
                "position_um": res.position_um,
                "hemisphere": res.hemisphere,
                "angles_deg": list(res.angles_deg),
            }
        clicks = Clicks.from_dict(clicks)
    except (TypeError, ValueError, KeyError) as exc:
        raise BrainAtlasInputError(
            f"{p.name} is not a valid registration state file ({exc})"
        ) from None
    if not np.isfinite(affine).all():
        raise BrainAtlasInputError(f"{p.name} holds a registration with non-finite numbers")
    doc["result"] = res
    doc["clicks"] = clicks
    return doc
