"""Atlas analyses of the FuseMap paper (engine: no Qt / napari imports; the file-to-file
tasks the CLI and docks call are in :mod:`napari_brainatlas.workflows.analyses`).

* :mod:`.modules` - gene modules from the gene embedding (cosine kNN graph + Leiden), hub
  genes, a gene UMAP, per-cell module scores (``obs['module_<k>_score']``), saved as
  ``modules.csv`` / ``modules.json`` in a model folder.
* :mod:`.panels` - targeted gene panels spread evenly over modules, most variable first;
  top-HVG and random panels for comparison.
* :mod:`.proximity` - region-specific cell-cell proximity: pairs within 30 um against
  random shifts of the cells within 100 um, z-scores, empirical p, Benjamini-Hochberg.
* :mod:`.plots` - gene UMAP and proximity heatmap figures (matplotlib, no GUI backend).
"""

from .modules import GeneModules, gene_embedding_from, gene_modules, score_key, score_modules
from .panels import gene_variability, hvg_panel, random_panel, select_panel
from .proximity import (
    ProximityResult,
    ProximitySettings,
    proximal_pair_cells,
    region_proximity,
)

__all__ = [
    "GeneModules",
    "ProximityResult",
    "ProximitySettings",
    "gene_embedding_from",
    "gene_modules",
    "gene_variability",
    "hvg_panel",
    "proximal_pair_cells",
    "random_panel",
    "region_proximity",
    "score_key",
    "score_modules",
    "select_panel",
]
