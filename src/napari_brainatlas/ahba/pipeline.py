"""AHBA microarray processing with abagen's defaults, re-implemented on numpy/pandas.

Steps (abagen 0.1.3 ``get_expression_data`` defaults; Arnatkeviciute et al. 2019):

1. corrected MNI coordinates replace the SampleAnnot ones where the well_id matches;
2. samples whose ontology hemisphere disagrees with the sign of their MNI x are dropped
   (L needs x < 0, R x > 0, bilateral x == 0);
3. probe re-annotation: probes are renamed to the gene of the re-annotation table (by
   probe_name); probes without a gene are dropped;
4. intensity-based filtering (``ibf_threshold`` 0.5): keep probes above background
   (PACall == 1) in at least that fraction of all samples of all donors;
5. probe selection by differential stability: for every probe, the mean over donor pairs
   of the Spearman correlation between the two donors' expression averaged within AHBA
   structures (structure_id) they share; each gene keeps its most stable probe;
6. sample-to-parcel matching: a sample is matched to the labelled voxels within
   ``tolerance`` mm, trying radii 0, 1, 2 ... mm in turn; only parcels of the sample's
   hemisphere and structure class count (bilateral parcels: structure only); the most
   frequent label among those voxels wins, ties go to the parcel with the closest
   centroid; samples with nothing within ``tolerance`` are dropped;
7. scaled robust sigmoid normalisation of each sample across genes, then of each gene
   across the donor's matched samples: ``x' = 1 / (1 + exp(-(x - median) / (IQR /
   1.349)))`` (1.349 = IQR of a unit normal) then min-max scaled to [0, 1];
8. aggregation: mean of the samples of a parcel within each donor, then mean over
   donors; parcels without samples stay as NaN rows.

:func:`iter_process_ahba` is the same as a generator that yields ``(message,
fraction)`` progress and returns the result (for GUI workers).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import stats
from scipy.spatial import cKDTree
from scipy.special import erfinv

from .._errors import BrainAtlasInputError
from .ahba import (
    Donor,
    find_donor_dirs,
    read_corrected_mni,
    read_donor,
    read_reannotation,
    sample_structure_info,
    update_mni_coords,
)
from .parcellation import Parcellation, read_parcellation

__all__ = [
    "IQR_NORMAL",
    "AHBAResult",
    "differential_stability",
    "drop_mismatched_samples",
    "filter_probes",
    "iter_process_ahba",
    "match_samples",
    "process_ahba",
    "reannotate_probes",
    "select_probes",
    "srs",
]

#: IQR of the standard normal distribution (scipy.stats.iqr(scale="normal"), as abagen)
IQR_NORMAL = float(2 * np.sqrt(2) * erfinv(0.5))


@dataclass
class AHBAResult:
    """What :func:`process_ahba` returns.

    expression : parcels x genes DataFrame (index ``label`` = atlas id), values in [0, 1].
    report : one dict per step: ``step``, ``kept``, ``dropped`` and details.
    counts : parcels x donors number of samples matched.
    samples : AnnData of the matched samples x genes (normalised values),
        ``obsm['spatial_mni']`` (n, 3) mm, obs ``donor``, ``label``, ``region``.
    probes : the selected probe of each gene (index gene_symbol; probe_id,
        probe_name, diff_stability).
    """

    expression: pd.DataFrame
    report: list[dict]
    counts: pd.DataFrame
    samples: AnnData
    probes: pd.DataFrame
    parcellation: Parcellation | None = None
    donors: list[str] = field(default_factory=list)

    def report_text(self) -> str:
        return "\n".join(r["text"] for r in self.report)


# ----------------------------------------------------------------------- steps
def srs(data: np.ndarray, axis: int = 0) -> np.ndarray:
    """Scaled robust sigmoid along ``axis``: sigmoid of (x - median) / (IQR / 1.349), then
    min-max scaled to [0, 1]. A constant vector gives NaN (as abagen); a zero IQR takes
    the limit (0 below the median, 0.5 at it, 1 above) before scaling."""
    x = np.asarray(data, dtype=np.float64)
    med = np.median(x, axis=axis, keepdims=True)
    q75, q25 = np.percentile(x, [75, 25], axis=axis, keepdims=True)
    iqr = (q75 - q25) / IQR_NORMAL
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        z = (x - med) / iqr
        z = np.where(np.isnan(z) & (x == med), 0.0, z)  # 0/0 at the median
        sig = 1.0 / (1.0 + np.exp(-z))
        lo = sig.min(axis=axis, keepdims=True)
        hi = sig.max(axis=axis, keepdims=True)
        return (sig - lo) / (hi - lo)


def reannotate_probes(probes: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Probes (index probe_id, column probe_name) renamed to the re-annotated gene:
    returns index probe_id, columns probe_name, gene_symbol, entrez_id (sorted by probe
    id); probes the table gives no gene are left out."""
    p = probes.reset_index().loc[:, ["probe_id", "probe_name"]]
    p["probe_name"] = p["probe_name"].astype(str)
    merged = p.merge(table, on="probe_name", how="inner")
    merged = merged.dropna(subset=["entrez_id"]).set_index("probe_id").sort_index()
    merged["entrez_id"] = merged["entrez_id"].astype(np.int64)
    return merged.loc[:, ["probe_name", "gene_symbol", "entrez_id"]]


