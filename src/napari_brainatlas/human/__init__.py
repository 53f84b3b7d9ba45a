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
    AHBAResult,
    IQR_NORMAL,
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
    "DONOR_FILES", "Donor", "read_donor", "read_ahba_donor", "donor_to_anndata",
    "find_donor_dirs", "read_reannotation", "read_corrected_mni", "update_mni_coords",
    "sample_structure_info", "fetch_ahba", "resolve_donors", "AHBA_DONORS", "AHBA_URL",
    "Parcellation", "read_parcellation", "paint_parcellation", "parcellation_values",
    "AHBAResult", "process_ahba", "iter_process_ahba", "srs", "reannotate_probes",
    "filter_probes", "differential_stability", "select_probes", "match_samples",
    "drop_mismatched_samples", "IQR_NORMAL",
]
