"""Gene modules from the FuseMap gene embedding, hub genes, a gene UMAP, module scores.

The paper groups every gene of the universal gene embedding into modules (13 for its
26,665 genes, Fig. 4k), marks hub genes on a UMAP of the embedding, and uses the modules
to design panels (:mod:`.panels`). Here:

1. **Graph**: each gene's ``n_neighbors`` (15) nearest genes by cosine similarity of
   their embedding rows; edge weight = cosine similarity (negative ones dropped),
   symmetrised by the maximum of the two directions.
2. **Modules**: Leiden (leidenalg, RBConfiguration, weighted, seeded) on that graph,
   renumbered 1..K by size (module 1 the largest).
3. **Resolution** (``resolution="auto"``, the default): Leiden runs at every resolution
   of the grid :data:`RESOLUTIONS` and the partition with the highest standard
   modularity (Newman's Q at resolution 1, weighted) is kept, among the partitions whose
   every module has at least ``min_module_size`` genes (default ``max(5, n_genes //
   40)``: no splinter modules; when none qualifies, among all). Why this rule: the
   finest partition without small modules over-splits modules of unequal size (planted
   modules of 8-60 genes: adjusted Rand 0.60-0.65 against 0.90 for the modularity rule,
   benchmarks/analyses/NOTES.md), while modularity does not grow with the number of
   modules. ``n_modules=K`` instead searches the resolution that gives K modules (the
   closest count found; the paper has 13); a number sets the resolution as is.
4. **Hub genes**: ``hub_score`` = intramodular connectivity (sum of a gene's edge weights
   to genes of its own module, WGCNA's kIN) divided by the module's largest, in [0, 1];
   ``centrality`` = cosine similarity of the gene to its module's mean direction (the
   analogue of WGCNA's module membership kME). The ``n_hubs`` (3) genes of each module with
   the highest hub score (ties: centrality) are its hubs (``is_hub``).
5. **UMAP**: 2-D UMAP of the embedding (cosine metric, seeded) for the gene map.

Module scores (:func:`score_modules`): for each cell, the mean over a module's genes of
the gene's standardised expression (z-score over the section's cells). Measured genes
use the section's model-input values (normalised, log1p, scaled as FuseMap reads them);
module genes the section did not measure come from the decoder, ``max(z_C E^T, 0)``
(what ``FuseMap.impute`` returns), from the section's ``obsm['X_fusemap_cell']`` or,
for a section the model holds, the model's own cell embedding. Written to
``obs['module_<k>_score']`` (float32; cells the preprocessing drops get 0, the mean) and
``uns['gene_modules']`` (keys, per-module counts of measured and imputed genes).

Files (:meth:`GeneModules.save`): ``modules.csv`` (gene, module, hub_score, centrality,
is_hub, umap_x, umap_y) and ``modules.json`` (the settings and the resolution used),
written atomically next to a model's files; FuseMap's own files are never touched.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .. import jobs
from .._errors import BrainAtlasInputError

__all__ = [
    "MODULES_CSV",
    "MODULES_JSON",
    "RESOLUTIONS",
    "SCORE_KEY",
    "GeneModules",
    "gene_embedding_from",
    "gene_modules",
    "score_key",
    "score_modules",
]

MODULES_CSV = "modules.csv"
MODULES_JSON = "modules.json"
#: Leiden resolutions tried by ``resolution="auto"``
RESOLUTIONS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0)
#: ``obs`` column of module k's score: ``SCORE_KEY.format(k=k)``
SCORE_KEY = "module_{k}_score"


def score_key(k: int, prefix: str = "module_") -> str:
    """The obs column name of module ``k``'s score (``module_<k>_score``)."""
    return f"{prefix}{int(k)}_score"