def filter_probes(
    pacalls: Sequence[pd.DataFrame], probe_ids: np.ndarray, threshold: float = 0.5
) -> np.ndarray:
    """Intensity-based filtering: boolean mask over ``probe_ids`` of the probes above
    background (PACall == 1) in at least ``threshold`` of all samples of all donors
    (``pacalls``: probes x samples, only the samples to count)."""
    threshold = float(np.clip(threshold, 0.0, 1.0))
    signal = np.zeros(len(probe_ids), dtype=np.int64)
    n = 0
    for pa in pacalls:
        sub = pa.reindex(probe_ids)
        if sub.isna().to_numpy().any():
            raise BrainAtlasInputError("PACall.csv lacks some probes of Probes.csv")
        signal += (sub.to_numpy() == 1).sum(axis=1)
        n += sub.shape[1]
    if n == 0:
        raise BrainAtlasInputError("no sample is left to filter probes with")
    return (signal / n) >= threshold


def _region_means(expr: pd.DataFrame, regions: np.ndarray) -> pd.DataFrame:
    """probes x regions: mean of the samples (columns of ``expr``) of each region."""
    return expr.T.groupby(np.asarray(regions)).mean().T


def _rowwise_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of every row of ``a`` with the same row of ``b`` (ranks with
    ties averaged, then Pearson); NaN where a row is constant."""
    ra = stats.rankdata(a, axis=1)
    rb = stats.rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    num = (ra * rb).sum(axis=1)
    den = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def differential_stability(
    expression: Sequence[pd.DataFrame], regions: Sequence[np.ndarray]
) -> tuple[np.ndarray, int]:
    """Differential stability of every probe (rows of each donor's probes x samples
    ``expression``, same probe order in all): mean over donor pairs of the Spearman
    correlation of the region-mean expression over the regions the pair shares.

    Returns (DS per probe, number of donor pairs with >= 2 shared regions); NaN for a
    probe with no defined correlation.
    """
    means = [_region_means(e, r) for e, r in zip(expression, regions)]
    corr = []
    for m1, m2 in itertools.combinations(means, 2):
        shared = np.intersect1d(m1.columns.to_numpy(), m2.columns.to_numpy())
        if shared.size < 2:
            continue
        corr.append(_rowwise_spearman(m1[shared].to_numpy(), m2[shared].to_numpy()))
    if not corr:
        return np.full(len(expression[0]), np.nan), 0
    c = np.vstack(corr)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(c)
        ds = np.where(
            ok.any(0), np.nansum(np.where(ok, c, 0), 0) / np.maximum(ok.sum(0), 1), np.nan
        )
    return ds, len(corr)


def select_probes(probe_info: pd.DataFrame, score: np.ndarray) -> pd.DataFrame:
    """For every gene, the probe with the highest ``score`` (ties and all-NaN genes: the
    lowest probe id). ``probe_info``: index probe_id, column gene_symbol."""
    df = probe_info.loc[:, ["gene_symbol"]].copy()
    df.index = pd.RangeIndex(len(df))
    df["score"] = np.asarray(score, float)
    df["probe_id"] = probe_info.index.to_numpy()
    df["_s"] = df["score"].fillna(-np.inf)
    df = df.sort_values(
        ["gene_symbol", "_s", "probe_id"], ascending=[True, False, True], kind="mergesort"
    )
    best = df.drop_duplicates("gene_symbol", keep="first")
    return best.set_index("gene_symbol").loc[:, ["probe_id", "score"]]


def drop_mismatched_samples(annotation: pd.DataFrame) -> np.ndarray:
    """Mask of the samples to keep: ontology hemisphere L needs mni_x < 0, R needs
    mni_x > 0, B (bilateral) needs mni_x == 0 (abagen); samples whose hemisphere is
    unknown are kept."""
    hemi = annotation["hemisphere"].to_numpy(dtype=object)
    x = annotation["mni_x"].to_numpy(float)
    keep = np.ones(len(annotation), dtype=bool)
    known = np.array([h in ("L", "R", "B") for h in hemi])
    ok = ((hemi == "L") & (x < 0)) | ((hemi == "R") & (x > 0)) | ((hemi == "B") & (x == 0))
    keep[known] = ok[known]
    return keep


class _AtlasTree:
    """KD-tree over labelled voxel centres (MNI mm) for the matching step."""

    def __init__(self, parc: Parcellation):
        xyz, lab = parc.voxel_coords()
        self.tree = cKDTree(xyz)
        self.labels = lab.astype(np.int64)
        self.info = parc.info
        self.centroids = {int(k): xyz[lab == k].mean(0) for k in np.unique(lab)}

    def _allowed(self, labels: np.ndarray, hemi, struct) -> np.ndarray:
        """Which candidate labels fit the sample's hemisphere / structure class."""
        ok = np.ones(len(labels), dtype=bool)
        if hemi is None and struct is None:
            return ok
        for i, lab in enumerate(labels):
            if lab not in self.info.index:
                continue
            h, s = self.info.at[lab, "hemisphere"], self.info.at[lab, "structure"]
            if struct is not None and s is not None and s != struct:
                ok[i] = False
            if h is not None and h != "B" and hemi is not None and h != hemi:
                ok[i] = False
        return ok

    def assign(self, xyz, hemi, struct, radius: float) -> int:
        idx = self.tree.query_ball_point(xyz, radius)
        if not idx:
            return 0
        cand = self.labels[idx]
        labs, counts = np.unique(cand, return_counts=True)
        keep = self._allowed(labs, hemi, struct)
        labs, counts = labs[keep], counts[keep]
        if labs.size == 0:
            return 0
        best = np.flatnonzero(counts == counts.max())
        if best.size == 1:
            return int(labs[best[0]])
        d = [np.linalg.norm(self.centroids[int(labs[b])] - xyz) for b in best]
        return int(labs[best[int(np.argmin(d))]])


