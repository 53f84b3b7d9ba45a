"""Registration of tissue sections to an atlas (Allen CCFv3 or the demo atlas).

Plain Python, no Qt. Main entry points:

- :func:`register_section` (adata, atlas, plane, position_um, hemisphere, midline, ...)
  -> :class:`RegistrationResult` (JSON-serialisable);
- :func:`apply_registration` (adata, result, atlas) -> AnnData with obsm['ccf_coords'],
  obs['ccf_id'], obs['ccf_acronym'], uns['ccf_registration'];
- :func:`registration_metrics`, :func:`series_positions`, :func:`sample_section`.

Every setting is a field of :class:`RegistrationSettings` (settings.py), passed
explicitly; vary one with ``dataclasses.replace``.

The method, stage by stage (``register_section`` in pipeline.py calls them in order):

- section.py: prepare the input (checks, outline, labels) -> a ``Section`` context;
- position.py: the position, given or scanned (and the label plane proposals);
- start_fit.py: the outline fit at the given plane (outline_fit.py) and the global
  label starts for torn tissue (label_starts.py);
- plane_search.py: the plane search, joint (joint_search.py) or quick (quick_search.py);
- finish.py: the label refit and polynomial warp, area refinement (refine.py),
  thin-plate refinement (nonlinear.py);
- scoring.py: metrics (metrics.py) and confidence; result.py: ``RegistrationResult``
  and ``apply_registration``.

Pieces: boundary (outlines), anchors (midline frame, four anchors), affine, icp,
template (template slices), slices (atlas slices, cached), labelfit (the in-plane fit
with region labels, the label warp, the plane score), synthetic (sections cut from an
atlas with their truth), state (per-section JSON state files), cli
(``napari-brainatlas register`` and ``register-series``). api.py re-exports the entry
points for earlier imports.
"""

from .icp import RegistrationCancelled
from .metrics import CCF_MAJOR_DIVISIONS, registration_metrics
from .pipeline import register_section
from .position import series_positions
from .result import RegistrationResult, apply_registration
from .scoring import confidence_score
from .settings import RegistrationSettings
from .synthetic import sample_section

__all__ = [
    "CCF_MAJOR_DIVISIONS",
    "RegistrationCancelled",
    "RegistrationResult",
    "RegistrationSettings",
    "apply_registration",
    "confidence_score",
    "register_section",
    "registration_metrics",
    "sample_section",
    "series_positions",
]
