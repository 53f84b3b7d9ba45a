"""Deprecated name of :mod:`napari_brainatlas.ahba` (renamed in 0.2; this alias goes in 0.3)."""

import warnings

from ..ahba import *  # noqa: F403
from ..ahba import __all__  # noqa: F401

warnings.warn(
    "napari_brainatlas.human is now napari_brainatlas.ahba; import from there",
    DeprecationWarning,
    stacklevel=2,
)
