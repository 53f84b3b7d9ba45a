"""Deprecated name of :mod:`napari_brainatlas.fusemap` (renamed in 0.2; this alias goes in 0.3)."""

import warnings

from ..fusemap import *  # noqa: F403
from ..fusemap import __all__  # noqa: F401

warnings.warn(
    "napari_brainatlas.model is now napari_brainatlas.fusemap; import from there",
    DeprecationWarning,
    stacklevel=2,
)
