"""Cell tables in csv / tsv: text columns become obs, numeric columns genes only when the
user says so or when a counts table is elsewhere, type rows recognised, errors that name
the column (issue 23). Files are built in tmp_path; the real osmFISH cells are written out
as a lab's cell table."""

import numpy as np
import pandas as pd
import pytest

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.io import read_sections

from ._data import MERFISH, OSMFISH, shared
from .bad_inputs import sha1


def _cells(n=30, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x": rng.uniform(0, 500, n),
            "y": rng.uniform(0, 400, n),
            "cell_type": rng.choice(["Astro", "Oligo", "L2/3 IT"], n),
            "region": rng.choice(["CTX", "STR"], n),
            "area": rng.uniform(50, 150, n),
            "Slc17a7": rng.poisson(3, n),
            "Gad1": rng.poisson(1, n),
        },
        index=[f"cell{i}" for i in range(n)],
    )


def test_text_columns_become_obs_and_numbers_stay_cell_values(tmp_path):
    df = _cells()
    p = tmp_path / "cells.csv"
    df.to_csv(p)
    before = sha1(p)
    (s,) = read_sections(p)
    assert s.n_obs == len(df) and s.n_vars == 0  # numbers are genes only when asked
    assert isinstance(s.obs["cell_type"].dtype, pd.CategoricalDtype)
    assert set(s.obs["region"]) == {"CTX", "STR"}
    assert np.allclose(s.obs["Slc17a7"], df["Slc17a7"])
    meta = s.uns["napari_brainatlas"]
    assert meta["genes_from"] == "none"
    assert meta["numeric_columns"] == ["area", "Slc17a7", "Gad1"]
    assert np.allclose(s.obsm["spatial"], df[["x", "y"]].to_numpy())
    assert list(s.obs_names) == list(df.index)
    assert sha1(p) == before


@pytest.mark.parametrize(
    "genes, expected",
    [
        (True, ["Slc17a7", "Gad1"]),  # area is a per-cell measure, never a gene
        ("all", ["Slc17a7", "Gad1"]),
        (["Gad1"], ["Gad1"]),
        ("Slc17a7,Gad1", ["Slc17a7", "Gad1"]),
        ("area:Gad1", ["area", "Slc17a7", "Gad1"]),  # a block takes what the user names
    ],
)
def test_numeric_columns_become_genes_when_asked(tmp_path, genes, expected):
    df = _cells()
    p = tmp_path / "cells.tsv"
    df.to_csv(p, sep="\t")
    (s,) = read_sections(p, genes=genes)
    assert list(s.var_names) == expected
    assert np.allclose(s.X, df[expected].to_numpy())
    assert ("counts" in s.layers) == ("area" not in expected)  # integer columns: counts
    assert "cell_type" in s.obs and "x" not in s.obs
    assert s.uns["napari_brainatlas"]["genes_from"] == "cells.tsv columns"


@pytest.mark.parametrize(
    "genes, words",
    [
        (["Gad2"], "no column 'Gad2' among the columns (x, y, cell_type"),
        (["cell_type"], "column 'cell_type' is not numeric (row 'cell0' holds"),
        ("Gad1:Slc17a7", "runs backwards"),
        ("Vip:Gad1", "no column 'Vip' to start or end the gene block"),
    ],
)
def test_gene_option_errors_name_the_column(tmp_path, genes, words):
    p = tmp_path / "cells.csv"
    _cells().to_csv(p)
    with pytest.raises(BrainAtlasInputError) as err:
        read_sections(p, genes=genes)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_text_among_numbers_names_the_cell(tmp_path):
    df = _cells().astype({"Gad1": object})
    df.loc["cell4", "Gad1"] = "n/a"
    p = tmp_path / "cells.csv"
    df.to_csv(p)
    (s,) = read_sections(p)  # a text column: obs, no error
    assert "Gad1" in s.obs
    with pytest.raises(BrainAtlasInputError, match="column 'Gad1' has an empty value .row 'cell4'"):
        read_sections(p, genes=["Slc17a7", "Gad1"])
    df.loc["cell4", "Gad1"] = "low"
    df.to_csv(p)
    with pytest.raises(BrainAtlasInputError, match="column 'Gad1' is not numeric .row 'cell4'"):
        read_sections(p, genes=["Slc17a7", "Gad1"])


def test_table_without_id_column(tmp_path):
    df = _cells().reset_index(drop=True)[["x", "y", "cell_type", "Gad1"]]
    p = tmp_path / "noids.csv"
    df.to_csv(p, index=False)
    (s,) = read_sections(p, genes=["Gad1"])
    assert list(s.obs_names[:3]) == ["0", "1", "2"]
    assert np.allclose(s.obsm["spatial"][:, 0], df["x"])
    # a label as first column is not taken for cell ids
    df[["cell_type", "x", "y"]].to_csv(p, index=False)
    (s,) = read_sections(p)
    assert "cell_type" in s.obs and s.n_obs == len(df)


