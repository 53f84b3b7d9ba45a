"""The AHBA dock widget: process Allen Human Brain Atlas donors and show a gene.

Processing runs as a job of the dock base (:func:`._jobs.process_ahba`: progress in
percent with the step's message, Cancel between steps); layers are added and changed
only in the GUI thread. Shows the matched samples as a 3D Points layer in MNI mm
coloured by the chosen gene and the parcellation painted by the gene's regional values
(Image layer with the atlas affine, so both line up).
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
    QLineEdit,
    QListWidget,
    QPushButton,
    QVBoxLayout,
)

from ..colors import continuous_colors
from . import _jobs
from ._base import DockBase
from ._common import find_layer
from ._notify import show_error

__all__ = ["sample_point_size", "AHBAWidget"]

POINTS_NAME = "AHBA samples"
IMAGE_NAME = "AHBA parcels"


#: on-screen size of a sample point in pixels (min, max): never a screen-filling disc
#: when zoomed in, never invisible when zoomed out
CANVAS_SIZE_LIMITS = (3, 18)


def sample_point_size(xyz) -> float:
    """Diameter (mm) for the sample points: 0.8 x the median distance between
    neighbouring samples, within 0.2-3 mm (a tissue sample is a few mm across). On the
    3,702 samples of the six donors (abagen's corrected MNI coordinates) the median
    neighbour distance is 2.6 mm, so points are 2.1 mm: neighbours do not merge."""
    from scipy.spatial import cKDTree

    xyz = np.asarray(xyz, float)
    if len(xyz) < 2:
        return 3.0
    d, _ = cKDTree(xyz).query(xyz, k=2)
    gap = float(np.median(d[:, 1]))
    return float(np.clip(0.8 * gap, 0.2, 3.0)) if np.isfinite(gap) and gap > 0 else 3.0


class AHBAWidget(DockBase):
    """Dock widget: donor folders + atlas + re-annotation table -> regional expression."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.result = None
        self.gene: str | None = None
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

        self.run_button = self.action_button(
            "Process",
            self.run,
            "Re-annotate, filter, select probes, match samples, "
            "normalise and aggregate (abagen's defaults)",
        )
        root.addLayout(self.run_row(self.run_button))
        root.addWidget(self.progress)
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
    def run(self):
        """Start processing in a worker thread (inputs from the widget); returns the
        worker (None on bad input)."""
        if self.busy:
            return None
        donors = self.donor_paths()
        atlas = self.atlas_edit.text().strip()
        reannot = self.reannot_edit.text().strip()
        if not donors:
            show_error("add at least one AHBA donor folder")
            return None
        if not atlas or not reannot:
            show_error("choose the atlas image and the probe re-annotation table")
            return None
        return self.start_job(
            _jobs.process_ahba,
            donors,
            atlas,
            self.atlas_info_edit.text().strip() or None,
            reannot,
            self.corrected_edit.text().strip() or None,
            on_done=self._on_done,
            what="AHBA processing",
            total=100,
            unit="%",
        )

    def _on_done(self, res) -> None:
        if res is None:
            return
        self.result = res
        drops = "; ".join(r["text"] for r in res.report if r["step"] in ("ibf", "aggregation"))
        self.set_status(
            f"{res.samples.n_obs} samples, {res.expression.shape[1]} genes, "
            f"{res.expression.shape[0]} parcels. {drops}"
        )
        genes = [str(g) for g in res.expression.columns]
        self._gene_model.setStringList(genes)
        self.gene_edit.setEnabled(True)
        first = self.gene if self.gene in genes else genes[0]
        self.gene_edit.setText(first)
        self.show_gene(first)

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
        size = sample_point_size(xyz)
        if pts is None:
            pts = self.viewer.add_points(
                xyz,
                name=POINTS_NAME,
                size=size,
                face_color=colors,
                features=feats,
                border_width=0,
                canvas_size_limits=CANVAS_SIZE_LIMITS,
            )
        else:
            pts.data = xyz
            pts.features = feats
            pts.face_color = colors
            pts.size = size
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
        self.set_status(f"{gene}: samples and parcels coloured by normalised expression (0-1)")

    def _layer(self, name):
        return find_layer(self.viewer, name)
