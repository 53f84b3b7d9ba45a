"""Connectivity-aware brain domains (SpaCon-style), plain Python + torch, no Qt.

- :mod:`.connectome`: :class:`Connectome`, :func:`read_oh2014` (Oh et al. 2014
  W_ipsi / W_contra workbook), :func:`demo_connectome`, :func:`map_cells` (ontology walk-up
  to matrix regions, hemisphere from the CCF ML coordinate);
- :mod:`.graphs`: spatial kNN graph and sparsified connectivity graph (edge lists);
- :mod:`.model`: :class:`GATLayer` (edge-index scatter attention), :class:`SpaConNet`;
- :mod:`.spacon`: :func:`prepare`, :class:`SpaConModel` (the shared model protocol:
  ``train`` with neighbour-sampled mini-batches, ``save`` / ``load``; ``mix(alpha)``,
  ``domains(alpha)`` without retraining; options :class:`SpaConSettings`),
  :func:`leiden_domains`, :func:`write_results`; :func:`train` (deprecated free function);
- :mod:`.predict`: cross-validated ridge prediction of W rows from region expression;
- :mod:`.cli`: ``napari-brainatlas domains``.
"""

from .connectome import (
    Connectome,
    demo_connectome,
    load_connectome,
    map_cells,
    map_structures,
    read_oh2014,
)
from .model import GATLayer, SpaConNet, mix_weight
from .predict import predict_connectivity, ridge_cv_r2
from .settings import SpaConSettings
from .spacon import (
    SpaCon,
    SpaConData,
    SpaConModel,
    TrainingCancelled,
    leiden_domains,
    prepare,
    prepare_arrays,
    train,
    write_results,
)

__all__ = [
    "Connectome",
    "GATLayer",
    "SpaCon",
    "SpaConData",
    "SpaConModel",
    "SpaConNet",
    "SpaConSettings",
    "TrainingCancelled",
    "demo_connectome",
    "leiden_domains",
    "load_connectome",
    "map_cells",
    "map_structures",
    "mix_weight",
    "predict_connectivity",
    "prepare",
    "prepare_arrays",
    "read_oh2014",
    "ridge_cv_r2",
    "train",
    "write_results",
]
