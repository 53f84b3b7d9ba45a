"""Registration state files (plain Python, no Qt): one JSON per section, beside its data.

The file holds the :class:`~.result.RegistrationResult` (``result``), the atlas spec it was
registered to (``atlas_spec``: ``"demo"``, an .nrrd path, a BrainGlobe name, plus the
ontology path), the atlas name and version, the clicked midline and whether the result
was accepted. Written atomically (:func:`napari_brainatlas.io.atomic_write_text`).
"""

from __future__ import annotations

import json
from pathlib import Path

from .._errors import BrainAtlasInputError
from .result import RegistrationResult

__all__ = ["STATE_VERSION", "default_state_path", "load_state", "save_state"]

STATE_VERSION = 1


def default_state_path(adata, section: str, fallback_dir: str | Path | None = None) -> Path:
    """``<data folder>/<section>.registration.json``: the folder of the section's source
    file when known (``uns['napari_brainatlas']['source']``), else ``fallback_dir`` (or
    the current directory)."""
    meta = adata.uns.get("napari_brainatlas", {}) if adata is not None else {}
    src = meta.get("source") if isinstance(meta, dict) else None
    folder = None
    if src:
        p = Path(str(src))
        folder = p if p.is_dir() else p.parent
        if not folder.exists():
            folder = None
    if folder is None:
        folder = Path(fallback_dir) if fallback_dir is not None else Path.cwd()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(section)) or "section"
    return folder / f"{safe}.registration.json"


def save_state(
    path: str | Path,
    result: RegistrationResult,
    *,
    atlas_spec: str = "",
    ontology: str = "",
    midline=None,
    accepted: bool = False,
) -> Path:
    """Write the registration state of one section to ``path`` (atomically)."""
    from ..io import atomic_write_text

    doc = {
        "napari_brainatlas_registration": STATE_VERSION,
        "section": result.section,
        "atlas": result.atlas,
        "atlas_version": result.atlas_version,
        "atlas_spec": str(atlas_spec or result.atlas),
        "ontology": str(ontology or ""),
        "midline": [] if midline is None else [[float(v) for v in p] for p in midline],
        "accepted": bool(accepted),
        "result": result.to_dict(),
    }
    return atomic_write_text(json.dumps(doc, indent=1), path)


def load_state(path: str | Path) -> dict:
    """Read a file written by :func:`save_state`; ``doc['result']`` is a
    :class:`RegistrationResult`. Raises :class:`BrainAtlasInputError` for a missing or
    malformed file."""
    p = Path(path)
    if not p.is_file():
        raise BrainAtlasInputError(f"registration state file not found: {p}")
    try:
        doc = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BrainAtlasInputError(f"{p.name} is not a registration state file ({exc})") from None
    if not isinstance(doc, dict) or "result" not in doc:
        raise BrainAtlasInputError(f"{p.name} is not a registration state file (no 'result')")
    doc["result"] = RegistrationResult.from_dict(doc["result"])
    return doc
