"""Allen Human Brain Atlas: donors -> parcel x gene expression (abagen's defaults).

* :func:`fetch_donors` - download donors (ids, names or "all") into a folder; returns
  their folders (already complete ones are not downloaded again).
* :func:`ahba_expression` - donor folders + a parcellation in MNI space + abagen's probe
  re-annotation -> :class:`AhbaTable`: ``table`` (parcels x genes, values in [0, 1] after
  the scaled robust sigmoid; index = atlas label id, first column ``region``: the
  parcel's name), the engine's :class:`~napari_brainatlas.ahba.AHBAResult` (report,
  matched samples in MNI mm, probes), and the report lines to show.
* :func:`write_ahba` - the table as .csv (and the report as JSON), atomically.

``progress(done, 100, {"message": step})``: ``done`` is the percentage reached; for
:func:`fetch_donors` ``progress(bytes_done, bytes_total, {"donor": id})``. ``cancel()``
is polled between the steps.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .._errors import BrainAtlasInputError
from ..jobs import ProgressFn, check_cancel, report
from .outputs import check_output_file

__all__ = ["AhbaTable", "ahba_expression", "fetch_donors", "write_ahba"]


def fetch_donors(
    donors: str | Sequence[str],
    data_dir="ahba-data",
    *,
    timeout: float = 30.0,
    progress: ProgressFn | None = None,
) -> list[Path]:
    """Download ``donors`` into ``data_dir`` (seconds of ``timeout`` for the server)."""
    from ..ahba import fetch_ahba

    def show(donor, done, total):
        report(progress, done, total or None, donor=str(donor))

    return list(fetch_ahba(donors, data_dir, timeout=timeout, progress=show))


@dataclass
class AhbaTable:
    """The parcel x gene table (with a ``region`` column) and the engine's result."""

    table: pd.DataFrame
    result: object  # AHBAResult

    def lines(self) -> list[str]:
        """What each step kept and dropped, one line per step."""
        return [r["text"] for r in self.result.report]

    def summary(self, where="") -> str:
        shape = f"{self.table.shape[0]} parcels x {self.table.shape[1] - 1} genes"
        return shape + (f" -> {where}" if where else "")


def ahba_expression(
    donors: Sequence,
    *,
    atlas,
    probes_reannotated,
    atlas_info=None,
    corrected_mni=None,
    ibf_threshold: float = 0.5,
    tolerance: float = 2.0,
    progress: ProgressFn | None = None,
    cancel=None,
) -> AhbaTable:
    """Process donor folders into a parcel x gene table (see the module docstring).

    ``atlas``: label NIfTI in MNI space (or a Parcellation), ``atlas_info`` its label
    table; ``corrected_mni``: abagen's corrected sample coordinates (recommended);
    ``ibf_threshold``: intensity-based filter; ``tolerance``: matching distance, mm.
    """
    from ..ahba import iter_process_ahba

    donors = list(donors)
    if not donors:
        raise BrainAtlasInputError("give AHBA donor folders (or fetch donors first)")
    steps = iter_process_ahba(
        donors,
        atlas,
        probes_reannotated,
        atlas_info=atlas_info,
        corrected_mni=corrected_mni,
        ibf_threshold=ibf_threshold,
        tolerance=tolerance,
    )
    while True:
        try:
            message, fraction = next(steps)
        except StopIteration as stop:
            res = stop.value
            break
        report(progress, round(100 * float(fraction)), 100, message=str(message))
        check_cancel(cancel)
    table = res.expression.copy()
    names = res.parcellation.names() if res.parcellation is not None else {}
    table.insert(0, "region", [names.get(int(i), "") for i in table.index])
    return AhbaTable(table, res)


def write_ahba(result: AhbaTable, out, *, report_path=None) -> list[Path]:
    """Write the table to ``out`` (.csv) and, with ``report_path``, the report as JSON."""
    from ..io import atomic_write_text

    paths = [
        atomic_write_text(result.table.to_csv(float_format="%.6g"), check_output_file(out, ".csv"))
    ]
    if report_path is not None:
        text = json.dumps(result.result.report, indent=1, default=str)
        paths.append(atomic_write_text(text, check_output_file(report_path, None)))
    return paths