def match_samples(
    annotation: pd.DataFrame,
    parc: Parcellation,
    tolerance: float = 2.0,
    tree: _AtlasTree | None = None,
) -> np.ndarray:
    """Parcel label of every sample (0 = unmatched), searching radii 0, 1, 2 ... up to
    ``tolerance`` mm around the sample (see module docstring)."""
    tree = tree or _AtlasTree(parc)
    xyz = annotation[["mni_x", "mni_y", "mni_z"]].to_numpy(float)
    hemi = (
        annotation["hemisphere"].to_numpy(dtype=object)
        if "hemisphere" in annotation
        else [None] * len(xyz)
    )
    struct = (
        annotation["structure"].to_numpy(dtype=object)
        if "structure" in annotation
        else [None] * len(xyz)
    )
    out = np.zeros(len(xyz), dtype=np.int64)
    radii = list(np.arange(0, np.floor(tolerance) + 1, 1.0))
    if tolerance not in radii:
        radii.append(float(tolerance))
    for i in range(len(xyz)):
        for r in radii:
            lab = tree.assign(xyz[i], hemi[i], struct[i], r)
            if lab:
                out[i] = lab
                break
    return out


# ----------------------------------------------------------------------- pipeline
def _record(report: list, step: str, text: str, **details) -> None:
    report.append({"step": step, "text": text, **details})


