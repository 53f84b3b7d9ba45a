"""Registration of tissue sections to an atlas (Allen CCFv3 or the demo atlas).

Plain Python, no Qt. Main entry points:

- :func:`register_section` (adata, atlas, plane, position_um, hemisphere, midline, ...)
  -> :class:`RegistrationResult` (JSON-serialisable);
- :func:`apply_registration` (adata, result, atlas) -> AnnData with obsm['ccf_coords'],
  obs['ccf_id'], obs['ccf_acronym'], uns['ccf_registration'];
- :func:`registration_metrics`, :func:`series_positions`, :func:`sample_section`.

Modules: boundary (outlines), anchors (midline frame, four anchors), affine, icp,
core (one section to one template slice), position (position / angle search, ordered
series), labelfit (in-plane fit with region labels as interior landmarks; joint search of
the plane and the in-plane fit), quick_search (the quick plane search: label proposals
alternating with label fits), nonlinear (thin-plate refinement), metrics, synthetic (sections cut from an
atlas with their truth), cli (``napari-brainatlas register`` and ``register-series``).
"""

from .api import RegistrationCancelled, RegistrationResult, apply_registration, register_section
from .metrics import CCF_MAJOR_DIVISIONS, registration_metrics
from .position import series_positions
from .synthetic import sample_section

__all__ = [
    "CCF_MAJOR_DIVISIONS",
    "RegistrationCancelled",
    "RegistrationResult",
    "apply_registration",
    "register_section",
    "registration_metrics",
    "sample_section",
    "series_positions",
]
