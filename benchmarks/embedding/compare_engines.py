"""Side-by-side check that the shared model protocol (issue 27) changed no result.

    python benchmarks/embedding/compare_engines.py --base /path/to/tree-before
        [--new /path/to/tree-after] [--epochs 3] [--no-osmfish] [--keep DIR]

Runs the same work in two source trees, each in its own process with
``OMP_NUM_THREADS=1`` and one torch thread, and compares what they produce:

* FuseMap (demo: sections 1-3 of ``make_demo_sections(seed=0, n_sections=4,
  cells_per_mm2=80)``; osmFISH: cells with x <= the 65th percentile, as the annotation
  benchmark splits them): z_C, z_T, the gene embedding and the training history;
* the query mapping of the held-out part (demo section 4 / osmFISH x > 65th pct, a few
  genes hidden as in the annotation benchmark): query z_C, z_T and history;
* ``transfer_labels`` (MLP, regions smoothed): transferred labels and uncertainties;
  ``impute_genes`` (kNN and decoder) of the hidden genes;
* SpaCon on the demo sections registered by their ground truth (demo connectome):
  z_spatial, z_connect, history, Leiden domains at alpha 0.5;
* CellFormer (demo sections; osmFISH): cell latents and history;
* the model folders the *base* tree saved, loaded by the *new* tree (old layouts):
  the same embeddings as the base tree computed.

The base tree runs the old spellings (``train(max_epochs=)``, ``spacon.train(...)``,
keyword options); the new tree runs the new ones (``train(epochs=, progress=,
cancel=)``, settings dataclasses, ``QueryMapping(...).train()``, ``SpaConModel``).
Networks are smaller than the defaults (n_latent 16, n_hidden 128) to keep the run to
minutes on a busy machine; the annotation and embedding benchmarks rerun the defaults.
Prints one table (max |difference| per quantity, labels equal) and exits 1 when a
quantity differs beyond 1e-5 (float tolerance) or a label differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
OSMFISH = "osmfish_codeluppi2018/osmFISH_SScortex_mouse_all_cells.loom"
TOL = 1e-5
SMALL = {"n_latent": 16, "n_hidden": 128, "disc_hidden": 64}
CF = {"d_model": 16, "n_heads": 2, "max_genes": 16, "dim_feedforward": 32, "batch_size": 128}


# ----------------------------------------------------------------------------- data
def upper_panel(a):
    return [g.upper() for g in a.var_names]


def demo_sets():
    from napari_brainatlas.demo import make_demo_sections

    secs = make_demo_sections(seed=0, n_sections=4, cells_per_mm2=80.0)
    refs, q = secs[:3], secs[3]
    ref_genes = set().union(*(upper_panel(a) for a in refs))
    cand = [g for g in upper_panel(q) if g in ref_genes]
    rng = np.random.default_rng(0)
    hidden = sorted(rng.choice(cand, max(4, len(cand) // 4), replace=False).tolist())
    return secs, refs, q, hidden, ["celltype", "region"]


def osmfish_sets(path):
    from napari_brainatlas.io import read_sections

    a = read_sections(path)[0]
    a = a.to_memory() if getattr(a, "isbacked", False) else a
    x = a.obsm["spatial"][:, 0]
    cut = np.percentile(x, 65)
    ref, q = a[x <= cut].copy(), a[x > cut].copy()
    ref.obs["section"] = "osmFISH_reference"
    q.obs["section"] = "osmFISH_query"
    rng = np.random.default_rng(0)
    hidden = sorted(rng.choice(upper_panel(a), 8, replace=False).tolist())
    return [a], [ref], q, hidden, ["ClusterName", "Region"]


def hide(a, hidden):
    keep = [i for i, g in enumerate(a.var_names) if g.upper() not in set(hidden)]
    return a[:, keep].copy()


# ----------------------------------------------------------------------------- worker
class Out:
    """Arrays and JSON values one worker produces."""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}
        self.values: dict = {}

    def add(self, key, value):
        if isinstance(value, np.ndarray):
            self.arrays[key] = value
        else:
            self.values[key] = value

    def write(self, folder: Path):
        np.savez(folder / "arrays.npz", **self.arrays)
        (folder / "values.json").write_text(json.dumps(self.values, default=_plain))


def _plain(v):
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def _history(h):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in h]


def fusemap_part(name, refs, q, hidden, labels, epochs, out, folder, new):
    from napari_brainatlas.annotate import impute_genes, map_query, transfer_labels
    from napari_brainatlas.fusemap import FuseMap

    seen = []
    if new:
        from napari_brainatlas.annotate import QueryMapping, QueryMappingSettings
        from napari_brainatlas.fusemap import FuseMapSettings

        model = FuseMap(refs, settings=FuseMapSettings(**SMALL), seed=0)
        model.train(epochs=epochs, progress=lambda d, t, info: seen.append([d, t]))
        refw = model.write_embeddings()
        mapping = QueryMapping(
            model, [hide(q, hidden)], settings=QueryMappingSettings(epochs=epochs), seed=0
        )
        mapping.train(progress=lambda d, t, info: seen.append([d, t]))
        qw = mapping.write_embeddings()[0]
    else:
        model = FuseMap(refs, seed=0, **SMALL)
        model.train(max_epochs=epochs, progress=lambda d, t, info: seen.append([d, t]))
        refw = model.write_embeddings(copy=True)
        mapping = map_query(
            model,
            [hide(q, hidden)],
            epochs=epochs,
            seed=0,
            progress=lambda d, t, info: seen.append([d, t]),
        )
        qw = mapping.write_embeddings(copy=True)[0]
    for i, a in enumerate(refw):
        out.add(f"{name}/fusemap/z_cell/{i}", np.asarray(a.obsm["X_fusemap_cell"]))
        out.add(f"{name}/fusemap/z_tissue/{i}", np.asarray(a.obsm["X_fusemap_tissue"]))
    out.add(f"{name}/fusemap/gene_embedding", model.gene_embedding().to_numpy())
    out.add(f"{name}/fusemap/history", _history(model.history))
    out.add(f"{name}/query/z_cell", np.asarray(qw.obsm["X_fusemap_cell"]))
    out.add(f"{name}/query/z_tissue", np.asarray(qw.obsm["X_fusemap_tissue"]))
    out.add(f"{name}/query/history", _history(mapping.history))
    out.add(f"{name}/progress calls", seen)
    emb = {
        lab: "X_fusemap_tissue" if "region" in lab.lower() else "X_fusemap_cell" for lab in labels
    }
    res = transfer_labels(
        refw, [qw], labels=labels, embedding=emb, hierarchy={}, smooth_regions=True, seed=0
    )[0]
    for lab in labels:
        out.add(f"{name}/transfer/{lab}", res.obs[f"{lab}_transfer"].astype(str).tolist())
        out.add(
            f"{name}/transfer/{lab}_uncertainty",
            res.obs[f"{lab}_transfer_uncertainty"].to_numpy(np.float64),
        )
    ref_genes = set().union(*(upper_panel(a) for a in refs))
    genes = [g for g in hidden if g in ref_genes]
    for method in ("knn", "decoder"):
        df = impute_genes(mapping, 0, genes, method=method)
        out.add(f"{name}/impute/{method}", df.to_numpy(np.float64))
    model.save(folder / f"{name}_fusemap")
    mapping.save(folder / f"{name}_mapping")


def spacon_part(secs, epochs, out, folder, new):
    from napari_brainatlas.atlas.demo_atlas import demo_ontology
    from napari_brainatlas.domains import demo_connectome, prepare

    reg = []
    for s in secs:
        a = s.copy()
        a.obs["ccf_id"] = a.obs["ccf_id_true"].to_numpy().astype(np.int64)
        a.obs["ccf_acronym"] = a.obs["ccf_acronym_true"].astype(str).to_numpy()
        a.obsm["ccf_coords"] = np.asarray(a.obsm["ccf_coords_true"], float)
        reg.append(a)
    data = prepare(reg, demo_connectome(), demo_ontology())
    if new:
        from napari_brainatlas.domains import SpaConModel

        model = SpaConModel(data, seed=0, batch_size=512, num_threads=1)
        model.train(epochs)
        losses = [h["loss"] for h in model.history]
    else:
        from napari_brainatlas.domains import train

        model = train(data, epochs=epochs, batch_size=512, seed=0, num_threads=1)
        losses = list(model.history)
    out.add("demo/spacon/z_spatial", model.z_spatial)
    out.add("demo/spacon/z_connect", model.z_connect)
    out.add("demo/spacon/loss", losses)
    out.add("demo/spacon/domains", model.domains(0.5, resolution=0.5).tolist())
    model.save(folder / "demo_spacon")


def cellformer_part(name, secs, epochs, out, folder, new):
    from napari_brainatlas.cellformer import CellFormer

    if new:
        from napari_brainatlas.cellformer import CellFormerSettings

        m = CellFormer([a.copy() for a in secs], settings=CellFormerSettings(**CF), seed=0)
        m.train(epochs, progress=lambda d, t, info: None)
        z = np.vstack([a.obsm["X_cellformer"] for a in m.write_embeddings()])
    else:
        m = CellFormer([a.copy() for a in secs], seed=0, **CF)
        m.train(epochs)
        z = m.get_latent_representation(write=False)
    out.add(f"{name}/cellformer/latent", z)
    out.add(f"{name}/cellformer/history", _history(m.history))
    m.save(folder / f"{name}_cellformer")


def worker(folder: Path, epochs: int, osmfish: str | None) -> None:
    import torch

    import napari_brainatlas

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    new = (Path(napari_brainatlas.__file__).parent / "models.py").exists()
    out = Out()
    out.add("tree", str(Path(napari_brainatlas.__file__).parents[2]))
    t0 = time.time()
    sets = [("demo", demo_sets())]
    if osmfish:
        sets.append(("osmFISH", osmfish_sets(osmfish)))
    for name, (secs, refs, q, hidden, labels) in sets:
        fusemap_part(name, refs, q, hidden, labels, epochs, out, folder, new)
        cellformer_part(name, secs, max(1, epochs - 1), out, folder, new)
    spacon_part(sets[0][1][0], epochs + 1, out, folder, new)
    out.add("seconds", time.time() - t0)
    out.write(folder)


def load_worker(base_folder: Path, folder: Path, osmfish: str | None) -> None:
    """New tree: load the folders the base tree saved (old layouts) and embed again."""
    import torch

    from napari_brainatlas.annotate import QueryMapping
    from napari_brainatlas.cellformer import CellFormer
    from napari_brainatlas.domains import SpaConModel
    from napari_brainatlas.fusemap import FuseMap

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    out = Out()
    sets = [("demo", demo_sets())]
    if osmfish:
        sets.append(("osmFISH", osmfish_sets(osmfish)))
    for name, (secs, refs, q, hidden, _labels) in sets:
        m = FuseMap.load(base_folder / f"{name}_fusemap", [a.copy() for a in refs], device="cpu")
        for i, a in enumerate(m.write_embeddings()):
            out.add(f"{name}/fusemap/z_cell/{i}", np.asarray(a.obsm["X_fusemap_cell"]))
            out.add(f"{name}/fusemap/z_tissue/{i}", np.asarray(a.obsm["X_fusemap_tissue"]))
        out.add(f"{name}/fusemap/history", _history(m.history))
        mp = QueryMapping.load(base_folder / f"{name}_mapping", [hide(q, hidden)], device="cpu")
        qw = mp.write_embeddings()[0]
        out.add(f"{name}/query/z_cell", np.asarray(qw.obsm["X_fusemap_cell"]))
        out.add(f"{name}/query/z_tissue", np.asarray(qw.obsm["X_fusemap_tissue"]))
        out.add(f"{name}/query/history", _history(mp.history))
        cf = CellFormer.load(base_folder / f"{name}_cellformer", [a.copy() for a in secs])
        out.add(f"{name}/cellformer/latent", cf.get_latent_representation(write=False))
        out.add(f"{name}/cellformer/history", _history(cf.history))
    sp = SpaConModel.load(base_folder / "demo_spacon")
    out.add("demo/spacon/z_spatial", sp.z_spatial)
    out.add("demo/spacon/z_connect", sp.z_connect)
    out.add("demo/spacon/loss", [h["loss"] for h in sp.history])
    out.add("demo/spacon/domains", sp.domains(0.5, resolution=0.5).tolist())
    out.write(folder)


# ----------------------------------------------------------------------------- compare
def _read(folder: Path):
    with np.load(folder / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads((folder / "values.json").read_text())


def _diff(a, b) -> tuple[str, bool]:
    """(what differs, same within TOL)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            return f"shape {a.shape} vs {b.shape}", False
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            return "NaN rows differ", False
        ok = ~np.isnan(a)
        d = float(np.max(np.abs(a[ok] - b[ok]))) if ok.any() else 0.0
        return f"max |diff| {d:.2e}", d <= TOL
    if isinstance(a, list) and a and isinstance(a[0], str):
        n = sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))
        return f"{n} of {len(a)} labels differ", n == 0
    if isinstance(a, list) and a and isinstance(a[0], dict):
        if [sorted(r) for r in a] != [sorted(r) for r in b]:
            return "records differ in keys or length", False
        vals = [(r[k], s[k]) for r, s in zip(a, b) for k in r]
        nums = [(x, y) for x, y in vals if isinstance(x, (int, float)) and not isinstance(x, bool)]
        other = [(x, y) for x, y in vals if (x, y) not in nums]
        d = max((abs(x - y) for x, y in nums), default=0.0)
        same = d <= TOL and all(x == y for x, y in other)
        return f"{len(a)} epochs, max |diff| {d:.2e}", same
    if isinstance(a, list) and a and isinstance(a[0], (int, float)):
        if len(a) != len(b):
            return f"{len(a)} vs {len(b)} values", False
        d = float(np.max(np.abs(np.asarray(a, float) - np.asarray(b, float))))
        is_int = all(isinstance(x, int) for x in a)
        return (f"{len(a)} values equal" if d == 0 else f"max |diff| {d:.2e}"), d <= (
            0 if is_int else TOL
        )
    return ("equal" if a == b else f"{a!r} vs {b!r}"), a == b


