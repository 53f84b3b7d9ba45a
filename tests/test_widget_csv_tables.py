"""Sections dock on a lab's cell table: text columns (cell type, region) next to x/y load
as labels; numeric columns are cell values until the user ticks 'Numeric columns are
genes' (issue 23). Run under a display (xvfb-run)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from ._shots import save_shot

pytestmark = pytest.mark.gui


def _table(path, n=400, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 2000, (n, 2))
    region = np.where(xy[:, 1] < 1000, "CTX", "STR")
    kind = rng.choice(["Astro", "Oligo", "L2/3 IT"], n)
    df = pd.DataFrame(
        {
            "x": xy[:, 0],
            "y": xy[:, 1],
            "cell_type": kind,
            "region": region,
            "area": rng.uniform(50, 150, n),
            "Slc17a7": rng.poisson(np.where(kind == "L2/3 IT", 8, 0.5)),
            "Gad1": rng.poisson(1, n),
        },
        index=[f"cell{i}" for i in range(n)],
    )
    df.to_csv(path)
    return df


def _load(qtbot, widget, path, n_before):
    from qtpy.QtCore import Qt

    widget.path_edit.setText(str(path))
    qtbot.mouseClick(widget.load_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not widget.busy, timeout=60000)
    qtbot.waitUntil(lambda: len(widget.section_layers()) > n_before, timeout=30000)
    return widget.section_layers()[-1]


def test_csv_with_text_columns_loads_as_labels(qtbot, sections_dock, error_notifications, tmp_path):
    viewer, widget = sections_dock
    df = _table(tmp_path / "cells.csv")
    layer = _load(qtbot, widget, tmp_path / "cells.csv", 0)
    assert not error_notifications
    ad = layer.metadata["adata"]
    assert ad.n_vars == 0 and {"cell_type", "region"} <= set(layer.features.columns)
    status = widget.status.text()
    assert "No genes: 3 numeric column(s) kept as cell values" in status, status
    items = [widget.annotation_combo.itemText(i) for i in range(widget.annotation_combo.count())]
    assert {"cell_type", "region", "Slc17a7", "area"} <= set(items)
    widget.color_by_annotation("cell_type")
    assert set(widget.legend_categories()) == set(df["cell_type"])
    save_shot(viewer.screenshot(canvas_only=False, flash=False), "csv_text_columns")
    # the user says the numbers are genes: the same file again, area stays a cell value
    widget.genes_check.setChecked(True)
    layer2 = _load(qtbot, widget, tmp_path / "cells.csv", 1)
    ad2 = layer2.metadata["adata"]
    assert list(ad2.var_names) == ["Slc17a7", "Gad1"] and "area" in ad2.obs
    assert "No genes" not in widget.status.text()
    widget.color_by_gene("Slc17a7")
    assert widget._color["source"] == "gene"
    # a colour bar for the gene; the Annotation box no longer claims cell_type
    assert widget.colour_bar.isVisible() and widget.colour_bar.title.text() == "Slc17a7"
    lo, hi = widget.colour_bar.limits
    assert lo < hi and widget.colour_bar.low.text() == f"{lo:.3g}"
    assert widget.annotation_combo.currentText() == "(none)"
    assert not widget.legend.isVisible()
    save_shot(viewer.screenshot(canvas_only=False, flash=False), "csv_gene_colour_bar")
    widget.color_by_annotation("region")  # back to labels: legend, no colour bar
    assert not widget.colour_bar.isVisible() and widget.legend.isVisible()
    assert widget.gene_edit.text() == ""
    assert not error_notifications
