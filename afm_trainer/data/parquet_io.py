"""Reading and writing the pipeline's files: one error line for bad input, atomic writes
for output (temp file, then rename), and the output sets of the converters.

An output set (``OutputSet``) is the files one run writes beside its report
(``OUT.parquet``, ``OUT.parquet.rejects.jsonl``, ``OUT.parquet.report.json``; a split's
shards and ``split.report.json``). No path of it may be an input of the run
(``refuse_overwriting_inputs``: a symlink, ``./x`` or a hard link to an input counts).
Every file is written to a temporary first; only when all are written is the earlier
run's report removed, then the earlier run's files this run does not write, then the
temporaries renamed, the report last. The report names the sha256 and row count of each
file of the set, so a report beside files it does not describe is detectable, and a run
killed while renaming leaves no report at all. A failed write (a full disk) leaves no
temporary file and the earlier set as it was, and is one error line naming the output.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq


class InputError(Exception):
    """An input file that cannot be used as a whole (one line for the user, exit 1)."""

    exit_code = 1


class UsageError(InputError):
    """Arguments that cannot work together, such as an output that is an input: one line,
    exit 2 (argparse's exit code for usage errors), nothing written."""

    exit_code = 2


class OutputError(InputError):
    """An output that cannot be written (a full disk, no permission): one line naming it, exit 1."""


def fail(exc: InputError) -> int:
    """A CLI's one error line for ``exc``; returns the exit code."""
    print(f"error: {exc}", file=sys.stderr)
    return exc.exit_code


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


def cannot_write(path: str, exc: OSError) -> OutputError:
    """The one error line of a failed write: the output and the system's reason."""
    return OutputError(f"cannot write {path}: {exc.strerror or exc}")


def write_rows(rows: list[dict], schema: pa.Schema, path: str) -> None:
    """``path`` atomically: written to a temporary, renamed when complete; a failed write
    leaves no temporary and ``path`` as it was (OutputError naming it)."""
    try:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path + ".tmp")
        os.replace(path + ".tmp", path)
    except OSError as exc:
        remove_quietly(path + ".tmp")
        raise cannot_write(path, exc) from None


def write_json(value, path: str) -> None:
    """``path`` atomically, as ``write_rows`` writes a parquet file."""
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(value, f, indent=2)
        os.replace(path + ".tmp", path)
    except OSError as exc:
        remove_quietly(path + ".tmp")
        raise cannot_write(path, exc) from None


# --- outputs that are inputs ----------------------------------------------------------


def input_paths(spec: str) -> list[str]:
    """The paths an input argument names: the file or folder itself, or a glob's matches."""
    if not os.path.exists(spec) and glob.has_magic(spec):
        return sorted(glob.glob(spec))
    return [spec]


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):  # symlinks, ./x, another spelling
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:  # one of them does not exist
        return False


def _inside(path: str, folder: str) -> bool:
    return os.path.realpath(path).startswith(os.path.realpath(folder).rstrip(os.sep) + os.sep)


def refuse_overwriting_inputs(inputs, outputs, output_folders=()) -> None:
    """UsageError, before anything is written, if a file the run writes or removes
    (``outputs``, each with its temporary ``PATH.tmp``) resolves to one of its inputs (a
    file, or a glob's matches; None is skipped), or if an input lies inside a folder the
    run fills (``output_folders``)."""
    named = [path for spec in inputs if spec for path in input_paths(str(spec))]
    for output in [written for path in map(str, outputs) for written in (path, path + ".tmp")]:
        for path in named:
            if _same_file(output, path):
                resolved = os.path.realpath(path)
                shown = path if resolved == os.path.abspath(path) else f"{path} (that is, {resolved})"
                raise UsageError(f"the output {output} would overwrite the input {shown}: give another output name")
    for folder in map(str, output_folders):
        for path in named:
            if _same_file(folder, path) or _inside(path, folder):
                raise UsageError(
                    f"the input {path} is inside {folder}, which this run writes: move it, or write elsewhere"
                )


# --- output sets ----------------------------------------------------------------------


def describe_file(path: str, name: str | None = None) -> dict:
    """{"sha256", "rows"} of a written file: rows of a parquet file, lines of a JSONL one
    (``name``: the name it will have, when ``path`` is its temporary)."""
    digest, lines = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            lines += chunk.count(b"\n")
    name = name or path
    rows = pq.read_metadata(path).num_rows if name.endswith(".parquet") else lines
    return {"sha256": digest.hexdigest(), "rows": rows}


