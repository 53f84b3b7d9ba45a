"""The Registration dock's "All sections" panel: the batch table, "register the rest"
and series interpolation.

"Register the rest" fits every section without a fit with the dock's settings (plane,
position, iterations, options), each with its own midline, hemisphere, flip, start pose
and cutting angles; a section without a midline
(unless asked), with implausible units, or whose tissue is far smaller than the
template slice's (a crop) is skipped with the reason in the table, never stretched over
a whole-brain slice. "Interpolate the rest" takes two or more fitted sections of an
ordered series (the layer order) and places the others between them by the composition
of their region labels (position and cutting angles), then fits each in that plane.

A mixin of :class:`~._dock.RegistrationWidget`.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QCheckBox, QGroupBox, QHBoxLayout, QTableWidgetItem, QVBoxLayout

from ..._errors import BrainAtlasInputError
from .._base import snapshot
from .._notify import one_line
from .session import BATCH_COLUMNS

__all__ = ["BatchMixin"]


class BatchMixin:
    """The All-sections panel of the Registration dock (see the module docstring)."""

    def _batch_box(self) -> QGroupBox:
        box = QGroupBox("All sections")
        lay = QVBoxLayout(box)
        self.batch_table = self._table(BATCH_COLUMNS, 140, stretch=(0, 1))
        self.batch_table.itemSelectionChanged.connect(self._on_batch_pick)
        lay.addWidget(self.batch_table)
        self.no_midline_check = QCheckBox("fit sections without a midline (rotation sweep)")
        self.no_midline_check.setToolTip(
            "Off: a section without a midline (and with no start pose) is skipped. On: it "
            "is fitted as a full section by the rotation sweep"
        )
        lay.addWidget(self.no_midline_check)
        self.batch_button = self.action_button(
            "Register the rest",
            self.register_rest,
            "Fit every section without a fit with these settings (each with its own midline, "
            "hemisphere, flip, start pose and cutting angles); crops and sections without a "
            "midline are skipped with a reason",
        )
        self.series_button = self.action_button(
            "Interpolate the rest",
            self.interpolate_rest,
            "Series: place the sections without a fit between the fitted ones (two or more, "
            "in layer order) by their region composition, then fit each in that plane",
        )
        row = QHBoxLayout()
        row.addWidget(self.batch_button)
        row.addWidget(self.series_button)
        lay.addLayout(row)
        return box

    # ------------------------------------------------------------------ table
    def _sync_batch_table(self) -> None:
        rows = self.session.batch_rows([ly.name for ly in self.section_layers()])
        t = self.batch_table
        t.blockSignals(True)
        t.setRowCount(len(rows))
        for r, vals in enumerate(rows):
            res = self.session.result(vals[0])
            for c, v in enumerate(vals):
                item = QTableWidgetItem(v)
                item.setFlags(Qt.ItemIsEnabled | Qt.ItemIsSelectable)
                tip = v
                if c == 3 and res is not None and "boundary_median_um" in res.metrics:
                    tip = (
                        f"Dice {v}; median edge distance {res.metrics['boundary_median_um']:.1f} um"
                    )
                item.setToolTip(tip)
                t.setItem(r, c, item)
        t.blockSignals(False)

    def batch_rows(self) -> list[tuple[str, ...]]:
        t = self.batch_table
        return [
            tuple(t.item(r, c).text() if t.item(r, c) else "" for c in range(t.columnCount()))
            for r in range(t.rowCount())
        ]

    def _on_batch_pick(self) -> None:
        """Picking a row shows that section."""
        rows = {i.row() for i in self.batch_table.selectedItems()}
        if len(rows) == 1:
            item = self.batch_table.item(rows.pop(), 0)
            if item is not None and item.text() != self.section_name:
                self.section_combo.setCurrentText(item.text())

    # ------------------------------------------------------------------ batch
    def _batch_jobs(self, names, per_section: dict | None = None) -> list:
        """(name, cells copy, options) per section: the dock's settings, the section's
        own clicks, and ``per_section[name]`` on top."""
        jobs = []
        for name in names:
            try:
                mid = self.midline_xy(name)
            except BrainAtlasInputError:  # a one-point line: as if none
                mid = None
            kw = self.fit_options(name, position_um=self.position_um, midline=mid)
            hemi = self.session.state(name).clicks.hemisphere
            kw["hemisphere"] = hemi if self.plane == "coronal" else "both"
            kw.update((per_section or {}).get(name, {}))
            adata = self.section_layer(name).metadata["adata"]
            jobs.append((name, snapshot(adata, with_x=False), kw))
        return jobs

    def _start_batch(self, jobs, what: str, done_status: str):
        from ._tasks import register_sections

        self.session.queue([j[0] for j in jobs])
        self._sync_batch_table()
        self.set_status(f"{what}: {len(jobs)} section(s) ...")
        return self.start_job(
            register_sections,
            jobs,
            self.atlas,
            allow_no_midline=self.no_midline_check.isChecked(),
            done_status=done_status,
            on_done=lambda out: self._on_batch_done(out, done_status),
            on_progress=self._on_batch_item,
            what=what,
            total=len(jobs),
            unit="sections",
        )

    def register_rest(self):
        """Register every section without a fit (see the module docstring); returns the
        worker."""
        if self._check_ready() is None:
            return None
        names = self.session.unregistered([ly.name for ly in self.section_layers()])
        if not names:
            self.set_status("every section is registered already")
            return None
        return self._start_batch(self._batch_jobs(names), "batch registration", "fitted")

    def interpolate_rest(self, region_key: str | None = None):
        """Place the sections without a fit between the fitted ones of the series (layer
        order) by region composition (``region_key``, default the compared column, else
        'region'), then fit each in its plane; returns the worker."""
        from ...workflows.register import interpolate_series

        if self._check_ready() is None:
            return None
        layers = self.section_layers()
        names = [ly.name for ly in layers]
        known = {
            n: (r.position_um, tuple(r.angles_deg))
            for n, r in self.session.results().items()
            if n in names
        }
        key = region_key or self.compare_column or "region"
        try:
            plan = interpolate_series(
                [snapshot(ly.metadata["adata"], with_x=False) for ly in layers],
                known,
                region_key=key,
                order=names,
                atlas=self.atlas,
                plane=self.plane,
            )
        except BrainAtlasInputError as exc:
            self.fail(one_line(exc))
            return None
        todo = plan.unplaced()
        if not todo:
            self.set_status("every section of the series is registered already")
            return None
        per = {}
        for n in todo:
            pos, ang = plan.plane_of(n)
            per[n] = {"position_um": pos, "angles_deg": ang, "refine_position": False}
        self._series_plan = plan
        what = f"series interpolation ({plan.spacing} spacing)"
        return self._start_batch(self._batch_jobs(todo, per), what, "fitted (interpolated)")

    def _on_batch_item(self, done: int, total, info: dict) -> None:
        name = info.get("section")
        if name:
            self.session.set_status(name, str(info.get("status", "")))
            self._sync_batch_table()

    def _on_batch_done(self, outcomes: dict, done_status: str = "fitted") -> None:
        counts: dict[str, int] = {}
        for name, out in outcomes.items():
            if isinstance(out, str):
                self.session.set_status(name, out)
                key = out.split(":")[0]
            else:
                sec = self.section_layer(name)
                adata = sec.metadata["adata"] if sec is not None else None
                self.session.fitted(
                    name, out, adata=adata, kept=self._kept(sec), status=done_status
                )
                if name == self.section_name:
                    self._show_result(out)
                else:
                    self.update_agreement(name)
                key = "fitted"
            counts[key] = counts.get(key, 0) + 1
        self.overlays.show_only(self.section_name)
        self._sync_batch_table()
        summary = ", ".join(f"{n} {k}" for k, n in counts.items())
        self.set_status(f"finished: {summary}")
