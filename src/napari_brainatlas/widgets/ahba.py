"""The AHBA dock widget: process Allen Human Brain Atlas donors and show a gene.

Processing runs in a napari ``thread_worker`` (a generator: it yields progress); layers
are added and changed only in the main thread (the worker's ``yielded`` / ``returned``
callbacks). Shows the matched samples as a 3D Points layer in MNI mm coloured by the
chosen gene and the parcellation painted by the gene's regional values (Image layer with
the atlas affine, so both line up).
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QStringListModel, Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QCompleter,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..colors import continuous_colors
from ._notify import one_line, show_error

__all__ = ["AHBAWidget"]

POINTS_NAME = "AHBA samples"
IMAGE_NAME = "AHBA parcels"


class _Failed:
    """What the worker returns instead of raising (one notification, not a traceback)."""

    def __init__(self, message: str):
        self.message = message


def _process(donors, atlas, atlas_info, reannotated, corrected):
    """Worker body (generator): yields (message, fraction), returns the result."""
    from ..ahba.pipeline import iter_process_ahba

    try:
        gen = iter_process_ahba(
            donors, atlas, reannotated, atlas_info=atlas_info, corrected_mni=corrected
        )
        while True:
            try:
                yield next(gen)
            except StopIteration as stop:
                return stop.value
    except Exception as exc:  # noqa: BLE001 - every failure becomes one notification
        return _Failed(one_line(exc, context="AHBA processing failed: "))


class AHBAWidget(QWidget):
    """Dock widget: donor folders + atlas + re-annotation table -> regional expression."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.result = None
        self.gene: str | None = None
        self._workers: list = []
        self.busy = False
        self._build_ui()

    # ------------------------------------------------------------------ UI
    def _path_row(self, form, label, placeholder, tip, folder=False, filt=""):
        row = QHBoxLayout()
        edit = QLineEdit()
        edit.setPlaceholderText(placeholder)
        edit.setToolTip(tip)
        btn = QPushButton("...")
        btn.setToolTip(f"Choose the {label.lower()}")
        btn.setMaximumWidth(32)

        def choose():
            if folder:
                p = QFileDialog.getExistingDirectory(self, label)
            else:
                p, _ = QFileDialog.getOpenFileName(self, label, "", filt)
            if p:
                edit.setText(p)

        btn.clicked.connect(choose)
        row.addWidget(edit, 1)
        row.addWidget(btn)
        form.addRow(label, row)
        return edit

    def _build_ui(self) -> None:
        root = QVBoxLayout(self)
        root.setContentsMargins(4, 4, 4, 4)

        box = QGroupBox("Donors")
        lay = QVBoxLayout(box)
        self.donor_list = QListWidget()
        self.donor_list.setToolTip(
            "AHBA donor folders (MicroarrayExpression.csv, PACall.csv,"
            " Probes.csv, SampleAnnot.csv, Ontology.csv)"
        )
        self.donor_list.setMaximumHeight(90)
        lay.addWidget(self.donor_list)
        row = QHBoxLayout()
        self.add_button = QPushButton("Add folder...")
        self.add_button.setToolTip("Add a donor folder (or a folder holding donor folders)")
        self.add_button.clicked.connect(self._choose_donor)
        self.remove_button = QPushButton("Remove")
        self.remove_button.setToolTip("Remove the selected donor folders")
        self.remove_button.clicked.connect(self._remove_selected)
        row.addWidget(self.add_button)
        row.addWidget(self.remove_button)
        lay.addLayout(row)
        root.addWidget(box)

        box = QGroupBox("Atlas and tables")
        form = QFormLayout(box)
        self.atlas_edit = self._path_row(
            form,
            "Atlas",
            "label NIfTI in MNI space",
            "Parcellation image, e.g. atlas-desikankilliany.nii.gz",
            filt="NIfTI (*.nii *.nii.gz)",
        )
        self.atlas_info_edit = self._path_row(
            form,
            "Labels",
            "csv: id, label, hemisphere, structure",
            "The atlas label table",
            filt="csv (*.csv)",
        )
        self.reannot_edit = self._path_row(
            form,
            "Probes",
            "reannotated.csv.gz",
            "abagen's probe re-annotation table",
            filt="csv (*.csv *.csv.gz)",
        )
        self.corrected_edit = self._path_row(
            form,
            "MNI fix",
            "optional: corrected_mni_coordinates.csv.gz",
            "Corrected MNI coordinates of the samples (recommended)",
            filt="csv (*.csv *.csv.gz)",
        )
        root.addWidget(box)

        row = QHBoxLayout()
        self.run_button = QPushButton("Process")
        self.run_button.setToolTip(
            "Re-annotate, filter, select probes, match samples, "
            "normalise and aggregate (abagen's defaults)"
        )
        self.run_button.clicked.connect(lambda: self.run())
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        row.addWidget(self.run_button)
        row.addWidget(self.progress, 1)
        root.addLayout(row)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        root.addWidget(self.status)

        box = QGroupBox("Show")
        form = QFormLayout(box)
        self.gene_edit = QLineEdit()
        self.gene_edit.setPlaceholderText("gene symbol")
        self.gene_edit.setToolTip("Colour samples and parcels by this gene")
        self._gene_model = QStringListModel([])
        comp = QCompleter(self._gene_model, self)
        comp.setCaseSensitivity(Qt.CaseInsensitive)
        comp.setFilterMode(Qt.MatchContains)
        comp.activated.connect(lambda text: self.show_gene(text))
        self.gene_edit.setCompleter(comp)
        self.gene_edit.returnPressed.connect(lambda: self.show_gene(self.gene_edit.text()))
        self.gene_edit.setEnabled(False)
        form.addRow("Gene", self.gene_edit)
        self.view3d = QCheckBox("3D view")
        self.view3d.setChecked(True)
        form.addRow(self.view3d)
        root.addWidget(box)
        root.addStretch(1)

    def _choose_donor(self) -> None:
        p = QFileDialog.getExistingDirectory(self, "AHBA donor folder")
        if p:
            self.add_donor(p)

    def add_donor(self, path) -> None:
        path = str(path)
        if path not in self.donor_paths():
            self.donor_list.addItem(path)

    def donor_paths(self) -> list[str]:
        return [self.donor_list.item(i).text() for i in range(self.donor_list.count())]

    def _remove_selected(self) -> None:
        for item in self.donor_list.selectedItems():
            self.donor_list.takeItem(self.donor_list.row(item))

    # ------------------------------------------------------------------ run
    def run(self) -> None:
        """Start processing in a worker thread (inputs from the widget)."""
        if self.busy:
            return
        donors = self.donor_paths()
        atlas = self.atlas_edit.text().strip()
        reannot = self.reannot_edit.text().strip()
        info = self.atlas_info_edit.text().strip() or None
        corrected = self.corrected_edit.text().strip() or None
        if not donors:
            show_error("add at least one AHBA donor folder")
            return
        if not atlas or not reannot:
            show_error("choose the atlas image and the probe re-annotation table")
            return
        from napari.qt.threading import create_worker

        worker = create_worker(
            _process, donors, atlas, info, reannot, corrected, _start_thread=False
        )
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_done)
        worker.errored.connect(lambda exc: self._on_done(_Failed(one_line(exc))))
        worker.finished.connect(lambda: self._forget(worker))
        self._workers.append(worker)
        self._set_busy(True)
        self.progress.setValue(0)
        worker.start()

    def _forget(self, worker) -> None:
        if worker in self._workers:
            self._workers.remove(worker)

    def _set_busy(self, busy: bool) -> None:
        self.busy = busy
        self.run_button.setEnabled(not busy)

    def _on_progress(self, item) -> None:
        msg, frac = item
        self.progress.setValue(int(np.rint(100 * frac)))
        self.status.setText(str(msg))

    def _on_done(self, res) -> None:
        self._set_busy(False)
        if isinstance(res, _Failed):
            self.status.setText(res.message)
            show_error(res.message)
            return
        if res is None:
            return
        self.result = res
        self.progress.setValue(100)
        drops = "; ".join(r["text"] for r in res.report if r["step"] in ("ibf", "aggregation"))
        self.status.setText(
            f"{res.samples.n_obs} samples, {res.expression.shape[1]} genes, "
            f"{res.expression.shape[0]} parcels. {drops}"
        )
        genes = [str(g) for g in res.expression.columns]
        self._gene_model.setStringList(genes)
        self.gene_edit.setEnabled(True)
        first = self.gene if self.gene in genes else genes[0]
        self.gene_edit.setText(first)
        self.show_gene(first)

    def wait_for_workers(self, timeout_ms: int = 60000) -> None:
        """Block until running workers end (tests, closing)."""
        from qtpy.QtCore import QCoreApplication, QElapsedTimer

        t = QElapsedTimer()
        t.start()
        while self._workers and t.elapsed() < timeout_ms:
            QCoreApplication.processEvents()

    # ------------------------------------------------------------------ show
    def show_gene(self, gene: str) -> None:
        """Colour the sample points and paint the parcels by ``gene`` (main thread)."""
        if self.result is None:
            return
        gene = str(gene).strip()
        cols = {str(g).lower(): str(g) for g in self.result.expression.columns}
        if gene.lower() not in cols:
            show_error(f"gene {gene!r} is not in the processed data")
            return
        gene = cols[gene.lower()]
        self.gene = gene
        res = self.result
        s = res.samples
        vals = np.asarray(s[:, gene].X).ravel()
        colors, _clim = continuous_colors(vals, clim=(0.0, 1.0))
        xyz = np.asarray(s.obsm["spatial_mni"], float)
        feats = {
            "donor": s.obs["donor"].astype(str).to_numpy(),
            "region": s.obs["region"].astype(str).to_numpy(),
            gene: vals,
        }
        pts = self._layer(POINTS_NAME)
        if pts is None:
            pts = self.viewer.add_points(
                xyz, name=POINTS_NAME, size=3.0, face_color=colors, features=feats, border_width=0
            )
        else:
            pts.data = xyz
            pts.features = feats
            pts.face_color = colors
        pts.metadata["ahba_gene"] = gene
        painted = None
        if res.parcellation is not None:
            from ..ahba.parcellation import paint_parcellation

            painted = paint_parcellation(res.parcellation, res.expression[gene])
            img = self._layer(IMAGE_NAME)
            if img is None:
                img = self.viewer.add_image(
                    painted,
                    name=IMAGE_NAME,
                    colormap="viridis",
                    contrast_limits=(0.0, 1.0),
                    affine=res.parcellation.affine,
                    opacity=0.5,
                    blending="translucent",
                )
                # keep the points above the volume
                self.viewer.layers.move(self.viewer.layers.index(img), 0)
            else:
                img.data = painted
            img.metadata["ahba_gene"] = gene
        if self.view3d.isChecked() and self.viewer.dims.ndisplay != 3:
            self.viewer.dims.ndisplay = 3
        self.status.setText(f"{gene}: samples and parcels coloured by normalised expression (0-1)")

    def _layer(self, name):
        for layer in self.viewer.layers:
            if layer.name == name:
                return layer
        return None