def compare(left, right, keys=None) -> list[tuple[str, str, bool]]:
    (la, lv), (ra, rv) = left, right
    rows = []
    for k in sorted(set(la) | set(lv)):
        if k in ("tree", "seconds") or (keys is not None and k not in keys):
            continue
        if k not in ra and k not in rv:
            rows.append((k, "missing on the right", False))
            continue
        a = la[k] if k in la else lv[k]
        b = ra[k] if k in ra else rv[k]
        rows.append((k, *_diff(a, b)))
    return rows


def _run(tree: Path, args: list[str]) -> None:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    subprocess.run([sys.executable, str(HERE), *args], env=env, check=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, required=True, help="source tree before the change")
    p.add_argument("--new", type=Path, default=ROOT, help="source tree after (this one)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--osmfish", default=None, help="the osmFISH loom (default: ../shared/data)")
    p.add_argument("--no-osmfish", action="store_true")
    p.add_argument("--keep", type=Path, default=None, help="keep the outputs in this folder")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--load-from", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    osm = None
    if not args.no_osmfish:
        cands = (
            [args.osmfish]
            if args.osmfish
            else [
                ROOT.parent / "shared" / "data" / OSMFISH,
                Path("/work/shared/data") / OSMFISH,
            ]
        )
        osm = next((str(c) for c in cands if c and Path(c).is_file()), None)
    if args.worker:
        if args.load_from:
            load_worker(args.load_from, args.worker, osm)
        else:
            worker(args.worker, args.epochs, osm)
        return 0
    top = args.keep or Path(tempfile.mkdtemp(prefix="compare_engines_"))
    dirs = {k: top / k for k in ("base", "new", "legacy")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    common = ["--epochs", str(args.epochs)] + (["--osmfish", osm] if osm else ["--no-osmfish"])
    _run(args.base.resolve(), ["--base", str(args.base), "--worker", str(dirs["base"]), *common])
    _run(args.new.resolve(), ["--base", str(args.base), "--worker", str(dirs["new"]), *common])
    _run(
        args.new.resolve(),
        [
            "--base",
            str(args.base),
            "--worker",
            str(dirs["legacy"]),
            "--load-from",
            str(dirs["base"]),
            *common,
        ],
    )
    base, new, legacy = (_read(dirs[k]) for k in ("base", "new", "legacy"))
    rows = [("trained: base vs new", *r) for r in compare(base, new)]
    rows += [
        ("base's folders loaded by new", *r)
        for r in compare(base, legacy, set(legacy[0]) | set(legacy[1]))
    ]
    width = max(len(r[1]) for r in rows)
    print(
        f"\nepochs {args.epochs}; osmFISH {'yes' if osm else 'no'}; "
        f"{time.time() - t0:.0f} s; load {os.getloadavg()[0]:.1f}; outputs {top}"
    )
    print(f"{'comparison':30s} {'quantity':{width}s}  result")
    for what, key, text, ok in rows:
        print(f"{what:30s} {key:{width}s}  {text}{'' if ok else '   <-- DIFFERS'}")
    bad = [r for r in rows if not r[3]]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} quantities the same (tolerance {TOL:g})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
