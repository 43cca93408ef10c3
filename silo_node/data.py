"""Reading the institution's table: CSV or Parquet, only the columns a job names, numeric only."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq


class DataError(ValueError):
    """The data source cannot serve the job; the message says what to fix."""


@dataclass
class LocalData:
    features: np.ndarray  # (n, f) float64
    labels: np.ndarray | None  # (n,) int64
    ids: list[str] | None
    feature_names: list[str]
    source_fingerprint: str  # hash of the path and size: names the dataset in the audit log, reveals nothing

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])


def read_table(path: Path, fmt: str | None = None) -> pa.Table:
    if not path.exists():
        raise DataError(f"data file {path} does not exist; check [data].path in node.toml")
    kind = fmt or ("parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv")
    try:
        if kind == "parquet":
            return pq.read_table(path)
        return pacsv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read {path} as {kind}: {exc}") from None


def column_names(path: Path, fmt: str | None = None) -> list[str]:
    return list(read_table(path, fmt).column_names)


def _numeric(table: pa.Table, name: str, path: Path) -> np.ndarray:
    column = table.column(name)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_boolean(column.type):
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
    else:
        try:
            values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            row, bad = _first_non_numeric(column.to_pylist())
            raise DataError(
                f"column {name!r} in {path} holds non-numeric values (row {row + 1}: {str(bad)[:20]!r}); "
                f"encode it numerically before training"
            ) from None
    if np.isnan(values).any():
        row = int(np.flatnonzero(np.isnan(values))[0])
        raise DataError(f"column {name!r} in {path} has a missing value at row {row + 1}")
    return values


def _first_non_numeric(values: list[object]) -> tuple[int, object]:
    for row, value in enumerate(values):
        try:
            float(str(value))
        except ValueError:
            return row, value
    return 0, values[0] if values else None


def load_columns(
    path: Path, features: list[str], label: str | None, id_column: str | None = None, fmt: str | None = None
) -> LocalData:
    table = read_table(path, fmt)
    wanted = list(features) + ([label] if label else []) + ([id_column] if id_column else [])
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise DataError(
            f"{path} has no column(s) {', '.join(repr(c) for c in missing)}; it has {', '.join(table.column_names)}"
        )
    x = np.column_stack([_numeric(table, c, path) for c in features]) if features else np.zeros((table.num_rows, 0))
    y = _numeric(table, label, path).astype(np.int64) if label else None
    ids = [str(v) for v in table.column(id_column).to_pylist()] if id_column else None
    stat = path.stat()
    fingerprint = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return LocalData(x, y, ids, list(features), fingerprint)


def split(data: LocalData, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/validation row indices."""
    order = np.random.default_rng(seed).permutation(data.rows)
    n_val = round(data.rows * validation_fraction)
    if data.rows - n_val < 1:
        raise DataError("too few rows to train after holding out the validation split")
    return np.sort(order[n_val:]), np.sort(order[:n_val])
