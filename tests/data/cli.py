"""The data_preprocess CLIs run in this process (so a test can monkeypatch what they call),
and what a folder holds, to tell that a run wrote nothing."""

import hashlib
import importlib.util
import os

from tests.conftest import REPO


def run_cli(name: str, *argv, capsys=None) -> tuple[int, str]:
    """(exit code, stderr) of data_preprocess/NAME.py main(argv)."""
    path = os.path.join(REPO, "data_preprocess", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"data_preprocess_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if capsys is not None:
        capsys.readouterr()
    code = module.main([str(a) for a in argv])
    return code, capsys.readouterr().err if capsys is not None else ""


def snapshot(folder) -> dict[str, str]:
    """{path relative to folder: sha256} of every file under it (symlinks as their target)."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return found


def one_error_line(stderr: str) -> str:
    """The single line a failed CLI writes (asserted to be one line starting with error:)."""
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    return stderr.strip()
