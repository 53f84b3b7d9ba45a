"""The Registration dock's "Check" panel: QC that can fail visibly.

The section's own labels (any text column the user picks: ``region``, ``tissue``,
``ClusterName`` ...) are compared with the CCF region each cell landed in
(:func:`~napari_brainatlas.workflows.register_qc.label_agreement`): the cells in atlas
space are coloured agree / disagree (not by the region they land in, which always
"matches"), a table gives the agreement per label, the region outlines at the chosen
ontology level (major divisions by default) lie on top of the cells, hovering a cell
shows its id, its own label, the region it landed in and the verdict; Blink and a
checkerboard (template and the section's own labels, tile by tile) make a shifted fit
obvious. Accept / Undo / Reset, the state files and the QuickNII export sit here too.

A mixin of :class:`~._dock.RegistrationWidget` (it uses the dock's session, overlays,
atlas and layers).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
)

from .._notify import show_error
from ._overlays import CHECKER, COLOR_MODES, cell_colors

__all__ = ["NO_COLUMN", "QCMixin"]

NO_COLUMN = "(none)"
AGREEMENT_COLUMNS = ("label", "cells", "agree", "landed mostly in")


def _hrow(*widgets) -> QHBoxLayout:
    row = QHBoxLayout()
    for w in widgets:
        row.addWidget(QLabel(w) if isinstance(w, str) else w)
    return row


class QCMixin:
    """The Check panel of the Registration dock (see the module docstring)."""

    # ------------------------------------------------------------------ UI
    def _check_box(self) -> QGroupBox:
        box = QGroupBox("Check")
        form = QFormLayout(box)
        self.compare_combo = QComboBox()
        self.compare_combo.setToolTip(
            "The section's own labels to compare with the CCF region each cell landed in "
            "(atlas acronyms are compared by the ontology; other labels side by side)"
        )
        self.compare_combo.addItem(NO_COLUMN)
        self.compare_combo.currentTextChanged.connect(self._on_compare_changed)
        form.addRow("Own labels:", self.compare_combo)
        self.level_combo = QComboBox()
        self.level_combo.setToolTip("Ontology level of the outlines and of the comparison")
        self.level_combo.currentTextChanged.connect(self._on_level_changed)
        self.color_combo = QComboBox()
        self.color_combo.addItems(list(COLOR_MODES))
        self.color_combo.setToolTip("What colours the cells in atlas space")
        self.color_combo.setCurrentText("one colour")
        self.color_combo.currentTextChanged.connect(lambda _: self._redraw_cells())
        form.addRow("Level:", self.level_combo)
        form.addRow("Colour by:", self.color_combo)
        self.blink_button = QPushButton("Blink")
        self.blink_button.setCheckable(True)
        self.blink_button.setToolTip("Show and hide the cells over the template")
        self.blink_button.toggled.connect(self.set_blink)
        self.checker_button = QPushButton("Checkerboard")
        self.checker_button.setCheckable(True)
        self.checker_button.setToolTip(
            "The template and the section's own labels, tile by tile: a shifted fit "
            "breaks the region boundaries at every tile edge"
        )
        self.checker_button.toggled.connect(self.set_checkerboard)
        form.addRow(_hrow(self.blink_button, self.checker_button))
        self.metrics_label = QLabel("no registration yet")
        self.metrics_label.setWordWrap(True)
        self.metrics_label.setMinimumHeight(self.metrics_label.fontMetrics().lineSpacing() * 5)
        self.metrics_label.setAlignment(Qt.AlignTop | Qt.AlignLeft)
        self.metrics_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        form.addRow(self.metrics_label)
        self.agreement_table = self._table(AGREEMENT_COLUMNS, 130)
        self.agreement_table.setToolTip("Per own label: how many of its cells landed where it says")
        form.addRow(self.agreement_table)
        self.accept_button = QPushButton("Accept")
        self.accept_button.setToolTip("Write ccf_coords, ccf_id, ccf_acronym into the section")
        self.accept_button.clicked.connect(lambda: self.accept())
        self.undo_button = QPushButton("Undo")
        self.undo_button.clicked.connect(lambda: self.undo())
        self.reset_button = QPushButton("Reset")
        self.reset_button.clicked.connect(lambda: self.reset())
        form.addRow(_hrow(self.accept_button, self.undo_button, self.reset_button))
        self.save_button = QPushButton("Save state...")
        self.save_button.clicked.connect(lambda: self.save_state())
        self.load_button = QPushButton("Load state...")
        self.load_button.clicked.connect(lambda: self.load_state())
        self.export_button = QPushButton("QuickNII...")
        self.export_button.setToolTip(
            "Export the registered sections as a QuickNII / VisuAlign series (JSON + a "
            "picture of each section's cells)"
        )
        self.export_button.clicked.connect(lambda: self.export_quicknii())
        form.addRow(_hrow(self.save_button, self.load_button, self.export_button))
        self._agreement = {}
        return box

    @staticmethod
    def _table(columns, max_height: int, stretch=None) -> QTableWidget:
        """A read-only table whose columns fit its width (no horizontal scrolling): the
        ``stretch`` columns (default the first and the last) share the width left by the
        others and elide their text (the whole text in the tooltip)."""
        t = QTableWidget(0, len(columns))
        t.setHorizontalHeaderLabels(list(columns))
        t.verticalHeader().setVisible(False)
        t.setEditTriggers(QAbstractItemView.NoEditTriggers)
        t.setSelectionBehavior(QAbstractItemView.SelectRows)
        t.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        t.setWordWrap(False)
        t.setTextElideMode(Qt.ElideMiddle)
        hdr = t.horizontalHeader()
        hdr.setMinimumSectionSize(30)
        hdr.setStretchLastSection(False)
        stretch = (0, len(columns) - 1) if stretch is None else tuple(stretch)
        for c in range(len(columns)):
            mode = QHeaderView.Stretch if c in stretch else QHeaderView.ResizeToContents
            hdr.setSectionResizeMode(c, mode)
        t.setMinimumHeight(70)
        t.setMaximumHeight(max_height)
        return t

    # ------------------------------------------------------------------ choices
    @property
    def level(self) -> str:
        from ...workflows.register_qc import MAJOR

        return self.level_combo.currentText() or MAJOR

    @property
    def compare_column(self) -> str | None:
        c = self.compare_combo.currentText()
        return None if c in ("", NO_COLUMN) else c

    def set_compare_column(self, column: str | None) -> None:
        """Compare the section's obs[column] with the landed regions (None: nothing)."""
        self.compare_combo.setCurrentText(column or NO_COLUMN)

    def _set_levels(self) -> None:
        from ...workflows.register_qc import MAJOR, level_choices

        self.level_combo.blockSignals(True)
        self.level_combo.clear()
        self.level_combo.addItems(level_choices(self.atlas.ontology))
        self.level_combo.setCurrentText(MAJOR)
        self.level_combo.blockSignals(False)

    def _refresh_compare_columns(self) -> None:
        """The current section's text columns; the previous choice kept when it has it,
        else its region / acronym column, else its first text column."""
        from ...workflows.register_qc import compare_columns, default_compare_column

        sec = self.section_layer()
        keep = self.compare_column
        cols, default = [], None
        if sec is not None:
            ad = sec.metadata["adata"]
            cols = compare_columns(ad)
            onto = self.atlas.ontology if self.atlas is not None else None
            default = keep if keep in cols else default_compare_column(ad, onto)
        self.compare_combo.blockSignals(True)
        self.compare_combo.clear()
        self.compare_combo.addItems([NO_COLUMN, *cols])
        self.compare_combo.setCurrentText(default or NO_COLUMN)
        self.compare_combo.blockSignals(False)
        self._default_color_mode()

    def _default_color_mode(self) -> None:
        mode = self.color_combo.currentText()
        if self.compare_column is None and mode in ("agreement", "own label"):
            self.color_combo.setCurrentText("one colour")
        elif self.compare_column is not None and mode == "one colour":
            self.color_combo.setCurrentText("agreement")

    def _on_compare_changed(self, _=None) -> None:
        self.color_combo.blockSignals(True)
        self._default_color_mode()
        self.color_combo.blockSignals(False)
        self._redraw_cells()

    def _on_level_changed(self, _=None) -> None:
        from ...workflows.register_qc import outline_image

        if self.atlas is not None and self.current_slice is not None:
            self.overlays.set_outline(
                outline_image(self.current_slice.labels, self.atlas.ontology, self.level)
            )
        self._redraw_cells()

    def _redraw_cells(self) -> None:
        name = self.section_name
        if self.session.result(name) is not None:
            self.update_agreement(name, draw=True)
            self.metrics_label.setText(self.metrics_text(self.session.result(name)))
        else:
            self._draw_pose_preview()

    # ------------------------------------------------------------------ agreement
    def _mapped(self, name: str):
        """(section layer, mapped cells (atlas-slice um), finest landed ids) of the fit."""
        res, sec = self.session.result(name), self.section_layer(name)
        if res is None or sec is None or self.atlas is None:
            return sec, None, None
        xy = np.asarray(sec.metadata["adata"].obsm["spatial"], float)[:, :2]
        mapped = res.transform(xy)
        return sec, mapped, res.slice_of(self.atlas).labels_at(mapped)

    def update_agreement(self, name: str, draw: bool = False):
        """Compare section ``name``'s own labels with its fit (stored for the batch
        table); with ``draw`` also colour its cells in atlas space, fill the table and
        the hover features. Returns the Agreement (None without a column or a fit)."""
        from ...workflows.register_qc import label_agreement

        sec, mapped, landed = self._mapped(name)
        if mapped is None:
            return None
        col = self.compare_column if name == self.section_name else self._column_of(sec)
        ag = None
        if col is not None and col in sec.metadata["adata"].obs:
            ag = label_agreement(
                sec.metadata["adata"].obs[col].to_numpy(),
                landed,
                self.atlas.ontology,
                column=col,
                level=self.level,
            )
            self._agreement[name] = ag
        else:
            self._agreement.pop(name, None)
        self.session.set_agreement(name, ag.overall if ag is not None else None)
        if draw:
            self._draw_mapped(sec, mapped, ag, landed)
            self._fill_agreement_table(ag)
            if self.checker_button.isChecked():
                self.set_checkerboard(True)
        return ag

    def _column_of(self, sec) -> str | None:
        """The column compared for a section that is not shown: the one chosen when it
        has it, else its default."""
        from ...workflows.register_qc import default_compare_column

        ad = sec.metadata["adata"]
        if self.compare_column is not None and self.compare_column in ad.obs:
            return self.compare_column
        return default_compare_column(ad, self.atlas.ontology)

    def _overall(self, name: str):
        ag = self._agreement.get(name)
        return ag.overall if ag is not None else None

    def agreement(self, name: str | None = None):
        """The current Agreement of a section (None before a fit or without a column)."""
        return self._agreement.get(name or self.section_name)

    def _draw_mapped(self, sec, mapped, agreement, landed=None) -> None:
        """Draw ``sec``'s cells at ``mapped`` in atlas space, coloured by the chosen mode,
        with hover features (cell id, own label, landed region, agreement)."""
        from ...workflows.register_qc import level_ids

        ad = sec.metadata["adata"]
        col = self.compare_column
        own = ad.obs[col].astype(str).to_numpy() if col is not None and col in ad.obs else None
        onto = self.atlas.ontology if self.atlas is not None else None
        lvl = level_ids(onto, landed, self.level) if landed is not None and onto else None
        rgba = cell_colors(
            self.color_combo.currentText(),
            agreement=agreement,
            own=own,
            landed_ids=lvl if lvl is not None else np.zeros(len(mapped), np.int64),
            ontology=onto,
        )
        feats = {"cell_id": np.asarray(ad.obs_names, dtype=object)}
        if agreement is not None:
            feats.update(agreement.hover())
        else:
            if own is not None:
                feats[col] = own
            if landed is not None and onto is not None:
                feats["landed region"] = onto.acronyms(landed)
        self.overlays.draw_cells(sec, mapped, rgba, pd.DataFrame(feats))
        ly = self.overlays.get(f"{sec.name} in atlas")
        if ly is not None:
            ly.visible = not self.checker_button.isChecked()

    def _fill_agreement_table(self, agreement) -> None:
        t = self.agreement_table
        if agreement is None:
            t.setRowCount(0)
            return
        rows = agreement.table
        t.setRowCount(len(rows))
        for r, row in enumerate(rows.itertuples(index=False)):
            vals = (row[0], f"{row[1]}", f"{100 * row[2]:.0f}%", row[3])
            for c, v in enumerate(vals):
                item = QTableWidgetItem(str(v))
                item.setFlags(Qt.ItemIsEnabled | Qt.ItemIsSelectable)
                item.setToolTip(str(v))
                if c == 2:
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                    if row[2] < 0.5:
                        item.setForeground(QColor(255, 90, 120))
                t.setItem(r, c, item)

    def agreement_rows(self) -> list[tuple[str, ...]]:
        """The agreement table as shown (tests, scripts)."""
        t = self.agreement_table
        return [
            tuple(t.item(r, c).text() if t.item(r, c) else "" for c in range(t.columnCount()))
            for r in range(t.rowCount())
        ]

    # ------------------------------------------------------------------ blink, checker
    def set_blink(self, on: bool) -> None:
        """Blink the cells in atlas space (or the checkerboard), to compare them with
        the template."""
        if on:
            self._blink_timer.start()
        else:
            self._blink_timer.stop()
            ly = self._blink_layer()
            if ly is not None:
                ly.visible = True
        if self.blink_button.isChecked() != on:
            self.blink_button.setChecked(on)

    def _blink_layer(self):
        if self.checker_button.isChecked():
            return self.overlays.get(CHECKER)
        return self.overlays.get(f"{self.section_name} in atlas")

    def _blink_tick(self) -> None:
        ly = self._blink_layer()
        if ly is not None:
            ly.visible = not ly.visible

    def set_checkerboard(self, on: bool) -> None:
        """Show the template and the section's own labels (atlas acronyms at the chosen
        level; the tissue otherwise) tile by tile in place of the cells."""
        from ...workflows.register_qc import (
            SECTION_TISSUE_ID,
            checkerboard,
            level_ids,
            own_label_ids,
            section_label_image,
        )

        name = self.section_name
        cells = self.overlays.get(f"{name} in atlas")
        sec, mapped, _ = self._mapped(name)
        if not on or mapped is None or self.current_slice is None:
            ly = self.overlays.get(CHECKER)
            if ly is not None:
                ly.visible = False
            if cells is not None:
                cells.visible = True
            if on and mapped is None:
                self.set_status("checkerboard: register the section first")
            if self.checker_button.isChecked() != on:
                self.checker_button.setChecked(on)
            return
        onto, sl = self.atlas.ontology, self.current_slice
        ids = np.full(len(mapped), SECTION_TISSUE_ID, dtype=np.int64)
        col = self.compare_column
        if col is not None:
            own, frac = own_label_ids(sec.metadata["adata"].obs[col].to_numpy(), onto)
            if frac >= 0.5:
                ids = np.where(own > 0, level_ids(onto, own, self.level), 0)
        img = section_label_image(mapped, ids, sl.labels.shape, sl.resolution_um)
        tmpl = level_ids(onto, sl.labels, self.level)
        tile = max(4, sl.labels.shape[1] // 12)
        self.overlays.show_checkerboard(
            checkerboard(tmpl, img, tile), sl.resolution_um, self._atlas_cmap
        )
        if cells is not None:
            cells.visible = False
        if not self.checker_button.isChecked():
            self.checker_button.setChecked(True)

    # ------------------------------------------------------------------ export
    def export_quicknii(self, path=None):
        """Write every registered section as a QuickNII / VisuAlign series (JSON and a
        PNG of each section's cells, in a worker). Without ``path`` a file dialog asks,
        starting in the user's registrations folder. Returns the worker."""
        from ._tasks import export_quicknii
        from .session import default_state_dir, safe_name

        results = self.session.results()
        if self.atlas is None or not results:
            show_error("nothing to export: register a section first")
            return None
        if path is None:
            folder = default_state_dir() / safe_name(self.atlas.name) / "quicknii"
            folder.mkdir(parents=True, exist_ok=True)
            path, _ = QFileDialog.getSaveFileName(
                self, "QuickNII / VisuAlign series", str(folder / "series.json"), "JSON (*.json)"
            )
            if not path:
                return None
        entries = []
        for ly in self.section_layers():
            res = results.get(ly.name)
            if res is None:
                continue
            xy = np.asarray(ly.metadata["adata"].obsm["spatial"], float)[:, :2]
            fc = np.asarray(ly.face_color, float)
            entries.append((res, xy, fc if fc.shape == (len(xy), 4) else None))
        self.set_status(f"exporting {len(entries)} section(s) for QuickNII ...")
        return self.start_job(
            export_quicknii,
            entries,
            self.atlas,
            Path(path),
            on_done=lambda paths: self.set_status(
                f"wrote {paths[0]} ({len(paths) - 1} section picture(s)): open it in "
                "QuickNII or VisuAlign"
            ),
            what="QuickNII export",
        )
