"""Annotation: label transfer from a reference onto query sections, and imputation.

* :func:`map_query` - query sections onto a frozen trained FuseMap (new encoders, new
  gene rows for unseen genes) -> :class:`QueryMapping` (a trainable model of the shared
  protocol, :mod:`napari_brainatlas.models`; options :class:`QueryMappingSettings`).
* :func:`transfer_labels` - obs['<label>_transfer'] and ['<label>_transfer_uncertainty'].
* :func:`impute_genes`, :func:`measured_vs_imputed` - any gene on demand: kNN average of
  reference cells in the shared embedding, or the decoder max(z_C E^T, 0).
* :meth:`QueryMapping.save` / :meth:`QueryMapping.load` - a mapping as a folder.
"""

from .classifier import HierarchicalLabelClassifier, KNNLabelClassifier, MLPLabelClassifier
from .impute import IMPUTED_PREFIX, impute_genes, measured_vs_imputed
from .query import QueryMapping, map_query
from .settings import QueryMappingSettings
from .smoothing import smooth_labels
from .transfer import transfer_labels

__all__ = [
    "IMPUTED_PREFIX",
    "HierarchicalLabelClassifier",
    "KNNLabelClassifier",
    "MLPLabelClassifier",
    "QueryMapping",
    "QueryMappingSettings",
    "impute_genes",
    "map_query",
    "measured_vs_imputed",
    "smooth_labels",
    "transfer_labels",
]