def iter_process_ahba(
    donors: Sequence,
    atlas: str | Path | Parcellation,
    reannotated: str | Path | pd.DataFrame,
    atlas_info=None,
    corrected_mni: str | Path | pd.DataFrame | None = None,
    ibf_threshold: float = 0.5,
    tolerance: float = 2.0,
    norm_matched: bool = True,
) -> Iterator[tuple[str, float]]:
    """Generator form of :func:`process_ahba`: yields ``(message, fraction)`` and returns
    the :class:`AHBAResult` (``StopIteration.value``). Each step below is one of the
    module docstring's."""
    report: list[dict] = []
    parc, table, corrected = _read_tables(atlas, reannotated, atlas_info, corrected_mni)
    paths = [d for d in donors if not isinstance(d, Donor)]
    given = [d for d in donors if isinstance(d, Donor)]
    dirs = find_donor_dirs(paths) if paths else []
    n_total = len(dirs) + len(given)
    if n_total == 0:
        raise BrainAtlasInputError("give at least one AHBA donor folder")
    # steps 1-2: annotations + PACall (small), corrected coordinates, mismatched samples
    dons = yield from _read_pacalls(dirs, given, n_total)
    annots, kept_samples = _check_samples(dons, corrected, report)
    yield "re-annotating probes", 0.25  # step 3
    info = _reannotate(dons[0].probes, table, report)
    yield "intensity-based filtering", 0.3  # step 4
    info = _intensity_filter(dons, kept_samples, info, ibf_threshold, report)
    # expression (one donor at a time, only kept probes and samples)
    exprs = yield from _read_expression(dons, kept_samples, info, n_total)
    annots = [
        a.iloc[np.flatnonzero(k)].reset_index(drop=True) for a, k in zip(annots, kept_samples)
    ]
    yield "probe selection (differential stability)", 0.75  # step 5
    sel, gexpr = _choose_probes(exprs, annots, info, report)
    yield "matching samples to parcels", 0.8  # step 6
    labels = _match_donors(dons, annots, parc, tolerance, report)
    yield "normalising (scaled robust sigmoid)", 0.88  # step 7
    all_labels = np.union1d(parc.labels, parc.info.index.to_numpy())
    all_labels = all_labels[all_labels != 0]
    norm = _normalise(dons, annots, gexpr, labels, all_labels, norm_matched)
    per_donor, counts, sample_tables, sample_obs = norm
    yield "aggregating parcels", 0.95  # step 8
    genes = sel.index.to_numpy()
    expression = _aggregate(per_donor, all_labels, genes, report)
    counts_df = pd.DataFrame(counts, index=pd.Index(all_labels, name="label"))
    samples = _samples_anndata(sample_tables, sample_obs, genes, parc)
    yield "done", 1.0
    return AHBAResult(
        expression=expression,
        report=report,
        counts=counts_df,
        samples=samples,
        probes=sel,
        parcellation=parc,
        donors=[d.name for d in dons],
    )


def _read_tables(atlas, reannotated, atlas_info, corrected_mni):
    """The parcellation, the re-annotation table and the corrected MNI coordinates
    (None when not given), each read unless given as the object."""
    if isinstance(atlas, Parcellation):
        parc = atlas
    else:
        parc = read_parcellation(atlas, atlas_info)
    table = reannotated if isinstance(reannotated, pd.DataFrame) else read_reannotation(reannotated)
    corrected = None
    if corrected_mni is not None:
        corrected = (
            corrected_mni
            if isinstance(corrected_mni, pd.DataFrame)
            else read_corrected_mni(corrected_mni)
        )
    return parc, table, corrected


