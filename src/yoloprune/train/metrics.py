"""The per-epoch metrics of a training run: the running means of an epoch and the `metrics.csv` table.

`metrics.csv` holds one row per completed epoch (see `METRIC_COLUMNS`); `gamma_first` holds the
signed γ vector of the first considered BN layer as a JSON list, `gamma_hist` the counts of |γ| per
bin of `gamma_hist_edges` (log-spaced, see `sparsity.GAMMA_HIST_EDGES`). `sparsity` is the s the
epoch ran at (raised by a sparsity target as it goes), `sparse_macs_share` the share of the penalised
channels' MACs whose |γ| is below `--sparsity-target-threshold` after it (`sparsity.sparse_macs_share`).
The trainer rewrites it whole from the history kept in `last.pt` after every epoch, so a resumed run
never loses or repeats rows.

No torch here: plots and reports read metrics.csv without it.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any, Sequence

from yoloprune.fileio import atomic_write_text

METRIC_COLUMNS = (
    "epoch",
    "lr",
    "loss",
    "loss_box",
    "loss_obj",
    "loss_cls",
    "sparsity",
    "img_per_s",
    "epoch_s",
    "map50",
    "map",
    "precision",
    "recall",
    "gamma_q0",
    "gamma_q25",
    "gamma_q50",
    "gamma_q75",
    "gamma_q100",
    "gamma_frac_small",
    "sparse_macs_share",
    "gamma_first_layer",
    "gamma_first",
    "gamma_hist",
    "gamma_hist_edges",
)

# Columns stored as JSON lists, and those that are whole numbers; every other column is a float.
_LIST_COLUMNS = ("gamma_first", "gamma_hist", "gamma_hist_edges")
_INT_COLUMNS = ("epoch", "gamma_first_layer")


class EpochMeter:
    """Sums of the loss parts over an epoch's images, for per-image means and the throughput."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.images = 0
        self.start = time.perf_counter()

    def add(self, loss: float, parts: dict[str, float], batch_size: int) -> None:
        """`loss` is already a sum over the batch's images; `parts` are per-image means."""
        self.images += batch_size
        self.sums["loss"] = self.sums.get("loss", 0.0) + loss
        for name, value in parts.items():
            self.sums[name] = self.sums.get(name, 0.0) + value * batch_size

    def mean(self, name: str) -> float:
        return self.sums.get(name, 0.0) / max(self.images, 1)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def _format_csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return json.dumps([round(float(v), 6) for v in value])
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_metrics_csv(path: Path, rows: Sequence[dict]) -> None:
    """The whole table, atomically (it is small; rewriting keeps it consistent with the checkpoint)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(METRIC_COLUMNS)
    for row in rows:
        writer.writerow([_format_csv_value(row.get(column)) for column in METRIC_COLUMNS])
    atomic_write_text(path, buffer.getvalue())


def read_metrics_csv(path: str | Path) -> list[dict]:
    """Rows of a metrics.csv with numbers parsed and `gamma_first` decoded from JSON."""
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for raw in csv.DictReader(handle):
            row: dict = {}
            for key, text in raw.items():
                if text == "":
                    row[key] = None
                elif key in _LIST_COLUMNS:
                    row[key] = json.loads(text)
                elif key in _INT_COLUMNS:
                    row[key] = int(text)
                else:
                    row[key] = float(text)
            rows.append(row)
    return rows
