"""Where GUI tests put their screenshots.

Screenshots go to ``$NAPARI_BRAINATLAS_SCREENSHOT_DIR`` when set, else to
``<tmp>/napari-brainatlas-screenshots`` (printed paths, to look at). The tracked pictures
in ``docs/screenshots`` are rewritten only when ``NAPARI_BRAINATLAS_DOCS_SCREENSHOTS=1``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

DOCS_SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"


def shot_dir() -> Path:
    d = os.environ.get("NAPARI_BRAINATLAS_SCREENSHOT_DIR")
    out = Path(d) if d else Path(tempfile.gettempdir()) / "napari-brainatlas-screenshots"
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_png(img: np.ndarray, path: Path) -> Path:
    from imageio.v3 import imwrite

    path.parent.mkdir(parents=True, exist_ok=True)
    imwrite(path, np.ascontiguousarray(img))
    return path


def save_shot(img: np.ndarray, name: str, docs_name: str | None = None) -> Path:
    """Write ``name.png`` to :func:`shot_dir`; with ``docs_name`` also refresh
    ``docs/screenshots/<docs_name>.png`` when asked to (see the module docstring)."""
    out = save_png(img, shot_dir() / f"{name}.png")
    if docs_name and os.environ.get("NAPARI_BRAINATLAS_DOCS_SCREENSHOTS") == "1":
        save_png(img, DOCS_SHOTS / f"{docs_name}.png")
    return out
