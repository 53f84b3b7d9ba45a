"""Earlier home of the registration entry points, kept so that existing imports work
(``from napari_brainatlas.register.api import register_section``). The code lives in
:mod:`.pipeline` (``register_section``), :mod:`.result` (``RegistrationResult``,
``apply_registration``) and :mod:`.scoring` (``confidence_score``); import them from
:mod:`napari_brainatlas.register`."""

from .icp import RegistrationCancelled
from .pipeline import register_section
from .result import RegistrationResult, apply_registration
from .scoring import confidence_score

__all__ = [
    "RegistrationCancelled",
    "RegistrationResult",
    "apply_registration",
    "confidence_score",
    "register_section",
]

import warnings as _warnings

_warnings.warn(
    "napari_brainatlas.register.api is deprecated; import from napari_brainatlas.register",
    DeprecationWarning,
    stacklevel=2,
)
