"""The analyses as user tasks (workflows/analyses.py) and subcommands (cli/analyses.py):
files in, files out, inputs untouched, one line and exit code 2 on bad input."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.analyses import GeneModules
from napari_brainatlas.cli import main
from napari_brainatlas.workflows import analyses as wf

from .test_analyses_modules import tiny_model  # noqa: F401  (fixture)
from .test_analyses_proximity import _plant, _section


def _digest(folder):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model):  # noqa: F811
    """What `napari-brainatlas embed --out RUN` leaves: RUN/model and RUN/<name>.h5ad."""
    from napari_brainatlas.io import write_h5ad

    run = tmp_path_factory.mktemp("run")
    tiny_model.save(run / "model")
    for a, name in zip(tiny_model.write_embeddings(copy=True), tiny_model.section_names):
        write_h5ad(a, run / f"{name}.h5ad")
    return run


def test_modules_written_into_the_model_folder_without_touching_it(tmp_path, tiny_model):  # noqa: F811
    from napari_brainatlas.fusemap import FuseMap

    folder = tiny_model.save(tmp_path / "model")
    before = _digest(folder)
    result = wf.find_modules(folder, umap=False)
    written = wf.write_modules(result, tmp_path / "out")
    after = _digest(folder)
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) == {"modules.csv", "modules.json"}
    assert (tmp_path / "out" / "gene_umap.png") in written
    back = GeneModules.load(folder)
    pd.testing.assert_frame_equal(back.table, result.modules.table, check_dtype=False)
    assert back.resolution == result.modules.resolution
    FuseMap.load(folder)  # the model still loads
    t = pd.read_csv(folder / "modules.csv")
    assert list(t.columns[:2]) == ["gene", "module"]
    assert {"hub_score", "umap_x", "umap_y"} <= set(t.columns)
    assert any("module 1" in line for line in result.lines())
    with pytest.raises(BrainAtlasInputError, match="not a model folder"):
        wf.find_modules(tmp_path / "out")


def test_score_sections_returns_copies_with_module_scores(run_dir):
    files = sorted(run_dir.glob("*.h5ad"))
    before = {f.name: f.read_bytes() for f in files}
    scored = wf.score_sections(files, model=run_dir / "model")
    assert {f.name: f.read_bytes() for f in files} == before
    for a in scored:
        keys = a.uns["gene_modules"]["keys"]
        assert keys and all(np.isfinite(a.obs[k]).all() for k in keys)
        assert sum(a.uns["gene_modules"]["n_imputed"].values()) > 0  # decoded genes


def test_panel_from_a_model_folder(tmp_path, tiny_model):  # noqa: F811
    from napari_brainatlas.io import write_h5ad

    folder = tiny_model.save(tmp_path / "run" / "model")
    with pytest.raises(BrainAtlasInputError, match="expression"):
        wf.design_panel(folder, 10)
    for a, name in zip(tiny_model.adatas, tiny_model.section_names):
        write_h5ad(a, tmp_path / "run" / f"{name}.h5ad")
    panel = wf.design_panel(folder, 12, include=["GENE0"], exclude=["GENE1"])
    out = wf.write_panel(panel, tmp_path / "panel.csv")
    back = pd.read_csv(out)
    assert list(back.columns) == ["gene", "module", "variability", "pick"]
    assert len(back) == 12 and back["gene"].iloc[0] == "GENE0" and "GENE1" not in set(back.gene)
    c = back.loc[back["pick"] == "module", "module"].value_counts()
    assert c.max() - c.min() <= 1
    assert len(wf.design_panel(folder, 12, method="hvg").table) == 12
    one = tmp_path / "run" / f"{tiny_model.section_names[0]}.h5ad"
    assert wf.design_panel(folder, 12, data=[one]).size == 12
    with pytest.raises(BrainAtlasInputError, match="not a model folder"):
        wf.design_panel(tmp_path, 5)
    with pytest.raises(BrainAtlasInputError, match="larger than"):
        wf.design_panel(folder, 10_000)
    with pytest.raises(BrainAtlasInputError, match="method"):
        wf.design_panel(folder, 5, method="best")
    with pytest.raises(BrainAtlasInputError, match=".csv"):
        wf.write_panel(panel, tmp_path / "panel.txt")


def test_proximity_over_files(tmp_path):
    from napari_brainatlas.io import write_h5ad

    a = _plant(_section(3000, 1500.0, 4, seed=2), "left", "1", "3", frac=0.5)
    f = write_h5ad(a, tmp_path / "sec.h5ad")
    res = wf.cell_proximity([f], celltype_key="celltype", region_key="region")
    assert res.result.table.iloc[0][["region", "type_a", "type_b"]].tolist() == ["left", "1", "3"]
    written = wf.write_proximity(res, tmp_path / "table.csv", heatmaps=tmp_path / "maps")
    t = pd.read_csv(written[0])
    assert len(t) == len(res.result.table) and not t.isna().any().any()
    assert len(written) == 3 and all(p.suffix == ".png" for p in written[1:])
    with pytest.raises(BrainAtlasInputError, match="refusing"):
        wf.write_proximity(res, f.with_suffix(".csv"), inputs=[f.with_suffix(".csv")])
    with pytest.raises(BrainAtlasInputError, match="obs column 'nope'"):
        wf.cell_proximity([f], celltype_key="nope")


def test_cli_modules_panel_proximity(tmp_path, run_dir, capsys):
    from napari_brainatlas.io import write_h5ad

    out = tmp_path / "mods"
    rc = main(["modules", "--model", str(run_dir / "model"), "--out", str(out), "--no-umap"])
    assert rc == 0 and (out / "modules.csv").is_file() and (out / "gene_umap.png").is_file()
    assert "modules" in capsys.readouterr().out
    rc = main(
        [
            "panel",
            "--model",
            str(run_dir / "model"),
            "--size",
            "8",
            "--include",
            "GENE0,GENE2",
            "--exclude",
            "GENE1",
            "--out",
            str(tmp_path / "panel.csv"),
        ]
    )
    assert rc == 0 and len(pd.read_csv(tmp_path / "panel.csv")) == 8
    f = write_h5ad(_section(1500, 900.0, 3, seed=3), tmp_path / "sec.h5ad")
    rc = main(
        [
            "proximity",
            str(f),
            "--celltype",
            "celltype",
            "--region",
            "region",
            "--n-shifts",
            "50",
            "--out",
            str(tmp_path / "prox.csv"),
        ]
    )
    assert rc == 0 and (tmp_path / "prox.csv").is_file()
    capsys.readouterr()
    bad = [
        ["panel", "--model", str(run_dir / "model"), "--size", "9999", "--out", "p.csv"],
        ["panel", "--model", str(tmp_path), "--size", "5", "--out", str(tmp_path / "p.csv")],
        ["panel", "--model", str(run_dir / "model"), "--size", "5", "--include", "NOPE",
         "--out", str(tmp_path / "p.csv")],
        ["proximity", str(f), "--celltype", "nope", "--out", str(tmp_path / "x.csv")],
        ["proximity", str(f), "--celltype", "celltype", "--n-shifts", "0",
         "--out", str(tmp_path / "x.csv")],
    ]  # fmt: skip
    for argv in bad:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error" in err[0], (argv, err)