def _starmap_plus_folder(folder, n=12, seed=1):
    """The STARmap PLUS layout (Single Cell Portal): <well>_spatial.csv with a TYPE row
    (NAME, X, Y, Z, labels as 'group') and <well>raw_expression_pd.csv (genes x cells)."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    cells = [f"well05_{i}" for i in range(n)]
    header = "NAME,X,Y,Z,Main_molecular_cell_type,Sub_molecular_cell_type,cluster_id\n"
    types = "TYPE,numeric,numeric,numeric,group,group,group\n"
    rows = "".join(
        f"{c},{rng.uniform(0, 1500):.3f},{rng.uniform(0, 1500):.3f},{rng.uniform(5, 20):.2f},"
        f"{rng.choice(['Astrocytes', 'Oligodendrocytes'])},{rng.choice(['AC_1', 'OLG_2'])},"
        f"{rng.integers(1, 4)}\n"
        for c in cells
    )
    (folder / "well05_spatial.csv").write_text(header + types + rows)
    genes = ["A2M", "SLC17A7", "GAD1"]
    counts = pd.DataFrame(rng.poisson(2, (len(genes), n)), index=genes, columns=cells)
    counts.index.name = "GENE"
    counts.to_csv(folder / "well05raw_expression_pd.csv")
    return cells, genes, counts


def test_starmap_plus_type_row_and_counts_elsewhere(tmp_path):
    cells, genes, counts = _starmap_plus_folder(tmp_path / "well05")
    (s,) = read_sections(tmp_path / "well05")
    assert s.shape == (len(cells), len(genes))
    assert list(s.var_names) == genes
    assert np.allclose(s.X.toarray(), counts.T.to_numpy())
    assert s.uns["napari_brainatlas"]["genes_from"] == "well05raw_expression_pd.csv"
    # labels from the coordinates table; the 'group' column of numbers is a label
    for c in ("Main_molecular_cell_type", "Sub_molecular_cell_type", "cluster_id"):
        assert isinstance(s.obs[c].dtype, pd.CategoricalDtype), c
    assert s.obs["Z"].dtype.kind == "f"
    assert "well05_spatial.csv X/Y" in s.uns["napari_brainatlas"]["coords_from"]
    # genes named by the user are refused where the genes come from a counts table
    with pytest.raises(BrainAtlasInputError, match="genes come from well05raw"):
        read_sections(tmp_path / "well05", genes=["Z"])
    (again,) = read_sections(tmp_path / "well05", genes=True)  # "numeric columns are genes"
    assert list(again.var_names) == genes


def test_type_row_in_a_single_table(tmp_path):
    p = tmp_path / "typed.csv"
    p.write_text(
        "NAME,X,Y,cluster,Gad1\nTYPE,numeric,numeric,group,numeric\n"
        "a,1.5,2.0,3,4\nb,2.5,1.0,3,0\nc,0.5,3.0,7,2\n"
    )
    (s,) = read_sections(p, genes=True)
    assert list(s.var_names) == ["Gad1"]  # the group column of numbers is no gene
    assert list(s.obs["cluster"].astype(str)) == ["3", "3", "7"]
    p.write_text("NAME,X,Y,Gad1\nTYPE,numeric,numeric,numeric\na,1.5,2.0,4\nb,oops,1.0,0\n")
    with pytest.raises(BrainAtlasInputError, match="column 'X' is typed numeric but row 'b'"):
        read_sections(p)


def test_side_table_of_labels_beside_a_cell_table(tmp_path):
    folder = tmp_path / "cells"
    folder.mkdir()
    df = _cells()
    df[["x", "y", "Gad1", "Slc17a7"]].to_csv(folder / "cells.csv")
    df[["cell_type"]].rename(columns={"cell_type": "x"}).to_csv(folder / "cell_types.csv")
    (s,) = read_sections(folder, genes=True)
    assert list(s.var_names) == ["Gad1", "Slc17a7"]
    assert list(s.obs["cell_types"].astype(str)) == list(df["cell_type"])


def test_no_coordinates_names_the_columns(tmp_path):
    p = tmp_path / "nocoords.csv"
    _cells()[["cell_type", "Gad1"]].to_csv(p)
    with pytest.raises(BrainAtlasInputError, match="has cell_type, Gad1"):
        read_sections(p)


def test_genes_option_refused_for_h5ad(tmp_path, demo_sections):
    p = tmp_path / "a.h5ad"
    demo_sections[0].write_h5ad(p)
    with pytest.raises(BrainAtlasInputError, match="csv / tsv cell tables only"):
        read_sections(p, genes=True)


def test_real_osmfish_cells_as_a_lab_cell_table(tmp_path):
    """The osmFISH loom's cells written as one tsv (cell id, X, Y, ClusterName, Region,
    the 33 genes): read back with the genes named by a block, equal to the loom."""
    (loom,) = read_sections(shared(OSMFISH))
    px = loom.uns["napari_brainatlas"]["pixel_size_um"]
    genes = list(loom.var_names)
    table = pd.DataFrame(loom.obsm["spatial"] / px, columns=["X", "Y"], index=loom.obs_names)
    table["ClusterName"] = loom.obs["ClusterName"].astype(str).to_numpy()
    table["Region"] = loom.obs["Region"].astype(str).to_numpy()
    table[genes] = np.asarray(loom.layers["counts"])
    p = tmp_path / "osmfish_cells.tsv"
    table.to_csv(p, sep="\t")
    (plain,) = read_sections(p, pixel_size_um=px)
    assert plain.n_vars == 0 and set(genes) <= set(plain.obs.columns)
    assert plain.obs["Region"].nunique() == loom.obs["Region"].nunique()
    (s,) = read_sections(p, pixel_size_um=px, genes=f"{genes[0]}:{genes[-1]}")
    assert list(s.var_names) == genes
    assert np.array_equal(np.asarray(s.layers["counts"]), np.asarray(loom.layers["counts"]))
    assert np.allclose(s.obsm["spatial"], loom.obsm["spatial"])
    assert list(s.obs["ClusterName"].astype(str)) == list(loom.obs["ClusterName"].astype(str))


def test_real_merfish_folder_keeps_reading(tmp_path):
    (s,) = read_sections(shared(MERFISH))
    assert s.shape == (750, 134)
    assert s.uns["napari_brainatlas"]["genes_from"] == "counts.csv"
    assert "nUMI" in s.obs
