"""The README's module table names every module of the package, so that it stays true as modules come."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "cryptomon"


def test_every_module_has_its_line_in_the_readme():
    readme = ROOT.joinpath("README.md").read_text()
    table = readme[readme.index("### Modules") :]
    named = set(re.findall(r"`([\w/]+\.py)`", table[: table.index("\n\n", table.index("| module |"))]))
    modules = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    assert modules - named == set(), "modules missing from the README's module table"
    assert named - modules == set(), "the README's module table names modules that do not exist"