def gene_embedding_from(source) -> pd.DataFrame:
    """The gene embedding (genes x k) of a FuseMap, a QueryMapping, a model folder, or a
    DataFrame given as is."""
    if isinstance(source, pd.DataFrame):
        E = source
    elif isinstance(source, (str, Path)):
        from ..fusemap import FuseMap

        p = Path(source)
        if not (p.is_dir() and (p / "config.json").is_file()):
            raise BrainAtlasInputError(f"{p} is not a model folder (no config.json)")
        E = FuseMap.load(p, device="cpu").gene_embedding()
    elif hasattr(source, "gene_embedding") and callable(source.gene_embedding):
        E = source.gene_embedding()
    else:
        raise BrainAtlasInputError("give a FuseMap model, a model folder or a gene embedding")
    E = E.copy()
    E.index = pd.Index([str(g).strip().upper() for g in E.index], name="gene")
    E = E[~E.index.duplicated()]
    if E.shape[0] == 0 or E.shape[1] == 0:
        raise BrainAtlasInputError("the gene embedding is empty")
    return E


@dataclass
class GeneModules:
    """Gene modules of a gene embedding (see the module docstring).

    table : DataFrame indexed by gene: module (1..K), hub_score, centrality, is_hub,
        umap_x, umap_y.
    resolution : the Leiden resolution used.
    params : the options (n_neighbors, min_module_size, seed ...).
    """

    table: pd.DataFrame
    resolution: float
    params: dict = field(default_factory=dict)

    @property
    def n_modules(self) -> int:
        return int(self.table["module"].max()) if len(self.table) else 0

    @property
    def genes(self) -> list[str]:
        return list(self.table.index)

    def sizes(self) -> pd.Series:
        """Genes per module (index 1..K)."""
        return self.table["module"].value_counts().sort_index()

    def members(self, k: int) -> list[str]:
        """The genes of module ``k``, hubs first (by hub score)."""
        t = self.table[self.table["module"] == int(k)]
        return list(t.sort_values(["hub_score", "centrality"], ascending=False).index)

    def hubs(self) -> dict[int, list[str]]:
        """Module -> its hub genes (highest hub score first)."""
        out = {}
        for k in range(1, self.n_modules + 1):
            t = self.table[(self.table["module"] == k) & self.table["is_hub"]]
            out[k] = list(t.sort_values("hub_score", ascending=False).index)
        return out

    def module_of(self) -> pd.Series:
        return self.table["module"]

    def save(self, folder: str | Path) -> Path:
        """Write ``modules.csv`` and ``modules.json`` into ``folder`` (atomically; the
        folder is created; other files in it are left alone). Returns the csv path."""
        from ..io import atomic_write_text

        out = Path(folder)
        if out.exists() and not out.is_dir():
            raise BrainAtlasInputError(f"{out} exists and is not a folder")
        out.mkdir(parents=True, exist_ok=True)
        t = self.table.reset_index().rename(columns={"index": "gene"})
        atomic_write_text(t.to_csv(index=False), out / MODULES_CSV)
        meta = dict(self.params, resolution=float(self.resolution), n_modules=self.n_modules)
        atomic_write_text(json.dumps(meta, indent=1), out / MODULES_JSON)
        return out / MODULES_CSV

    @classmethod
    def load(cls, folder: str | Path) -> GeneModules:
        """Read what :meth:`save` wrote."""
        p = Path(folder)
        csv = p / MODULES_CSV if p.is_dir() else p
        try:
            t = pd.read_csv(csv)
        except (OSError, ValueError) as exc:
            raise BrainAtlasInputError(f"cannot read gene modules from {csv}: {exc}") from exc
        need = {"gene", "module", "hub_score", "centrality", "is_hub", "umap_x", "umap_y"}
        if not need <= set(t.columns):
            raise BrainAtlasInputError(f"{csv} is not a modules table (columns {sorted(need)})")
        t = t.set_index("gene")
        t["is_hub"] = t["is_hub"].astype(bool)
        meta_p = csv.with_name(MODULES_JSON)
        meta = json.loads(meta_p.read_text()) if meta_p.is_file() else {}
        res = float(meta.pop("resolution", float("nan")))
        meta.pop("n_modules", None)
        return cls(t, res, meta)


