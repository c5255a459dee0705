"""The reference vectors ship with the tests (issue 19, point 8): the equivalence tests run from
any clone, and no test reads a folder outside the repository."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import VECTORS

TESTS = Path(__file__).resolve().parent


def test_every_case_and_its_expected_values_are_in_the_repository() -> None:
    ag = sorted(p.name for p in (VECTORS / "ag").glob("case_*.json"))
    easg = sorted(p.name.split(".")[0] for p in (VECTORS / "easg").glob("case_*.json*"))
    assert ag == [f"case_{i:03d}.json" for i in range(16)]
    assert easg == [f"case_{i:03d}" for i in range(8)]
    expected = json.loads((VECTORS / "ag_expected.json").read_text())
    assert {f"{name}.json" for name in expected} == set(ag)
    assert set(json.loads((VECTORS / "easg_expected.json").read_text())) == set(easg)
    readme = (VECTORS / "README.md").read_text()
    assert "## Provenance" in readme and "BasicSceneGraphEvaluator" in readme


def test_no_test_reads_a_folder_beside_the_repository() -> None:
    pattern = re.compile(r"""\.\./shared|parent\s*/\s*["']shared["']|M3SGG_VECTORS""")
    offenders = [
        str(path.relative_to(TESTS))
        for path in TESTS.rglob("*.py")
        if path.name != Path(__file__).name and pattern.search(path.read_text())
    ]
    assert offenders == []
