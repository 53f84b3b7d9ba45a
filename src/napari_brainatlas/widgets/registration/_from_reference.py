"""The Registration dock's "From a reference" panel (issue 22): register every section
with no clicks, from a FuseMap model trained on registered reference sections.

Pick the model folder (``embed``'s ``<out>/model``; the registered, embedded reference
sections are the ``.h5ad`` files beside it unless chosen), the depth of the transferred
labels, and press "Register all": one worker maps every section onto the model,
transfers CCF labels and registers each section with them
(:func:`napari_brainatlas.workflows.register_reference.register_from_reference`; the
midline is estimated and the position scanned unless the user drew a midline, which is
kept as a constraint, as is each section's hemisphere). Every placed section gets its
CCF keys and the transferred labels (``ccf_division_transfer`` and its uncertainty,
also as layer features to colour by); the table lists the sections least confident
first, clicking a row shows that section with its template and its own labels compared
with the CCF regions it landed in. "Candidates" lists the scan's best positions of the
section shown (also after "Estimate position", outline only): "Go" fits it again there.

A mixin of :class:`~._dock.RegistrationWidget`.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidgetItem,
)

from .._base import snapshot
from .._notify import show_error

__all__ = ["REFERENCE_COLUMNS", "FromReferenceMixin"]

#: columns of the from-reference table
REFERENCE_COLUMNS = ("section", "conf.", "position", "candidates")
#: label depths offered
DEPTHS = ("division", "fine", "layer", "field", "nucleus", "subdivision")


class FromReferenceMixin:
    """The From-a-reference panel of the Registration dock (see the module docstring)."""

    def _from_reference_box(self) -> QGroupBox:
        box = QGroupBox("From a reference (no clicks)")
        form = QFormLayout(box)
        self.model_edit = QLineEdit()
        self.model_edit.setPlaceholderText("FuseMap model folder of a registered reference")
        self.model_edit.setToolTip(
            "A FuseMap model folder (embed's <out>/model) trained on registered reference "
            "sections (obs['ccf_id']); their .h5ad files beside it are the reference"
        )
        browse = QPushButton("...")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._choose_model)
        row = QHBoxLayout()
        row.addWidget(self.model_edit, 1)
        row.addWidget(browse)
        form.addRow("Model:", row)
        self.reference_edit = QLineEdit()
        self.reference_edit.setPlaceholderText("reference .h5ad files (default: beside the model)")
        form.addRow("Reference:", self.reference_edit)
        self.depth_combo = QComboBox()
        self.depth_combo.addItems(list(DEPTHS))
        self.depth_combo.setToolTip(
            "Also transfer labels at this level (the placement uses the major divisions)"
        )
        self.map_epochs_spin = QSpinBox()
        self.map_epochs_spin.setRange(1, 200)
        self.map_epochs_spin.setValue(15)
        self.map_epochs_spin.setToolTip("Query-mapping epochs")
        row = QHBoxLayout()
        row.addWidget(self.depth_combo)
        row.addWidget(self.map_epochs_spin)
        form.addRow("Labels / epochs:", row)
        self.register_all_button = self.action_button(
            "Register all",
            self.register_all_from_reference,
            "Map every section onto the reference model, transfer CCF labels and place each "
            "section with them (midline estimated and position scanned unless drawn)",
        )
        form.addRow(self.register_all_button)
        self.reference_table = self._table(REFERENCE_COLUMNS, 120, stretch=(0, 3))
        self.reference_table.itemSelectionChanged.connect(self._on_reference_pick)
        form.addRow(self.reference_table)
        self.candidate_combo = QComboBox()
        self.candidate_combo.setToolTip(
            "The best positions of the scan (an automatic position), best first, with "
            "their scores: pick one and Go to fit the section there"
        )
        self.candidate_button = self.action_button(
            "Go", self.go_to_candidate, "Fit the section again at the chosen candidate position"
        )
        row = QHBoxLayout()
        row.addWidget(self.candidate_combo, 1)
        row.addWidget(self.candidate_button)
        form.addRow("Candidates:", row)
        self.section_combo.currentTextChanged.connect(lambda *_: self._sync_candidates())
        return box

    def _choose_model(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "FuseMap model folder")
        if d:
            self.model_edit.setText(d)

    # ------------------------------------------------------------------ run
    def _reference_jobs(self) -> tuple[list, dict]:
        """Copies of every section (named as its layer) and the user's constraints: a
        drawn midline, the hemisphere."""
        sections, constraints = [], {}
        for ly in self.section_layers():
            a = snapshot(ly.metadata["adata"])
            meta = dict(a.uns.get("napari_brainatlas", {}) or {})
            meta["section"] = ly.name
            a.uns["napari_brainatlas"] = meta
            a.obs["section"] = ly.name
            sections.append(a)
            c = {"hemisphere": self.session.state(ly.name).clicks.hemisphere}
            if self.plane != "coronal":
                c["hemisphere"] = "both"
            mid = self.midline_xy_safe_for(ly.name)
            if mid is not None:
                c["midline"] = mid
            constraints[ly.name] = c
        return sections, constraints

    def midline_xy_safe_for(self, name: str):
        """The midline the user drew on section ``name``, or None."""
        try:
            return self.midline_xy(name)
        except Exception:  # noqa: BLE001 - a one-point line: as if none
            return None

    def register_all_from_reference(self, model: str | None = None):
        """Register every section from the reference (see the module docstring);
        returns the worker (None when refused)."""
        from ...workflows.register_reference import register_from_reference

        if model is not None:
            self.model_edit.setText(str(model))
        if self.busy:
            show_error("a registration or atlas load is still running")
            return None
        if self.atlas is None:
            show_error("load an atlas first (the one the reference was registered to)")
            return None
        folder = self.model_edit.text().strip()
        if not folder or not Path(folder).is_dir():
            self.fail("pick the FuseMap model folder of a registered reference")
            return None
        if not self.section_layers():
            self.fail("no section: open the sections to register first")
            return None
        refs = [p for p in self.reference_edit.text().replace(";", ",").split(",") if p.strip()]
        sections, constraints = self._reference_jobs()
        for name in constraints:
            self.session.set_status(name, "queued (from reference)")
        self._sync_batch_table()
        self.set_status(f"registering {len(sections)} section(s) from the reference ...")
        return self.start_job(
            register_from_reference,
            sections,
            self.atlas,
            folder,
            reference=[p.strip() for p in refs] or None,
            label_depth=self.depth_combo.currentText(),
            constraints=constraints,
            map_epochs=int(self.map_epochs_spin.value()),
            plane=self.plane,
            on_done=self._on_reference_done,
            what="registration from the reference",
            total=int(self.map_epochs_spin.value()) + 1 + len(sections),
            unit="steps",
        )

    def _on_reference_done(self, res) -> None:
        """Each placed section: the fit (undoable), its CCF keys and the transferred
        labels written into the layer; the table, doubtful sections first."""
        for name, why in res.failed.items():
            self.session.set_status(name, f"failed: {why}")
        for reg in res.registered:
            sec = self.section_layer(reg.name)
            if sec is None:
                continue
            kept = self._kept(sec)
            self.session.fitted(
                reg.name, reg.result, adata=sec.metadata["adata"], kept=kept,
                status="from reference",
            )  # fmt: skip
            out = self.session.accept(reg.name, sec.metadata["adata"], self.atlas, kept=kept)
            feats = sec.features.copy()
            for key in res.label_keys:
                for col in (key, f"{key}_uncertainty"):
                    out.obs[col] = reg.adata.obs[col].to_numpy()
                    feats[col] = reg.adata.obs[col].to_numpy()
            for k in ("X_fusemap_cell", "X_fusemap_tissue"):
                if k in reg.adata.obsm:
                    out.obsm[k] = reg.adata.obsm[k]
            for col in ("ccf_id", "ccf_acronym"):
                feats[col] = out.obs[col].to_numpy()
            out.uns["ccf_label_transfer"] = reg.adata.uns.get("ccf_label_transfer", {})
            sec.metadata["adata"] = out
            sec.features = feats
            self.session.set_status(reg.name, "from reference")
        self._reference_result = res
        self._sync_reference_table()
        self._sync_batch_table()
        doubt = res.doubtful()
        if doubt:
            self.section_combo.setCurrentText(doubt[0])
        if self.result is not None:
            self._show_result(self.result)
            # the transferred labels next to the CCF regions the cells landed in
            self._refresh_compare_columns()
            self.set_compare_column(res.label_keys[0])
        self._sync_candidates()
        self.set_status(
            f"from the reference: {len(res.registered)} placed, {len(res.failed)} failed; "
            + (f"check first: {', '.join(doubt)}" if doubt else "none doubtful")
        )

    # ------------------------------------------------------------------ tables
    def _sync_reference_table(self) -> None:
        res = getattr(self, "_reference_result", None)
        rows = [] if res is None else res.table()
        t = self.reference_table
        t.blockSignals(True)
        t.setRowCount(len(rows))
        for r, row in enumerate(rows):
            conf = row["confidence"]
            pos = row["position_um"]
            vals = (
                row["section"],
                f"{conf:.2f}" + (" !" if row["doubtful"] else ""),
                "" if pos != pos else f"{pos:.0f}",
                row["candidates_um"] or row["note"],
            )
            for c, v in enumerate(vals):
                item = QTableWidgetItem(v)
                item.setFlags(Qt.ItemIsEnabled | Qt.ItemIsSelectable)
                item.setToolTip(row["note"] or v)
                t.setItem(r, c, item)
        t.blockSignals(False)

    def reference_rows(self) -> list[tuple[str, ...]]:
        t = self.reference_table
        return [
            tuple(t.item(r, c).text() if t.item(r, c) else "" for c in range(t.columnCount()))
            for r in range(t.rowCount())
        ]

    def _on_reference_pick(self) -> None:
        rows = {i.row() for i in self.reference_table.selectedItems()}
        if len(rows) == 1:
            item = self.reference_table.item(rows.pop(), 0)
            if item is not None and item.text() != self.section_name:
                self.section_combo.setCurrentText(item.text())

    # ------------------------------------------------------------------ candidates
    def _sync_candidates(self) -> None:
        res = self.session.result(self.section_name)
        cands = list(getattr(res, "candidates", None) or [])
        self.candidate_combo.clear()
        for c in cands:
            self.candidate_combo.addItem(
                f"{c['position_um']:.0f} um ({c.get('by', '')} {c['score']:.3f})",
                float(c["position_um"]),
            )

    def go_to_candidate(self):
        """Fit the current section again at the chosen candidate position (searched
        around it when 'refine position' is on); returns the worker."""
        pos = self.candidate_combo.currentData()
        if pos is None:
            self.fail("no candidate positions: estimate the position first")
            return None
        self.set_position(float(pos))
        return self.register(position_um=float(pos))