def files_named_by(report_path: str) -> list[str]:
    """The files an earlier run's report describes (its ``files``); [] without one."""
    try:
        with open(report_path, encoding="utf-8") as f:
            files = json.load(f).get("files")
    except (OSError, ValueError, AttributeError):
        return []
    folder = os.path.dirname(os.path.abspath(report_path))
    return [os.path.join(folder, name) for name in files] if isinstance(files, dict) else []


class OutputSet:
    """The files one run writes (``files``) and its ``report``, replaced together (the
    module's docstring says how). ``stale``: files of an earlier run told apart by their
    names (a split's shards), removed at the commit; ``companions``: files an earlier run
    may have written beside these that this one does not: removed if the earlier report
    names them, else the run is refused while one exists (it may be the user's).

        with OutputSet(report, [out, rejects], inputs=[input_file]) as outputs:
            write(outputs.tmp(out)) ...
            outputs.commit(report_dict)

    Leaving the block by an exception removes every temporary; an OSError (a full disk)
    leaves it as an OutputError naming the output."""

    def __init__(self, report: str, files: list[str], *, inputs=(), stale=(), companions=()):
        self.report, self.files = report, list(files)
        left = [path for path in companions if os.path.exists(path) and path not in self.files]
        self.stale = [path for path in stale if path not in self.files] + left
        refuse_overwriting_inputs(inputs, [*self.files, self.report, *self.stale])
        earlier = {os.path.realpath(path) for path in files_named_by(report)}
        for path in left:
            if os.path.realpath(path) not in earlier:
                raise UsageError(
                    f"{path} is there from an earlier run or someone else, and this run would not write it: "
                    "remove it, or give another output name"
                )
        self.extra_temporaries: list[str] = []

    @staticmethod
    def tmp(path: str) -> str:
        return path + ".tmp"

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, kind, exc, traceback) -> None:
        if exc is None:
            return
        self.discard()
        if isinstance(exc, OSError):  # a full disk: which file is rarely known (pyarrow does not say)
            target = next((p for p in [*self.files, self.report] if exc.filename in (p, self.tmp(p))), self.files[0])
            raise cannot_write(target, exc) from None

    def discard(self) -> None:
        remove_quietly(*map(self.tmp, [*self.files, self.report]), *self.extra_temporaries)

    def commit(self, report: dict) -> dict:
        """Write the report (with each file's sha256 and rows), then replace the earlier
        set: its report first, its files this run does not write, then the files, the
        report last. Returns the report as written."""
        folder = os.path.dirname(os.path.abspath(self.report))
        files = {os.path.relpath(os.path.abspath(p), folder): describe_file(self.tmp(p), p) for p in self.files}
        report = {**report, "files": files}
        try:
            with open(self.tmp(self.report), "w", encoding="utf-8") as f:
                json.dump(report, f, indent=2)
        except OSError as exc:
            raise cannot_write(self.report, exc) from None
        # Nothing below writes data: a full disk has failed the run before this point.
        remove_quietly(self.report, *self.stale)
        for path in self.files:
            os.replace(self.tmp(path), path)
        os.replace(self.tmp(self.report), self.report)
        return report


# --- rejects --------------------------------------------------------------------------


def reject_line(where: str, reason: str, record, **fields) -> str:
    """One line of a rejects file: where the record was, the reason, the record itself.
    A record that cannot be written back as JSON (nested too deep, an integer too long
    for text) is named by its place alone, with why its copy is missing."""
    entry = {"where": where, **fields, "reason": reason, "record": record}
    try:
        return json.dumps(entry, default=str) + "\n"
    except (RecursionError, ValueError) as exc:
        entry["record"] = None
        entry["record_not_copied"] = unreadable_reason(exc) or str(exc)
        return json.dumps(entry, default=str) + "\n"


def unreadable_reason(exc: BaseException) -> str | None:
    """The reason for a record Python cannot hold or write whole (nested too deep, an
    integer of too many digits), or None for any other exception."""
    if isinstance(exc, RecursionError):
        return "nested too deep to read or write (past Python's recursion limit)"
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        return f"holds an integer of more than {sys.get_int_max_str_digits()} digits"
    return None
