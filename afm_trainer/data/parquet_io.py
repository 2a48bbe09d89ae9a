"""Reading and writing the pipeline's parquet files: one error line for bad input,
atomic writes for output (temp file, then rename)."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq


class InputError(Exception):
    """An input file that cannot be used as a whole (one line for the user, exit 1)."""


def read_table(path: str, required_column: str | None = None, hint: str = "") -> pa.Table:
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for missing or non-parquet files
        raise InputError(f"cannot read {path}: {exc}") from None
    if required_column and required_column not in table.column_names:
        raise InputError(f"{path} has no `{required_column}` column" + (f" ({hint})" if hint else ""))
    return table


def check_output_file(path: str) -> None:
    """An output file's folder is made if missing; a folder where the file should go is an error."""
    if os.path.isdir(path):
        raise InputError(f"output {path} is a folder; give a file name (e.g. {os.path.join(path, 'out.parquet')})")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise InputError(f"cannot write {path}: {folder} is a file, not a folder")
    os.makedirs(folder, exist_ok=True)


def check_output_dir(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"output folder {path} is a file")
    os.makedirs(path, exist_ok=True)


def remove_quietly(*paths: str) -> None:
    """Remove temporary files a failed step leaves behind."""
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def write_rows(rows: list[dict], schema: pa.Schema, path: str) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path + ".tmp")
    os.replace(path + ".tmp", path)
