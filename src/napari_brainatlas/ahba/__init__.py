"""Human brain: Allen Human Brain Atlas microarray (no Qt / napari imports).

* :func:`read_ahba_donor` / :func:`read_donor` - a donor folder in its native format ->
  AnnData (samples x probes/genes, ``obsm['spatial_mni']`` in mm).
* :func:`process_ahba` - abagen's default processing (re-annotation, intensity-based
  filtering, differential stability, matching within 2 mm, SRS normalisation,
  aggregation) -> parcel x gene table and a report of each step.
* :func:`read_parcellation`, :func:`paint_parcellation`, :func:`parcellation_values` - a
  label NIfTI in MNI space painted by a gene's regional values.
* :func:`fetch_ahba` - download the donors from the Allen Brain Map.
"""

from .ahba import (
    DONOR_FILES,
    Donor,
    donor_to_anndata,
    find_donor_dirs,
    read_ahba_donor,
    read_corrected_mni,
    read_donor,
    read_reannotation,
    sample_structure_info,
    update_mni_coords,
)
from .fetch import AHBA_DONORS, AHBA_URL, fetch_ahba, resolve_donors
from .parcellation import Parcellation, paint_parcellation, parcellation_values, read_parcellation
from .pipeline import (
    IQR_NORMAL,
    AHBAResult,
    differential_stability,
    drop_mismatched_samples,
    filter_probes,
    iter_process_ahba,
    match_samples,
    process_ahba,
    reannotate_probes,
    select_probes,
    srs,
)

__all__ = [
    "AHBA_DONORS",
    "AHBA_URL",
    "DONOR_FILES",
    "IQR_NORMAL",
    "AHBAResult",
    "Donor",
    "Parcellation",
    "differential_stability",
    "donor_to_anndata",
    "drop_mismatched_samples",
    "fetch_ahba",
    "filter_probes",
    "find_donor_dirs",
    "iter_process_ahba",
    "match_samples",
    "paint_parcellation",
    "parcellation_values",
    "process_ahba",
    "read_ahba_donor",
    "read_corrected_mni",
    "read_donor",
    "read_parcellation",
    "read_reannotation",
    "reannotate_probes",
    "resolve_donors",
    "sample_structure_info",
    "select_probes",
    "srs",
    "update_mni_coords",
]
