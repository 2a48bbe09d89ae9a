"""The README stays a guide and the documentation site stays whole: README.md is at most
300 lines and lists every command, and mkdocs.yml's nav and docs/ hold the same pages
(`make docs` builds them with mkdocs --strict)."""

import glob
import os
import re

import yaml

from tests.conftest import REPO

README = os.path.join(REPO, "README.md")
DOCS = os.path.join(REPO, "docs")


def _readme() -> str:
    with open(README, encoding="utf-8") as f:
        return f.read()


def _nav_pages(nav) -> list[str]:
    """Every page path in a mkdocs nav (lists of pages, {title: page} and {title: [...]})."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in _nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in _nav_pages(value)]
    raise AssertionError(f"unexpected nav entry {nav!r}")


def test_readme_is_at_most_300_lines():
    lines = _readme().count("\n")
    assert lines <= 300, f"README.md has {lines} lines; move the detail into docs/"


def test_every_docs_page_is_in_the_nav_and_every_nav_page_exists():
    with open(os.path.join(REPO, "mkdocs.yml"), encoding="utf-8") as f:
        config = yaml.safe_load(f)
    assert config["docs_dir"] == "docs"
    pages = _nav_pages(config["nav"])
    local = [p for p in pages if not re.match(r"^[a-z]+://", p)]
    assert len(local) == len(set(local)), "a page is in the nav twice"
    missing = [p for p in local if not os.path.isfile(os.path.join(DOCS, p))]
    assert not missing, f"in mkdocs.yml's nav but not in docs/: {missing}"
    on_disk = {os.path.relpath(p, DOCS) for p in glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True)}
    left_out = sorted(on_disk - set(local))
    assert not left_out, f"in docs/ but not in mkdocs.yml's nav: {left_out}"


def test_readme_lists_every_command():
    """Every recipe, data script, utility and benchmark, and every make target the
    Makefile's header documents, is named in the README ("Every command at a glance")."""
    readme = _readme()
    files = [
        *glob.glob(os.path.join(REPO, "recipes", "*.sh")),
        *glob.glob(os.path.join(REPO, "data_preprocess", "*.py")),
        *glob.glob(os.path.join(REPO, "data_preprocess", "*.sh")),
        *glob.glob(os.path.join(REPO, "scripts", "*.py")),
        *glob.glob(os.path.join(REPO, "scripts", "*.sh")),
        *glob.glob(os.path.join(REPO, "benchmarks", "*.py")),
    ]
    stems = {os.path.splitext(os.path.basename(f))[0] for f in files} - {"__init__"}
    assert stems, "no commands found"
    unnamed = sorted(s for s in stems if not re.search(rf"\b{re.escape(s)}\.(py|sh)\b", readme))
    assert not unnamed, f"commands the README does not name: {unnamed}"

    with open(os.path.join(REPO, "Makefile"), encoding="utf-8") as f:
        targets = set(re.findall(r"^# make ([a-z][a-z0-9-]*)", f.read(), flags=re.M))
    assert targets, "no documented make targets found"
    unlisted = sorted(t for t in targets if not re.search(rf"`make {re.escape(t)}`", readme))
    assert not unlisted, f"make targets the README does not list: {unlisted}"