# ------------------------------------------------------------------------ graph + Leiden
def _knn_graph(U: np.ndarray, k: int) -> sp.csr_matrix:
    """Symmetric kNN graph of unit rows, weights = cosine similarity (>= 0)."""
    n = U.shape[0]
    k = int(min(k, n - 1))
    S = U @ U.T if n <= 6000 else None
    rows, cols, vals = [], [], []
    step = 2048
    for i0 in range(0, n, step):
        blk = S[i0 : i0 + step] if S is not None else U[i0 : i0 + step] @ U.T
        blk = blk.copy()
        blk[np.arange(len(blk)), np.arange(i0, i0 + len(blk))] = -np.inf
        nb = np.argpartition(-blk, k - 1, axis=1)[:, :k]
        rows.append(np.repeat(np.arange(i0, i0 + len(blk)), k))
        cols.append(nb.ravel())
        vals.append(np.take_along_axis(blk, nb, 1).ravel())
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    v = np.maximum(v, 0.0)
    W = sp.csr_matrix((v, (r, c)), shape=(n, n))
    W = W.maximum(W.T).tocsr()
    W.eliminate_zeros()
    return W


def _igraph(W: sp.csr_matrix):
    import igraph as ig

    Wu = sp.triu(W, k=1).tocoo()
    g = ig.Graph(n=W.shape[0], edges=np.column_stack([Wu.row, Wu.col]).tolist())
    g.es["weight"] = Wu.data.tolist()
    return g


def _leiden(g, resolution: float, seed: int) -> np.ndarray:
    import leidenalg

    part = leidenalg.find_partition(
        g,
        leidenalg.RBConfigurationVertexPartition,
        weights="weight",
        resolution_parameter=float(resolution),
        seed=int(seed),
        n_iterations=-1,
    )
    lab = np.asarray(part.membership)
    # renumber 1..K by size (largest first), ties by first member
    sizes = np.bincount(lab)
    first = np.full(len(sizes), len(lab))
    np.minimum.at(first, lab, np.arange(len(lab)))
    order = np.lexsort((first, -sizes))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[lab] + 1


def _choose(g, res, n_modules, min_size, seed, progress, cancel) -> tuple[float, np.ndarray]:
    if n_modules is not None:
        return _search_count(g, int(n_modules), seed, cancel)
    if res != "auto":
        try:
            r = float(res)
        except (TypeError, ValueError):
            raise BrainAtlasInputError(
                f"resolution must be a number or 'auto', not {res!r}"
            ) from None
        if not (np.isfinite(r) and r > 0):
            raise BrainAtlasInputError("the Leiden resolution must be a positive number")
        return r, _leiden(g, r, seed)
    # the partition of highest standard modularity (gamma = 1) among those whose every
    # module has min_size genes (else among all)
    best, best_ok = None, None
    for i, r in enumerate(RESOLUTIONS):
        jobs.check_cancel(cancel)
        lab = _leiden(g, r, seed)
        q = g.modularity((lab - 1).tolist(), weights="weight")
        jobs.report(progress, i + 1, len(RESOLUTIONS) + 2, phase="resolution", resolution=r)
        if best is None or q > best[0] + 1e-9:
            best = (q, r, lab)
        if np.bincount(lab)[1:].min() >= min_size and (best_ok is None or q > best_ok[0] + 1e-9):
            best_ok = (q, r, lab)
    q, r, lab = best_ok or best
    return r, lab


def _search_count(g, target: int, seed: int, cancel) -> tuple[float, np.ndarray]:
    if target < 1 or target > g.vcount():
        raise BrainAtlasInputError(f"n_modules must be between 1 and {g.vcount()} (the genes)")
    lo, hi = math.log(1e-3), math.log(50.0)
    best = None
    for _ in range(24):
        jobs.check_cancel(cancel)
        r = math.exp(0.5 * (lo + hi))
        lab = _leiden(g, r, seed)
        k = int(lab.max())
        if best is None or abs(k - target) < abs(best[1].max() - target):
            best = (r, lab)
        if k == target:
            break
        if k < target:
            lo = math.log(r)
        else:
            hi = math.log(r)
    return best


def _hub_scores(W: sp.csr_matrix, U: np.ndarray, lab: np.ndarray, n_hubs: int) -> pd.DataFrame:
    Wc = W.tocoo()
    same = lab[Wc.row] == lab[Wc.col]
    kin = np.bincount(Wc.row[same], weights=Wc.data[same], minlength=len(lab))
    hub = np.zeros(len(lab))
    cen = np.zeros(len(lab))
    is_hub = np.zeros(len(lab), bool)
    for k in np.unique(lab):
        m = np.flatnonzero(lab == k)
        top = kin[m].max()
        hub[m] = kin[m] / top if top > 0 else 1.0
        c = U[m].mean(0)
        nc = np.linalg.norm(c)
        cen[m] = U[m] @ (c / nc) if nc > 0 else 0.0
        order = np.lexsort((-cen[m], -hub[m]))[: max(0, int(n_hubs))]
        is_hub[m[order]] = True
    return pd.DataFrame({"hub_score": hub, "centrality": cen, "is_hub": is_hub})