def _read_pacalls(dirs, given, n_total: int):
    """Generator: the donors (``given`` ones, then those read from ``dirs`` with PACall,
    without expression), with unique names and the same probes; returns the list."""
    dons: list[Donor] = list(given)
    for k, d in enumerate(dirs):
        yield f"reading PACall of {d.name}", 0.02 + 0.2 * k / n_total
        dons.append(read_donor(d, expression=False, pacall=True))
    names = [d.name for d in dons]
    if len(set(names)) != len(names):
        names = [f"{n}_{i}" for i, n in enumerate(names)]
        for d, n in zip(dons, names):
            d.name = n
    first_probes = dons[0].probes
    for d in dons[1:]:
        if not d.probes.index.equals(first_probes.index):
            raise BrainAtlasInputError(
                f"donors {dons[0].name} and {d.name} list different probes in Probes.csv"
            )
    return dons


def _check_samples(dons, corrected, report: list):
    """Steps 1-2 for every donor: corrected MNI coordinates, structure info, the mask of
    samples whose hemisphere agrees with their MNI x. Returns (annotations, masks)."""
    kept_samples: list[np.ndarray] = []
    annots: list[pd.DataFrame] = []
    for d in dons:
        annot = d.annotation
        n_upd = 0
        if corrected is not None:
            annot, n_upd = update_mni_coords(annot, corrected)
        annot = sample_structure_info(annot, d.ontology)
        keep = drop_mismatched_samples(annot)
        _record(
            report,
            "samples",
            f"donor {d.name}: {len(annot)} samples, {n_upd} with "
            f"corrected MNI coordinates, {int((~keep).sum())} dropped (hemisphere "
            "disagrees with MNI x)",
            donor=d.name,
            n=len(annot),
            corrected=n_upd,
            dropped=int((~keep).sum()),
            kept=int(keep.sum()),
        )
        annots.append(annot)
        kept_samples.append(keep)
    if sum(int(k.sum()) for k in kept_samples) == 0:
        raise BrainAtlasInputError(
            "no sample is left after dropping samples whose "
            "hemisphere disagrees with their MNI coordinates"
        )
    return annots, kept_samples


def _reannotate(first_probes: pd.DataFrame, table: pd.DataFrame, report: list) -> pd.DataFrame:
    """Step 3: the probes that map to a gene (index probe_id; probe_name, gene_symbol)."""
    info = reannotate_probes(first_probes, table)
    _record(
        report,
        "reannotation",
        f"re-annotation: {len(info)} of {len(first_probes)} probes map to a gene",
        kept=len(info),
        dropped=len(first_probes) - len(info),
    )
    if info.empty:
        raise BrainAtlasInputError(
            "no probe of Probes.csv is in the re-annotation table "
            "(is it abagen's reannotated.csv.gz?)"
        )
    return info


def _intensity_filter(dons, kept_samples, info, ibf_threshold: float, report: list):
    """Step 4: the probes above background in ``ibf_threshold`` of the kept samples; the
    donors' PACall tables are released."""
    for d in dons:
        if d.pacall is None:
            raise BrainAtlasInputError(f"donor {d.name} was read without PACall.csv")
    pacalls = [d.pacall.loc[:, np.flatnonzero(k)] for d, k in zip(dons, kept_samples)]
    ibf = filter_probes(pacalls, info.index.to_numpy(), ibf_threshold)
    n_before = len(info)
    info = info.loc[ibf]
    _record(
        report,
        "ibf",
        f"intensity-based filtering (threshold {ibf_threshold:g}): "
        f"{len(info)} of {n_before} probes kept",
        kept=len(info),
        dropped=n_before - len(info),
        threshold=float(ibf_threshold),
    )
    if info.empty:
        raise BrainAtlasInputError(
            f"no probe is above background in {ibf_threshold:.0%} "
            "of the samples; lower the intensity threshold"
        )
    for d in dons:
        d.pacall = None
    return info


