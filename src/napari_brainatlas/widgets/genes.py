"""The "Genes & neighbours" dock: gene modules, panel design and region-specific
cell-cell proximity (the FuseMap paper's atlas analyses) on the loaded sections.

* **Modules**: a model folder's gene modules (Leiden on the gene embedding), hub genes,
  the gene UMAP coloured by module; "Score sections" writes ``obs['module_<k>_score']``
  into the ticked sections and colours them by the module chosen.
* **Panel**: N genes spread evenly over the modules (or top-HVG / random), must-have and
  excluded genes, "Save CSV".
* **Proximity**: cell-type pairs closer than chance per region (1,000 random shifts);
  a z heatmap per region and the ranked table; a click on a heatmap cell or a table row
  paints the pair's cells (type a red, type b blue, the rest grey).

Every computation runs as a job of the dock base (worker thread, progress, Cancel); the
workers get copies of the sections; layers change in the GUI thread only. State and
jobs: :mod:`.genes_session` (no Qt).
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QSize
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from . import genes_session as gs
from ._base import DockBase, snapshot
from ._common import SectionChecklist, paint, set_feature_columns

__all__ = ["GenesWidget"]

NO_REGION = "(whole section)"


class _Plot(QWidget):
    """A matplotlib canvas on the dock (dark, like napari)."""

    def __init__(self, height: int = 260, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.fig = Figure(figsize=(3.2, height / 80), dpi=80, facecolor="#262930")
        self.canvas = FigureCanvasQTAgg(self.fig)
        self.canvas.setMinimumHeight(height)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)

    def axes(self):
        self.fig.clear()
        ax = self.fig.add_subplot(111)
        ax.set_facecolor("#262930")
        for s in ax.spines.values():
            s.set_color("#888888")
        ax.tick_params(colors="#dddddd", labelsize=6)
        return ax

    def message(self, text: str) -> None:
        ax = self.axes()
        ax.set_axis_off()
        ax.text(0.5, 0.5, text, color="#bbbbbb", ha="center", va="center", fontsize=8)
        self.canvas.draw_idle()


def _table(columns: list[str]) -> QTableWidget:
    t = QTableWidget(0, len(columns))
    t.setHorizontalHeaderLabels(columns)
    t.setEditTriggers(QTableWidget.NoEditTriggers)
    t.setSelectionBehavior(QTableWidget.SelectRows)
    t.verticalHeader().setVisible(False)
    t.horizontalHeader().setStretchLastSection(True)
    t.setMinimumHeight(120)
    return t


def _fill(table: QTableWidget, rows) -> None:
    rows = list(rows)
    table.setRowCount(len(rows))
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            text = f"{v:.3g}" if isinstance(v, float) else str(v)
            table.setItem(i, j, QTableWidgetItem(text))
    table.resizeColumnsToContents()


class GenesWidget(DockBase):
    """Dock widget: gene modules, panels and region-specific proximity."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.session = gs.GenesSession()
        self._last_umap = True
        self._score_layers: list = []
        self._prox_layers: list = []
        self._prox_keys: tuple = ("", None)
        self.highlighted_cells = 0
        self.setMinimumWidth(360)
        self._build_ui()
        self.section_list.refreshed.connect(self._refresh_columns)
        self._refresh_columns()

    def sizeHint(self) -> QSize:
        return QSize(400, 760)

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        root = QVBoxLayout(self)
        root.setContentsMargins(4, 4, 4, 4)
        box = QGroupBox("Model and sections")
        lay = QVBoxLayout(box)
        row = QHBoxLayout()
        self.model_edit = QLineEdit()
        self.model_edit.setPlaceholderText("FuseMap model folder (embed --out RUN: RUN/model)")
        browse = QPushButton("...")
        browse.clicked.connect(self._choose_model)
        row.addWidget(self.model_edit, 1)
        row.addWidget(browse)
        lay.addLayout(row)
        self.section_list = SectionChecklist(self.viewer, min_height=50)
        self.section_list.setMaximumHeight(90)
        self.section_list.setToolTip("Sections to score, to rank genes by, to analyse")
        lay.addWidget(self.section_list)
        root.addWidget(box)

        self.tabs = QTabWidget()
        self.tabs.addTab(self._modules_tab(), "Modules")
        self.tabs.addTab(self._panel_tab(), "Panel")
        self.tabs.addTab(self._proximity_tab(), "Proximity")
        root.addWidget(self.tabs, 1)
        root.addLayout(self.run_row())
        root.addWidget(self.progress)
        self.set_status("Choose a model folder, then find the gene modules.")
        root.addWidget(self.status)

    def _modules_tab(self) -> QWidget:
        tab = QWidget()
        lay = QVBoxLayout(tab)
        form = QFormLayout()
        self.resolution = QDoubleSpinBox(minimum=0.0, maximum=20.0, value=0.0, singleStep=0.1)
        self.resolution.setSpecialValueText("auto")
        self.resolution.setToolTip(
            "Leiden resolution; auto: the partition of highest modularity without modules "
            "of fewer than max(5, genes/40) genes"
        )
        form.addRow("Resolution:", self.resolution)
        self.umap_box = QCheckBox("gene UMAP")
        self.umap_box.setChecked(True)
        self.find_button = self.action_button("Find modules", self.find_modules)
        form.addRow(self.umap_box, self.find_button)
        lay.addLayout(form)
        self.gene_map = _Plot(250)
        self.gene_map.message("no modules yet")
        lay.addWidget(self.gene_map)
        self.module_table = _table(["module", "genes", "hub genes"])
        lay.addWidget(self.module_table)
        row = QHBoxLayout()
        self.score_button = self.action_button("Score sections", self.score_sections)
        self.module_choice = QComboBox()
        self.module_choice.setToolTip("Colour the scored sections by this module's score")
        self.module_choice.currentTextChanged.connect(lambda _: self.show_module())
        row.addWidget(self.score_button)
        row.addWidget(self.module_choice, 1)
        lay.addLayout(row)
        return tab

    def _panel_tab(self) -> QWidget:
        tab = QWidget()
        lay = QVBoxLayout(tab)
        form = QFormLayout()
        self.panel_size = QSpinBox(minimum=1, maximum=100000, value=50)
        form.addRow("Genes:", self.panel_size)
        self.include_edit = QLineEdit()
        self.include_edit.setPlaceholderText("must-have genes, comma-separated")
        form.addRow("Include:", self.include_edit)
        self.exclude_edit = QLineEdit()
        self.exclude_edit.setPlaceholderText("genes never to pick")
        form.addRow("Exclude:", self.exclude_edit)
        self.panel_method = QComboBox()
        self.panel_method.addItems(["modules", "hvg", "random"])
        form.addRow("Method:", self.panel_method)
        lay.addLayout(form)
        self.panel_button = self.action_button(
            "Design panel",
            self.design_panel,
            "Ranked by the ticked sections' expression (none ticked: the files beside the "
            "model folder)",
        )
        self.save_panel_button = QPushButton("Save CSV ...")
        self.save_panel_button.setEnabled(False)
        self.save_panel_button.clicked.connect(lambda *_: self.save_panel())
        row = QHBoxLayout()
        row.addWidget(self.panel_button)
        row.addWidget(self.save_panel_button)
        lay.addLayout(row)
        self.panel_table = _table(["gene", "module", "variability", "pick"])
        lay.addWidget(self.panel_table, 1)
        return tab

    def _proximity_tab(self) -> QWidget:
        tab = QWidget()
        lay = QVBoxLayout(tab)
        form = QFormLayout()
        self.celltype_choice = QComboBox()
        self.region_choice = QComboBox()
        form.addRow("Cell types:", self.celltype_choice)
        form.addRow("Regions:", self.region_choice)
        self.radius = QDoubleSpinBox(minimum=1.0, maximum=1000.0, value=30.0, suffix=" um")
        self.shift = QDoubleSpinBox(minimum=0.0, maximum=5000.0, value=100.0, suffix=" um")
        self.n_shifts = QSpinBox(minimum=1, maximum=100000, value=1000)
        self.pvalue = QComboBox()
        self.pvalue.addItems(["empirical", "normal"])
        row = QHBoxLayout()
        row.addWidget(self.radius)
        row.addWidget(self.shift)
        form.addRow("Pair within / shift:", row)
        row = QHBoxLayout()
        row.addWidget(self.n_shifts)
        row.addWidget(self.pvalue)
        form.addRow("Shifts / p-value:", row)
        lay.addLayout(form)
        self.proximity_button = self.action_button("Run proximity", self.run_proximity)
        lay.addWidget(self.proximity_button)
        self.region_view = QComboBox()
        self.region_view.currentTextChanged.connect(lambda _: self.show_region())
        lay.addWidget(self.region_view)
        self.heatmap = _Plot(260)
        self.heatmap.message("no proximity result yet")
        self.heatmap.canvas.mpl_connect("button_press_event", self._on_heatmap_click)
        lay.addWidget(self.heatmap)
        self.pair_table = _table(["region", "type a", "type b", "obs", "exp", "z", "q"])
        self.pair_table.cellClicked.connect(self._on_table_click)
        lay.addWidget(self.pair_table)
        return tab

    def _choose_model(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "FuseMap model folder")
        if d:
            self.model_edit.setText(d)

    def _refresh_columns(self) -> None:
        adatas = [ly.metadata["adata"] for ly in self.section_list.ticked_layers()]
        cols = gs.categorical_columns(adatas)
        for combo, extra in ((self.celltype_choice, []), (self.region_choice, [NO_REGION])):
            keep = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(extra + cols)
            if keep in extra + cols:
                combo.setCurrentText(keep)
            combo.blockSignals(False)
        for guess, combo in (("celltype", self.celltype_choice), ("region", self.region_choice)):
            if combo.currentText() in ("", NO_REGION) and guess in cols:
                combo.setCurrentText(guess)

    def _ticked(self, with_x: bool = True):
        layers = self.section_list.ticked_layers()
        return layers, [snapshot(ly.metadata["adata"], with_x=with_x) for ly in layers]

    @property
    def model_dir(self) -> str:
        return self.model_edit.text().strip()

    # ------------------------------------------------------------------ modules
    def find_modules(self):
        if self.busy:
            return None
        res = float(self.resolution.value())
        self._last_umap = self.umap_box.isChecked()
        return self.start_job(
            gs.find_modules_job,
            self.model_dir,
            resolution="auto" if res == 0 else res,
            umap=self._last_umap,
            on_done=self._on_modules,
            what="gene modules",
            total=12,
        )

    def _on_modules(self, modules) -> None:
        self.session.modules = modules
        _fill(self.module_table, self.session.module_rows())
        self.draw_gene_map()
        self.set_status(
            f"{len(modules.table)} genes in {modules.n_modules} modules (resolution "
            f"{modules.resolution:g}); written to modules.csv in the model folder"
        )

    def draw_gene_map(self) -> None:
        gm = self.session.modules
        if gm is None:
            return
        if not self._last_umap:
            self.gene_map.message(f"{gm.n_modules} modules (gene UMAP off)")
            return
        from matplotlib import colormaps

        ax = self.gene_map.axes()
        t = gm.table
        cmap = colormaps["tab20"]
        for k in range(1, gm.n_modules + 1):
            m = (t["module"] == k).to_numpy()
            ax.scatter(t["umap_x"][m], t["umap_y"][m], s=6, color=cmap((k - 1) % 20),
                       label=f"GM{k}")  # fmt: skip
            hubs = t[m & t["is_hub"].to_numpy()]
            for g, r in hubs.iterrows():
                ax.annotate(g, (r["umap_x"], r["umap_y"]), fontsize=6, color="#eeeeee")
        ax.legend(fontsize=5, markerscale=1.5, ncol=2, loc="best", framealpha=0.3)
        ax.set_title("gene UMAP by module (hub genes named)", color="#dddddd", fontsize=7)
        self.gene_map.canvas.draw_idle()

    def score_sections(self):
        if self.busy:
            return None
        if self.session.modules is None:
            self.fail("find the gene modules first")
            return None
        layers, adatas = self._ticked()
        if not layers:
            self.fail("tick the sections to score")
            return None
        self._score_layers = layers
        return self.start_job(
            gs.score_job,
            adatas,
            self.model_dir,
            self.session.modules,
            on_done=self._on_scores,
            what="module scores",
        )

    def _on_scores(self, frames) -> None:
        names = []
        for ly, obs in zip(self._score_layers, frames):
            if ly not in self.viewer.layers:
                continue
            ad = ly.metadata["adata"]
            for c in obs.columns:
                ad.obs[c] = obs[c].to_numpy()
            set_feature_columns(ly, {c: obs[c].to_numpy() for c in obs.columns})
            names.append(ly.name)
        self.session.scored = names
        keys = self.session.module_keys()
        self.module_choice.blockSignals(True)
        self.module_choice.clear()
        self.module_choice.addItems(keys)
        self.module_choice.blockSignals(False)
        self.show_module()
        self.set_status(f"module scores written to obs of {len(names)} section(s)")

    def show_module(self, key: str | None = None) -> None:
        """Colour the scored sections by ``obs[key]`` (default: the module chosen)."""
        key = key or self.module_choice.currentText()
        if not key:
            return
        for ly in self.viewer.layers:
            if ly.name in self.session.scored and key in ly.metadata["adata"].obs:
                paint(ly, self.session.score_colors(ly.metadata["adata"], key))
                ly.metadata["color_by"] = key

    # ------------------------------------------------------------------ panel
    def design_panel(self):
        if self.busy:
            return None
        _, adatas = self._ticked()
        return self.start_job(
            gs.panel_job,
            self.model_dir,
            int(self.panel_size.value()),
            self.include_edit.text(),
            self.exclude_edit.text(),
            self.panel_method.currentText(),
            adatas,
            on_done=self._on_panel,
            what="panel",
        )

    def _on_panel(self, panel) -> None:
        self.session.panel = panel
        t = panel.table
        _fill(self.panel_table, t[["gene", "module", "variability", "pick"]].itertuples(False))
        self.save_panel_button.setEnabled(True)
        self.set_status(" ".join(panel.lines()))

    def save_panel(self, path: str | None = None):
        """Write the panel CSV (asks where when ``path`` is None)."""
        from ..workflows import analyses as wf

        if self.session.panel is None:
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save panel", "panel.csv", "CSV (*.csv)")
            if not path:
                return None
        try:
            out = wf.write_panel(self.session.panel, path)
        except Exception as exc:  # noqa: BLE001 - one message for the user
            self.fail(f"could not save the panel: {exc}")
            return None
        self.set_status(f"wrote {out}")
        return out

    # ------------------------------------------------------------------ proximity
    def _settings(self):
        from ..analyses import ProximitySettings

        return ProximitySettings(
            radius_um=float(self.radius.value()),
            shift_um=float(self.shift.value()),
            n_shifts=int(self.n_shifts.value()),
            pvalue=self.pvalue.currentText(),
        )

    def run_proximity(self):
        if self.busy:
            return None
        layers, adatas = self._ticked(with_x=False)
        if not layers:
            self.fail("tick the sections to analyse")
            return None
        celltype = self.celltype_choice.currentText()
        region = self.region_choice.currentText()
        region = None if region in ("", NO_REGION) else region
        if not celltype:
            self.fail("the ticked sections have no label column for cell types")
            return None
        self._prox_layers = layers
        self._prox_keys = (celltype, region)
        settings = self._settings()
        return self.start_job(
            gs.proximity_job,
            adatas,
            celltype,
            region,
            settings,
            on_done=self._on_proximity,
            what="proximity",
            total=settings.n_shifts,
            unit="shifts",
        )

    def _on_proximity(self, result) -> None:
        self.session.proximity = result
        self.session.proximity_keys = self._prox_keys
        self.session.highlighted = None
        self.region_view.blockSignals(True)
        self.region_view.clear()
        self.region_view.addItems(self.session.regions())
        top = self.session.table()
        if len(top):  # open on the region of the best-ranked pair
            self.region_view.setCurrentText(str(top["region"].iloc[0]))
        self.region_view.blockSignals(False)
        self.show_region()
        self.set_status(result.lines(top=0)[0])

    def show_region(self, region: str | None = None) -> None:
        """Heatmap of z and the ranked table of ``region`` (default: the one chosen)."""
        region = region or self.region_view.currentText()
        if self.session.proximity is None or not region:
            return
        m = self.session.heatmap(region)
        q = self.session.heatmap(region, "q_value").to_numpy()
        ax = self.heatmap.axes()
        v = float(np.abs(m.to_numpy()).max()) if m.size else 1.0
        ax.imshow(m.to_numpy(), cmap="RdBu_r", vmin=-max(v, 1e-6), vmax=max(v, 1e-6))
        yy, xx = np.nonzero(q < self.session.proximity.result.params["alpha"])
        ax.scatter(xx, yy, s=4, color="black")
        ax.set_xticks(range(len(m)), m.columns, rotation=90, fontsize=6)
        ax.set_yticks(range(len(m)), m.index, fontsize=6)
        ax.set_title(f"{region}: z (dots q < 0.05; click a cell)", color="#dddddd", fontsize=7)
        self.heatmap.fig.tight_layout()
        self.heatmap.canvas.draw_idle()
        t = self.session.table(region)
        rows = t[["region", "type_a", "type_b", "observed", "expected", "z", "q_value"]]
        _fill(self.pair_table, rows.itertuples(False))

    def _on_heatmap_click(self, event) -> None:
        if event.inaxes is None or event.xdata is None or self.session.proximity is None:
            return
        region = self.region_view.currentText()
        pair = self.session.pair_at(region, int(round(event.ydata)), int(round(event.xdata)))
        if pair is not None:
            self.highlight_pair(region, *pair)

    def _on_table_click(self, row: int, _col: int) -> None:
        items = [self.pair_table.item(row, j) for j in range(3)]
        if all(items):
            self.highlight_pair(*(it.text() for it in items))

    def highlight_pair(self, region: str, type_a: str, type_b: str):
        """Paint the cells of the pair (region, a, b): type a red, type b blue (a job)."""
        if self.session.proximity is None:
            return None
        celltype, region_key = self.session.proximity_keys
        layers = [ly for ly in self._prox_layers if ly in self.viewer.layers]
        adatas = [snapshot(ly.metadata["adata"], with_x=False) for ly in layers]
        self.session.highlighted = (region, type_a, type_b)
        return self.start_job(
            gs.pair_cells_job,
            adatas,
            celltype,
            region_key,
            region,
            type_a,
            type_b,
            float(self.session.proximity.result.params["radius_um"]),
            on_done=lambda masks, ls=layers: self._on_pair_cells(ls, masks),
            what="highlight",
            show_progress=False,
        )

    def _on_pair_cells(self, layers, masks) -> None:
        n = 0
        for ly, (ma, mb) in zip(layers, masks):
            if ly in self.viewer.layers:
                paint(ly, self.session.pair_colors(len(ma), ma, mb))
                n += int(ma.sum() + mb.sum())
        region, a, b = self.session.highlighted
        self.set_status(f"{region}: {a} (red) - {b} (blue): {n} cells within the radius")
        self.highlighted_cells = n