def _umap(U: np.ndarray, n_neighbors: int, seed: int) -> np.ndarray:
    n = U.shape[0]
    if n < 4:
        return np.zeros((n, 2))
    import umap

    reducer = umap.UMAP(
        n_neighbors=int(min(n_neighbors, n - 1)),
        n_components=2,
        metric="cosine",
        min_dist=0.3,
        random_state=int(seed),
        n_jobs=1,
        init="spectral" if n > 10 else "random",
    )
    out = reducer.fit_transform(U)
    return np.nan_to_num(np.asarray(out, np.float64))


def gene_modules(
    source,
    *,
    genes=None,
    n_neighbors: int = 15,
    resolution: float | str = "auto",
    n_modules: int | None = None,
    min_module_size: int | None = None,
    n_hubs: int = 3,
    umap: bool = True,
    seed: int = 0,
    progress=None,
    cancel=None,
) -> GeneModules:
    """Gene modules, hub genes and a gene UMAP from a gene embedding.

    source : FuseMap, QueryMapping, model folder path, or a genes x k DataFrame.
    genes : restrict to these genes (default: every gene of the embedding).
    n_neighbors : neighbours per gene in the cosine kNN graph (15).
    resolution : Leiden resolution, or "auto" (the rule in the module docstring).
    n_modules : instead of a resolution, the number of modules wanted (searched).
    min_module_size : the "auto" rule's smallest acceptable module (default
        ``max(5, n_genes // 40)``).
    n_hubs : hub genes flagged per module (3).
    umap : compute the 2-D gene UMAP (else umap_x / umap_y are 0).
    progress, cancel : the :mod:`napari_brainatlas.jobs` protocol.
    """
    E = gene_embedding_from(source)
    if genes is not None:
        want = [str(g).strip().upper() for g in genes]
        missing = [g for g in want if g not in E.index]
        if missing:
            raise BrainAtlasInputError(
                f"gene(s) not in the gene embedding: {', '.join(missing[:5])}"
                + (" ..." if len(missing) > 5 else "")
            )
        E = E.loc[list(dict.fromkeys(want))]
    X = E.to_numpy(np.float64)
    ok = np.isfinite(X).all(1) & (np.linalg.norm(X, axis=1) > 0)
    E, X = E[ok], X[ok]
    n = X.shape[0]
    if n < 3:
        raise BrainAtlasInputError(f"gene modules need at least 3 genes, not {n}")
    if int(n_neighbors) < 1:
        raise BrainAtlasInputError("n_neighbors must be at least 1")
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    min_size = int(min_module_size) if min_module_size is not None else max(5, n // 40)
    W = _knn_graph(U, int(n_neighbors))
    jobs.check_cancel(cancel)
    res, lab = _choose(_igraph(W), resolution, n_modules, min_size, seed, progress, cancel)
    hubs = _hub_scores(W, U, lab, n_hubs)
    jobs.check_cancel(cancel)
    xy = _umap(U, n_neighbors, seed) if umap else np.zeros((n, 2))
    jobs.report(progress, len(RESOLUTIONS) + 2, len(RESOLUTIONS) + 2, phase="umap")
    table = pd.DataFrame(
        {
            "module": lab.astype(np.int64),
            "hub_score": hubs["hub_score"].to_numpy(),
            "centrality": hubs["centrality"].to_numpy(),
            "is_hub": hubs["is_hub"].to_numpy(),
            "umap_x": xy[:, 0],
            "umap_y": xy[:, 1],
        },
        index=pd.Index(E.index, name="gene"),
    )
    params = {
        "n_neighbors": int(n_neighbors),
        "resolution_rule": "auto"
        if (resolution == "auto" and n_modules is None)
        else ("n_modules" if n_modules is not None else "given"),
        "min_module_size": min_size,
        "n_modules_asked": None if n_modules is None else int(n_modules),
        "n_hubs": int(n_hubs),
        "seed": int(seed),
        "n_genes": int(n),
    }
    return GeneModules(table, float(res), params)


# ------------------------------------------------------------------------ module scores
def _as_modules(modules) -> pd.Series:
    if isinstance(modules, GeneModules):
        s = modules.module_of()
    elif isinstance(modules, pd.Series):
        s = modules
    elif isinstance(modules, dict):
        s = pd.Series({g: k for k, gs in modules.items() for g in gs})
    else:
        raise BrainAtlasInputError("give gene modules (GeneModules, a Series or a dict)")
    s = s.copy()
    s.index = [str(g).strip().upper() for g in s.index]
    return s


def _cell_embedding(adata: AnnData, model) -> np.ndarray | None:
    from ..fusemap import CELL_KEY

    if CELL_KEY in adata.obsm:
        return np.asarray(adata.obsm[CELL_KEY], np.float32)
    for i, a in enumerate(getattr(model, "adatas", None) or []):
        if a is adata:
            return model.get_latent_representation("cell", i)
    return None


def _zscore(M: np.ndarray) -> np.ndarray:
    mu = M.mean(0)
    sd = M.std(0)
    return np.divide(M - mu, sd, out=np.zeros_like(M), where=sd > 1e-12)


def score_modules(
    adata: AnnData,
    modules,
    *,
    model=None,
    key_prefix: str = "module_",
) -> dict[int, str]:
    """Per-cell module scores written to ``obs['<key_prefix><k>_score']``.

    adata : a section (counts in ``layers['counts']`` or ``X``; see the module docstring).
    modules : :class:`GeneModules` (or a gene -> module Series / module -> genes dict).
    model : FuseMap / QueryMapping / gene embedding DataFrame, for module genes the
        section did not measure (decoded from the section's cell embedding); without it
        (or without a cell embedding) a module is scored from its measured genes only.
    Returns {module: obs key}; modules with no measured and no decodable gene get no key
    (listed in ``uns['gene_modules']['not_scored']``).
    """
    from ..fusemap import preprocess_section

    mod = _as_modules(modules)
    p = preprocess_section(adata, "scores")
    if p.n_cells == 0:
        raise BrainAtlasInputError("the section has no cell with more than 5 counts")
    Xm = p.X.toarray() if sp.issparse(p.X) else np.asarray(p.X)
    col = {g: j for j, g in enumerate(p.genes)}
    Z = _cell_embedding(adata, model) if model is not None else None
    E = gene_embedding_from(model) if Z is not None else None
    rows = p.kept
    if Z is not None:
        Z = Z[rows]
        ok = np.isfinite(Z).all(1)
        Z = np.where(ok[:, None], Z, 0.0)
    keys, n_meas, n_imp, skipped = {}, {}, {}, []
    for k in sorted(pd.unique(mod.to_numpy())):
        genes = list(mod.index[mod.to_numpy() == k])
        meas = [g for g in genes if g in col]
        imp = [g for g in genes if g not in col and E is not None and g in E.index]
        parts = []
        if meas:
            parts.append(Xm[:, [col[g] for g in meas]].astype(np.float64))
        if imp:
            parts.append(np.maximum(Z @ E.loc[imp].to_numpy(np.float64).T, 0.0))
        if not parts:
            skipped.append(int(k))
            continue
        score = _zscore(np.hstack(parts)).mean(1)
        full = np.zeros(adata.n_obs, np.float32)
        full[rows] = np.nan_to_num(score, nan=0.0, posinf=0.0, neginf=0.0)
        key = score_key(int(k), key_prefix)
        adata.obs[key] = full
        keys[int(k)] = key
        n_meas[str(int(k))] = len(meas)
        n_imp[str(int(k))] = len(imp)
    if not keys:
        raise BrainAtlasInputError(
            "no module gene is measured in the section and none can be decoded "
            "(give the model and a section with a FuseMap cell embedding)"
        )
    adata.uns["gene_modules"] = {
        "keys": [keys[k] for k in sorted(keys)],
        "n_measured": n_meas,
        "n_imputed": n_imp,
        "not_scored": skipped,
        "imputation": "decoder max(z_C E^T, 0)" if E is not None else "none",
    }
    return keys