def _read_expression(dons, kept_samples, info, n_total: int):
    """Generator: each donor's expression (probes x kept samples, the probes of
    ``info``), read one donor at a time; returns the list."""
    exprs: list[pd.DataFrame] = []
    for k, d in enumerate(dons):
        yield f"reading expression of {d.name}", 0.32 + 0.4 * k / n_total
        if d.microarray is None:
            full = read_donor(d.path, expression=True, pacall=False)
            mic = full.microarray
        else:
            mic = d.microarray
        cols = np.flatnonzero(kept_samples[k])
        exprs.append(mic.reindex(info.index).iloc[:, cols])
        d.microarray = None
        if exprs[-1].isna().to_numpy().any():
            raise BrainAtlasInputError(
                f"MicroarrayExpression.csv of donor {d.name} lacks some probes"
            )
    return exprs


def _choose_probes(exprs, annots, info, report: list):
    """Step 5: each gene's most stable probe (max variance with one donor). Returns the
    selected probes (index gene_symbol) and each donor's genes x samples expression."""
    ds, n_pairs = differential_stability(exprs, [a["structure_id"].to_numpy() for a in annots])
    if n_pairs == 0:
        # one donor (or donors sharing < 2 structures): DS is undefined; fall back to the
        # probe with the highest variance across samples (abagen's max_variance)
        score = pd.concat(exprs, axis=1).std(axis=1, ddof=1).to_numpy()
        how = "max variance (differential stability needs two donors sharing structures)"
    else:
        score = ds
        how = f"differential stability over {n_pairs} donor pair(s)"
    best = select_probes(info, score)
    sel = info.loc[best["probe_id"].to_numpy()].copy()
    sel["diff_stability"] = ds[info.index.get_indexer(best["probe_id"].to_numpy())]
    sel["score"] = best["score"].to_numpy()
    sel = sel.reset_index().set_index("gene_symbol")
    genes = sel.index.to_numpy()
    _record(
        report,
        "probe_selection",
        f"probe selection by {how}: {len(genes)} genes from {len(info)} probes",
        kept=len(genes),
        dropped=len(info) - len(genes),
        method="diff_stability" if n_pairs else "max_variance",
    )
    gexpr = [
        pd.DataFrame(e.loc[sel["probe_id"].to_numpy()].to_numpy(), index=genes) for e in exprs
    ]  # genes x samples
    return sel, gexpr


def _match_donors(dons, annots, parc: Parcellation, tolerance: float, report: list):
    """Step 6: every donor's sample -> parcel labels (0 = unmatched)."""
    tree = _AtlasTree(parc)
    labels = []
    for d, a in zip(dons, annots):
        lab = match_samples(a, parc, tolerance, tree=tree)
        labels.append(lab)
        _record(
            report,
            "matching",
            f"donor {d.name}: {int((lab > 0).sum())} of {len(lab)} "
            f"samples matched to a parcel within {tolerance:g} mm, "
            f"{int((lab == 0).sum())} dropped",
            donor=d.name,
            kept=int((lab > 0).sum()),
            dropped=int((lab == 0).sum()),
            tolerance=float(tolerance),
        )
    if sum(int((lab > 0).sum()) for lab in labels) == 0:
        raise BrainAtlasInputError(
            f"no sample lies within {tolerance:g} mm of a parcel; is the atlas in MNI space?"
        )
    return labels


def _normalise(dons, annots, gexpr, labels, all_labels, norm_matched: bool):
    """Step 7 and the donor half of step 8: per donor the parcel means of the normalised
    matched samples (labels x genes), the parcel sample counts, the normalised matched
    samples and their obs."""
    per_donor, counts, sample_tables, sample_obs = [], {}, [], []
    for d, a, g, lab in zip(dons, annots, gexpr, labels):
        X = g.to_numpy().T  # samples x genes
        matched = lab > 0
        Xs = srs(X, axis=1)  # each sample across genes
        if norm_matched:
            Xn = np.full_like(Xs, np.nan)
            if matched.any():
                Xn[matched] = srs(Xs[matched], axis=0)  # each gene across matched samples
        else:
            Xn = srs(Xs, axis=0)
        Xm, labm = Xn[matched], lab[matched]
        df = pd.DataFrame(Xm, columns=g.index.to_numpy())
        means = df.groupby(labm).mean().reindex(all_labels)
        per_donor.append(means.to_numpy())
        counts[d.name] = (
            pd.Series(labm).value_counts().reindex(all_labels).fillna(0).astype(int).to_numpy()
        )
        sample_tables.append(Xm)
        obs = a.loc[matched].copy()
        obs["donor"] = d.name
        obs["label"] = labm
        sample_obs.append(obs)
    return per_donor, counts, sample_tables, sample_obs


