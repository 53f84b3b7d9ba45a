"""The workflow layer without Qt: every workflow on tiny demo data (1 epoch), what it
returns and writes, that inputs stay untouched; and the console script's one-line usage
errors for every subcommand."""

import json
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from napari_brainatlas import BrainAtlasInputError, Cancelled
from napari_brainatlas.io import write_h5ad

from .bad_inputs import sha1

#: a small, quick FuseMap (the defaults take ~50 s for one epoch on a loaded machine)
SMALL = {"min_steps": 5, "n_hidden": 64, "disc_hidden": 32, "n_latent": 16}
SRC = Path(__file__).resolve().parents[1] / "src" / "napari_brainatlas"


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    """Three demo sections of 475-890 cells (read-only: the tests check they stay so)."""
    from napari_brainatlas.demo import make_demo_sections

    return make_demo_sections(seed=0, n_sections=3, cells_per_mm2=40)


def _keys(a):
    return (a.shape, sorted(a.obs.columns), sorted(a.obsm), sorted(a.uns))


class Recorder:
    """A ``progress(done, total, info)`` that keeps every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, done, total, info):
        assert isinstance(info, dict)
        self.calls.append((done, total, info))

    @property
    def messages(self):
        return [i["message"] for d, _t, i in self.calls if d == 0 and "message" in i]


# ------------------------------------------------------------------ sections
def test_read_paths_names_sections_uniquely(tmp_path, tiny):
    from napari_brainatlas.workflows import read_paths, section_names

    p = write_h5ad(tiny[0], tmp_path / "one.h5ad")
    before = sha1(p)
    secs = read_paths([p, p])
    name = tiny[0].uns["napari_brainatlas"]["section"]
    assert section_names(secs) == [name, f"{name}_1"]
    assert secs[1].uns["napari_brainatlas"]["section"] == f"{name}_1"
    assert set(secs[1].obs["section"].astype(str)) == {f"{name}_1"}
    assert sha1(p) == before
    with pytest.raises(BrainAtlasInputError, match="not found"):
        read_paths([tmp_path / "missing.h5ad"])


def test_section_name_fallbacks_and_select(tiny):
    from napari_brainatlas.workflows import section_name, section_names, select_section

    bare = ad.AnnData(np.zeros((3, 2), np.float32))
    assert section_name(bare, 4) == "section4"
    bare.obs["section"] = ["a", "a", "a"]
    assert section_name(bare) == "a"
    assert section_names([bare, bare.copy()]) == ["a", "a_1"]
    names = section_names(tiny)
    assert select_section(tiny, names[1]) is tiny[1]
    with pytest.raises(BrainAtlasInputError, match="choose one"):
        select_section(tiny)
    with pytest.raises(BrainAtlasInputError, match="no section 'nope'"):
        select_section(tiny, "nope")


def test_describe_file(tmp_path, tiny):
    from napari_brainatlas.workflows import describe_file

    p = write_h5ad(tiny[0], tmp_path / "s.h5ad")
    lines = describe_file(p).lines()
    assert len(lines) == 2 and "1 section(s)" in lines[0]
    assert f"{tiny[0].n_obs} cells x {tiny[0].n_vars} genes" in lines[1]
    assert "celltype" in lines[1]


# ------------------------------------------------------------------ progress relay
def test_relay_brings_every_engine_shape_to_one_protocol():
    from napari_brainatlas.workflows._progress import relay

    rec = Recorder()
    relay(rec, "loss", stage="train")(3, 10, 0.5)
    relay(rec, "cost_um")(7, 12.5)
    relay(rec, offset=10, extra=5)(2, 4, {"val_loss": 0.1})
    assert rec.calls == [
        (3, 10, {"stage": "train", "loss": 0.5}),
        (7, None, {"cost_um": 12.5}),
        (12, 19, {"val_loss": 0.1}),
    ]
    assert relay(None) is None


# ------------------------------------------------------------------ registration
def _truth_options(a):
    t = a.uns["demo_truth"]
    return {
        "plane": t["plane"],
        "position_um": t["position_um"],
        "hemisphere": t["hemisphere"],
        "midline": np.asarray(t["midline"]),
    }


def test_register_one_writes_and_leaves_the_input(tmp_path):
    from napari_brainatlas.demo import make_demo_sections
    from napari_brainatlas.workflows import register_one, write_registered

    s = make_demo_sections(seed=0, n_sections=1, cells_per_mm2=100)[0]  # 2019 cells
    before = _keys(s)
    rec = Recorder()
    reg = register_one(s, "demo", progress=rec, **_truth_options(s))
    assert _keys(s) == before and "ccf_coords" not in s.obsm
    err = np.linalg.norm(reg.adata.obsm["ccf_coords"] - reg.adata.obsm["ccf_coords_true"], axis=1)
    assert np.median(err) < 60.0  # 23.9 um when written
    assert rec.calls and all("cost_um" in i for _d, _t, i in rec.calls)
    lines = reg.summary()
    assert len(lines) == 3 and "confidence" in lines[1] and "dice" in lines[2]
    out, js = tmp_path / "r.h5ad", tmp_path / "r.json"
    paths = write_registered(reg, out, record=js)
    assert paths == [out, js]
    assert ad.read_h5ad(out).obsm["ccf_coords"].shape == (s.n_obs, 3)
    assert json.loads(js.read_text())["plane"] == "coronal"
    src = write_h5ad(s, tmp_path / "in.h5ad")
    with pytest.raises(BrainAtlasInputError, match="input file"):
        write_registered(reg, src, inputs=[src])


def test_register_many_cancel_paths_and_options(tmp_path, tiny):
    from napari_brainatlas.workflows import load_atlas, register_many, register_one

    atlas = load_atlas("demo")
    with pytest.raises(Cancelled):
        register_many(tiny, atlas, [_truth_options(a) for a in tiny], cancel=lambda: True)
    path = write_h5ad(tiny[1], tmp_path / "s.h5ad")  # a path in: read, then registered
    with pytest.raises(Cancelled):
        register_one(path, atlas, cancel=lambda: True, **_truth_options(tiny[1]))
    with pytest.raises(BrainAtlasInputError, match="no section 'nope'"):
        register_one(path, atlas, name="nope", **_truth_options(tiny[1]))
    with pytest.raises(BrainAtlasInputError, match="one per section"):
        register_many(tiny, atlas, [{}])
    with pytest.raises(BrainAtlasInputError, match="ontology"):
        load_atlas("demo", ontology="x.csv")


def test_place_series(tiny):
    from napari_brainatlas.workflows import place_series, section_names

    names = section_names(tiny)
    got = place_series(tiny, first_um=2600.0, last_um=4800.0, atlas="demo")
    assert got.names == names and got.positions_um[0] == pytest.approx(2600.0)
    assert got.positions_um[-1] == pytest.approx(4800.0)
    assert got.csv_text().startswith("section,position_um\n")
    rev = place_series(tiny, first_um=4800.0, last_um=2600.0, order=names[::-1])
    assert rev.names == names[::-1]
    with pytest.raises(BrainAtlasInputError, match="unknown"):
        place_series(tiny, first_um=1.0, last_um=2.0, order="nope")
    with pytest.raises(BrainAtlasInputError, match="differ"):
        place_series(tiny, first_um=1.0, last_um=1.0)


# ------------------------------------------------------------------ FuseMap
@pytest.fixture(scope="module")
def embedded(tiny, tmp_path_factory):
    from napari_brainatlas.workflows import embed_sections, write_embedding

    torch.set_num_threads(1)
    rec = Recorder()
    res = embed_sections(
        tiny[:2], epochs=1, device="cpu", seed=0, model_options=SMALL, progress=rec
    )
    run = tmp_path_factory.mktemp("embed")
    files = write_embedding(res, run)
    return res, rec, run, files


def test_embed_sections(tiny, embedded):
    from napari_brainatlas.fusemap import CELL_KEY, TISSUE_KEY
    from napari_brainatlas.workflows import load_fusemap

    res, rec, run, files = embedded
    assert rec.messages and rec.messages[0].startswith("embed: 2 section(s)")
    assert [d for d, _t, _i in rec.calls[1:]] == [1, 2] and rec.calls[-1][1] == 2
    assert all(CELL_KEY not in a.obsm for a in tiny)  # inputs untouched
    assert [a.obsm[CELL_KEY].shape[0] for a in res.sections] == [a.n_obs for a in tiny[:2]]
    assert all(TISSUE_KEY in a.obsm for a in res.sections)
    assert sorted(p.name for p in files) == sorted(f"{n}.h5ad" for n in res.names)
    assert (run / "model" / "config.json").is_file()
    assert load_fusemap(run / "model", device="cpu").section_names == res.names
    with pytest.raises(BrainAtlasInputError, match="not a model folder"):
        load_fusemap(run)


def test_embed_cancel_raises(tiny):
    from napari_brainatlas.workflows import embed_sections

    with pytest.raises(Cancelled):
        embed_sections(tiny[:1], epochs=1, device="cpu", model_options=SMALL, cancel=lambda: True)


def test_transfer_from_a_model_folder(tmp_path, tiny, embedded):
    from napari_brainatlas.workflows import label_transfer, reference_files, write_transfer

    res, _rec, run, files = embedded
    assert reference_files(res.model, run / "model") == [run / f"{n}.h5ad" for n in res.names]
    query = tiny[2]
    before = _keys(query)
    rec = Recorder()
    out = label_transfer(query, model=run / "model", epochs=1, device="cpu", progress=rec)
    assert _keys(query) == before
    assert rec.messages[0].startswith("transfer: 1 query section(s) onto 2 reference")
    a = out.sections[0]
    for c in ("celltype_transfer", "celltype_transfer_uncertainty", "region_transfer"):
        assert c in a.obs
    assert "X_fusemap_cell" in a.obsm and len(out.summary()) == 2
    path = write_transfer(out, tmp_path / "annotated.h5ad")
    assert "region_transfer" in ad.read_h5ad(path).obs
    with pytest.raises(BrainAtlasInputError, match="no reference section has obs\\['nolabel'\\]"):
        label_transfer(query, model=run / "model", labels=["nolabel"], epochs=1)
    with pytest.raises(BrainAtlasInputError, match="not a model folder"):
        label_transfer(query, model=tmp_path / "nowhere", epochs=1)


def test_transfer_from_a_model_object_and_an_untrained_model(tiny, embedded):
    from napari_brainatlas.workflows import label_transfer

    res = embedded[0]
    out = label_transfer(tiny[2], model=res.model, labels=["region"], epochs=1)
    assert "region_transfer" in out.sections[0].obs
    from napari_brainatlas.fusemap import FuseMap

    untrained = FuseMap([a.copy() for a in tiny[:2]], device="cpu", **SMALL)
    rec = Recorder()
    out = label_transfer([tiny[2]], model=untrained, labels="celltype", epochs=1, progress=rec)
    assert "celltype_transfer" in out.sections[0].obs and untrained.is_trained
    stages = {i.get("stage") for d, _t, i in rec.calls if d > 0}
    assert stages == {"train", "map query"}
    assert max(t for d, t, _i in rec.calls if d > 0) == 3  # 2 training + 1 mapping epoch


def test_impute(tmp_path, tiny, embedded):
    from napari_brainatlas.workflows import impute_sections, write_imputed

    res, _rec, run, _files = embedded
    gene = "Slc17a7"  # as the demo data spells it; asked for in any case
    knn = impute_sections(res.sections[0], model=run / "model", genes=gene.lower())
    dec = impute_sections(
        res.sections[0], model=run / "model", genes=[gene.upper()], method="decoder"
    )
    assert knn.method == "knn" and dec.method == "decoder"
    for r in (knn, dec):
        assert r.genes == [gene] and f"imputed_{gene.upper()}" not in r.sections[0].obs
        v = r.sections[0].obs[f"imputed_{gene}"].to_numpy()
        assert v.dtype == np.float32 and np.isfinite(v).any()
    assert f"imputed_{gene}" not in res.sections[0].obs  # input untouched
    mapped = impute_sections(tiny[2], model=run / "model", genes=[gene], epochs=1)
    assert "X_fusemap_cell" in mapped.sections[0].obsm
    path = write_imputed(knn, tmp_path / "imp.h5ad")
    assert f"imputed_{gene}" in ad.read_h5ad(path).obs
    assert "in " in knn.summary(where=str(path))
    with pytest.raises(BrainAtlasInputError, match="not in the model"):
        impute_sections(res.sections[0], model=run / "model", genes=["NOT_A_GENE"])


# ------------------------------------------------------------------ SpaCon
def _registered(a):
    b = a.copy()
    b.obs["ccf_id"] = b.obs["ccf_id_true"].to_numpy().astype(np.int64)
    b.obs["ccf_acronym"] = b.obs["ccf_acronym_true"].astype(str).to_numpy()
    b.obsm["ccf_coords"] = np.asarray(b.obsm["ccf_coords_true"], float)
    b.uns["ccf_registration"] = {"truth": {"atlas": "demo"}}
    return b


def test_domains(tmp_path, tiny):
    from napari_brainatlas.workflows import (
        assign_domains,
        find_domains,
        prepare_domains,
        write_domains,
    )
    from napari_brainatlas.workflows.domains import check_options

    secs = [_registered(a) for a in tiny[:2]]
    before = [_keys(a) for a in secs]
    with pytest.raises(BrainAtlasInputError, match="alpha"):
        check_options(alpha=1.5)
    prepared = prepare_domains(secs, "demo")
    assert len(prepared.summary()) == 2
    rec = Recorder()
    res = find_domains(prepared, alpha=0.5, epochs=1, batch_size=512, progress=rec)
    assert rec.calls == [(1, 1, rec.calls[0][2])] and "loss" in rec.calls[0][2]
    assert [_keys(a) for a in secs] == before
    assert all("spacon_domain" in a.obs and "X_spacon" in a.obsm for a in res.sections)
    assert res.n_domains >= 1 and res.sections[0].uns["spacon"]["alpha"] == 0.5
    again = assign_domains(prepared, res.model, alpha=0.0)
    assert again.sections[0].uns["spacon"]["alpha"] == 0.0
    files = write_domains(res, tmp_path / "dom")
    assert len(files) == 2 and (tmp_path / "dom" / "spacon_model").is_dir()
    raw = tiny[0].copy()
    raw.obs["ccf_id"] = raw.obs["ccf_id_true"].to_numpy()
    raw.obsm["ccf_coords"] = raw.obsm["ccf_coords_true"]
    raw.uns.pop("demo_truth", None)
    with pytest.raises(BrainAtlasInputError, match="not registered to the demo atlas"):
        prepare_domains([raw], "demo")


# ------------------------------------------------------------------ CellFormer
def test_cellformer(tmp_path, tiny):
    from napari_brainatlas.cellformer import LATENT_KEY
    from napari_brainatlas.workflows import train_cellformer, write_cellformer

    rec = Recorder()
    res = train_cellformer(tiny[:2], epochs=1, device="cpu", progress=rec)
    assert rec.calls[-1][:2] == (1, 1) and "loss" in rec.calls[-1][2]
    assert all(LATENT_KEY not in a.obsm for a in tiny)
    z = res.sections[1].obsm[LATENT_KEY]
    assert z.shape[0] == tiny[1].n_obs and np.isfinite(z).all()
    files = write_cellformer(res, tmp_path / "cf")
    assert len(files) == 2 and (tmp_path / "cf" / "model").is_dir()
    with pytest.raises(BrainAtlasInputError, match="at least 1"):
        train_cellformer(tiny[:1], epochs=0)


# ------------------------------------------------------------------ AHBA
def test_ahba(tmp_path):
    from napari_brainatlas.workflows import ahba_expression, write_ahba

    from .test_ahba import make_ahba_fixture

    fx = make_ahba_fixture(tmp_path / "fx")
    rec = Recorder()
    res = ahba_expression(
        [fx["donors"]],
        atlas=fx["atlas"],
        probes_reannotated=fx["reannotated"],
        atlas_info=fx["atlas_info"],
        corrected_mni=fx["corrected"],
        progress=rec,
    )
    assert list(res.table["region"]) == ["ctxL", "ctxR", "thalR"]
    assert res.summary() == "3 parcels x 8 genes"
    assert rec.calls and all(t == 100 and 0 <= d <= 100 for d, t, _i in rec.calls)
    out, rep = tmp_path / "expr.csv", tmp_path / "rep.json"
    assert write_ahba(res, out, report_path=rep) == [out, rep]
    assert json.loads(rep.read_text())[0]["step"]
    with pytest.raises(BrainAtlasInputError, match=".csv"):
        write_ahba(res, tmp_path / "expr.txt")
    with pytest.raises(BrainAtlasInputError, match="donor"):
        ahba_expression([], atlas=fx["atlas"], probes_reannotated=fx["reannotated"])


# ------------------------------------------------------------------ demo
def test_demo_cancel_and_aliases(tmp_path):
    from napari_brainatlas.pipeline import display_available, qc_figure, run_demo_pipeline
    from napari_brainatlas.workflows import demo

    assert run_demo_pipeline is demo.run_demo_pipeline and qc_figure is demo.qc_figure
    assert isinstance(display_available(), bool)
    rec = Recorder()
    with pytest.raises(Cancelled):
        demo.run_demo(tmp_path / "run", progress=rec, cancel=lambda: len(rec.calls) >= 2)
    assert rec.calls[0][2]["message"].startswith("demo data written")


# ------------------------------------------------------------------ layering
def test_workflows_import_no_qt_and_never_print():
    code = (
        "import sys, importlib\n"
        "for m in ('sections','register','embed','transfer','impute','domains','ahba',"
        "'cellformer','demo','outputs'):\n"
        "    importlib.import_module('napari_brainatlas.workflows.' + m)\n"
        "bad = [m for m in ('qtpy', 'PyQt6', 'PyQt5', 'napari', 'argparse') if m in sys.modules]\n"
        "print(bad)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    bad = eval(r.stdout.strip())
    assert "qtpy" not in bad and "PyQt6" not in bad and "napari" not in bad, bad
    for f in (SRC / "workflows").glob("*.py"):
        text = f.read_text()
        assert "print(" not in text and "import argparse" not in text, f.name
    assert not list(SRC.glob("*/cli.py")), "engines hold no CLI code"


# ------------------------------------------------------------------ the console script
def _subcommands():
    from napari_brainatlas.cli import build_parser

    p = build_parser()
    action = next(a for a in p._actions if a.dest == "command")
    return action.choices


SUBCOMMANDS = sorted(_subcommands())


def _requires_something(parser) -> bool:
    return any(a.required for a in parser._actions) or any(
        g.required for g in parser._mutually_exclusive_groups
    )


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_usage_error_is_one_stderr_line_and_exit_2(command, capsys):
    from napari_brainatlas.cli import main

    assert main([command, "--no-such-option"]) == 2
    cap = capsys.readouterr()
    assert len(cap.err.strip().splitlines()) == 1 and "error" in cap.err, cap.err
    assert cap.out == ""
    if _requires_something(_subcommands()[command]):
        assert main([command]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "required" in err[0], err


def test_usage_error_through_the_console_script():
    for argv in (["register"], ["frobnicate"], ["embed", "x.h5ad", "--out", "o", "--epochs", "x"]):
        r = subprocess.run(
            [sys.executable, "-m", "napari_brainatlas", *argv],
            capture_output=True,
            text=True,
            check=False,
        )
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_progress_printer_off_a_terminal(capsys):
    from napari_brainatlas.cli._common import Progress

    with Progress("fit") as bar:  # unknown total: nothing within every_s
        bar(0, None, {"message": "header"})
        for i in range(1, 101):
            bar(i, None, {"cost_um": 1.0 / i})
    assert capsys.readouterr().err.splitlines() == ["header"]
    with Progress("train") as bar:  # known total: the last unit
        for i in range(1, 11):
            bar(i, 10, {"loss": 0.5})
    assert capsys.readouterr().err.splitlines() == ["train 10/10 loss 0.5"]
    with Progress("train") as bar:  # stopped early: the last unit at close
        for i in range(1, 4):
            bar(i, 10, {})
    assert capsys.readouterr().err.splitlines() == ["train 3/10"]
    with Progress("v", verbose=True) as bar:
        for i in range(1, 6):
            bar(i, None, {})
    assert len(capsys.readouterr().err.splitlines()) == 5


def test_register_prints_at_most_five_lines(tmp_path, tiny, capsys):
    from napari_brainatlas.cli import main

    s = tiny[1]
    p = write_h5ad(s, tmp_path / "s.h5ad")
    t = s.uns["demo_truth"]
    argv = [
        "register",
        str(p),
        "--atlas",
        "demo",
        "--plane",
        "coronal",
        "--position-um",
        str(t["position_um"]),
        "--hemisphere",
        t["hemisphere"],
        "--midline",
        ",".join(f"{v:.2f}" for v in np.ravel(t["midline"])),
        "--out",
        str(tmp_path / "o.h5ad"),
    ]
    assert main(argv) == 0
    cap = capsys.readouterr()
    lines = cap.out.strip().splitlines() + cap.err.strip().splitlines()
    assert 3 <= len(lines) <= 5, lines
    assert main([*argv, "--verbose"]) == 0
    assert len(capsys.readouterr().err.splitlines()) > 5  # one line per iteration


# ------------------------------------------------------------------ issue 23: flexible references
def _unlabelled(a):
    b = a.copy()
    b.obs = b.obs.drop(columns=["celltype", "celltype_main"])
    return b


def test_transfer_from_a_mixed_label_reference(tiny):
    """One labelled and one unlabelled reference section: the classifier learns from the
    cells that carry the label; the label check comes before any training."""
    from napari_brainatlas.fusemap import FuseMap
    from napari_brainatlas.workflows import label_transfer
    from napari_brainatlas.workflows.transfer import reference_labels

    refs = [tiny[0].copy(), _unlabelled(tiny[1])]
    names = [r.uns["napari_brainatlas"]["section"] for r in refs]
    assert reference_labels(refs)["celltype"] == [names[0]]
    assert set(reference_labels(refs)["region"]) == set(names)
    with pytest.raises(BrainAtlasInputError, match="no reference section has obs\\['nolabel'\\]"):
        label_transfer(tiny[2], reference=refs, labels=["nolabel"], epochs=1)
    model = FuseMap(refs, device="cpu", **SMALL)
    out = label_transfer(tiny[2], model=model, labels=["celltype", "region"], epochs=1)
    a = out.sections[0]
    assert a.obs["celltype_transfer"].notna().all()
    record = a.uns["label_transfer"]
    assert record["celltype"]["labelled_sections"] == [names[0]]
    assert record["celltype"]["n_reference_cells"] == refs[0].n_obs
    assert len(record["region"]["labelled_sections"]) == 2
    assert any("learnt from" in line for line in out.summary())
    assert out.warnings == []  # the demo panels share 16+ genes


def test_model_folder_lists_its_reference_labels(tmp_path, tiny, embedded):
    from napari_brainatlas.workflows.transfer import model_reference_labels

    res, _rec, run, _files = embedded
    labels, genes = model_reference_labels(run / "model")
    assert {"celltype", "region"} <= set(labels)
    assert labels["celltype"] == res.names
    assert "Slc17a7" in genes  # the data's spelling
    with pytest.raises(BrainAtlasInputError, match="not a model folder"):
        model_reference_labels(tmp_path)


def test_impute_without_a_model_or_a_transfer(tiny):
    """Imputation straight from reference sections (a FuseMap trained on them first),
    the query mapped on the way; the gene keeps the data's spelling."""
    from napari_brainatlas.fusemap import FuseMap
    from napari_brainatlas.workflows import impute_sections

    refs = [tiny[0].copy(), _unlabelled(tiny[1])]
    model = FuseMap(refs, device="cpu", **SMALL)
    rec = Recorder()
    out = impute_sections(tiny[2], model=model, genes="GAD1", epochs=1, progress=rec)
    assert out.genes == ["Gad1"] and model.is_trained
    v = out.sections[0].obs["imputed_Gad1"].to_numpy()
    assert np.isfinite(v).all() and "X_fusemap_cell" in out.sections[0].obsm
    assert {i.get("stage") for d, _t, i in rec.calls if d > 0} == {"train", "map query"}
    with pytest.raises(BrainAtlasInputError, match="model folder or reference sections"):
        impute_sections(tiny[2], model=None, genes="Gad1")


def test_few_shared_genes_are_warned_about(tiny, embedded):
    from napari_brainatlas.workflows import impute_sections, label_transfer
    from napari_brainatlas.workflows.genes import gene_overlap

    res, _rec, run, _files = embedded
    few = tiny[2][:, ["Slc17a7", "Gad1", "Mbp"]].copy()
    (o,) = gene_overlap(res.model, [few])
    assert (o.shared, o.genes) == (3, 3)
    out = label_transfer(few, model=run / "model", labels=["region"], epochs=1)
    assert len(out.warnings) == 1 and "shares only 3 of its 3 genes" in out.warnings[0]
    imp = impute_sections(few, model=run / "model", genes=["Gad1"], epochs=1)
    assert "shares only 3" in imp.warnings[0]