def _aggregate(per_donor, all_labels, genes, report: list) -> pd.DataFrame:
    """Step 8: the mean over donors of their parcel means (parcels without samples NaN)."""
    stack = np.stack(per_donor)  # donors x labels x genes
    with np.errstate(invalid="ignore"):
        have = np.isfinite(stack)
        agg = np.where(
            have.any(0), np.nansum(np.where(have, stack, 0), 0) / np.maximum(have.sum(0), 1), np.nan
        )
    expression = pd.DataFrame(agg, index=pd.Index(all_labels, name="label"), columns=genes)
    empty = expression.index[expression.isna().all(axis=1)].to_numpy()
    _record(
        report,
        "aggregation",
        f"{len(all_labels) - len(empty)} of {len(all_labels)} "
        f"parcels have samples; {len(empty)} stay empty (NaN)",
        kept=int(len(all_labels) - len(empty)),
        dropped=len(empty),
        empty_labels=[int(x) for x in empty],
    )
    return expression


def _samples_anndata(tables, obs_list, genes, parc: Parcellation) -> AnnData:
    obs = pd.concat(obs_list, ignore_index=True)
    X = np.vstack(tables).astype(np.float32) if tables else np.zeros((0, len(genes)), np.float32)
    if "well_id" in obs.columns and obs["well_id"].is_unique:
        names = obs["well_id"].astype(str).to_numpy()
    else:
        names = np.array([f"s{i}" for i in range(len(obs))])
    obs.index = pd.Index(names)
    region_names = parc.names()
    obs["region"] = pd.Categorical([region_names.get(int(v), str(v)) for v in obs["label"]])
    obs["donor"] = pd.Categorical(obs["donor"].astype(str))
    for c in obs.columns:
        if obs[c].dtype == object:
            obs[c] = obs[c].astype(str)
    ad = AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(np.asarray(genes, str))))
    ad.obsm["spatial_mni"] = obs[["mni_x", "mni_y", "mni_z"]].to_numpy(np.float64)
    ad.uns["napari_brainatlas"] = {
        "format": "ahba-processed",
        "coords": "MNI152 mm",
        "atlas": parc.source,
    }
    return ad


def process_ahba(
    donors: Sequence,
    atlas: str | Path | Parcellation,
    reannotated: str | Path | pd.DataFrame,
    atlas_info=None,
    corrected_mni: str | Path | pd.DataFrame | None = None,
    ibf_threshold: float = 0.5,
    tolerance: float = 2.0,
    norm_matched: bool = True,
    progress: Callable[[str, float], None] | None = None,
) -> AHBAResult:
    """Process AHBA donors into a parcel x gene expression table (abagen's defaults).

    Parameters
    ----------
    donors : donor folders (or folders holding donor folders), or :class:`Donor` objects.
    atlas : label NIfTI in MNI space (or a :class:`Parcellation`); ``atlas_info`` its
        label table (id, label, hemisphere, structure).
    reannotated : abagen's ``reannotated.csv.gz`` (path or table).
    corrected_mni : abagen's ``corrected_mni_coordinates.csv.gz`` (recommended).
    ibf_threshold : intensity-based filtering threshold (0.5).
    tolerance : mm a sample may lie outside a parcel and still be matched (2).
    norm_matched : normalise genes across matched samples only (abagen's default).
    progress : ``progress(message, fraction)``.
    """
    gen = iter_process_ahba(
        donors,
        atlas,
        reannotated,
        atlas_info=atlas_info,
        corrected_mni=corrected_mni,
        ibf_threshold=ibf_threshold,
        tolerance=tolerance,
        norm_matched=norm_matched,
    )
    while True:
        try:
            msg, frac = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(msg, frac)
