"""Every "CONTRACTS.md §n" in the repository points at a section docs/CONTRACTS.md has."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CITATION = re.compile(r"CONTRACTS(?:\.md)?\s*§\s*(\d+)(?:\s*[–-]\s*(\d+))?")
HEADING = re.compile(r"^## (\d+)\. ", re.MULTILINE)


def sections() -> set[int]:
    return {int(n) for n in HEADING.findall((REPO / "docs" / "CONTRACTS.md").read_text())}


def citations() -> list[tuple[str, int]]:
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    out = []
    for name in files:
        path = REPO / name
        if path.suffix in {".gz", ".png", ".parquet"} or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for m in CITATION.finditer(text):
            first = int(m.group(1))
            last = int(m.group(2) or first)
            out.extend((f"{name}: {m.group(0)}", n) for n in range(first, last + 1))
    return out


def test_the_contracts_are_numbered_one_meaning_per_section() -> None:
    numbers = [int(n) for n in HEADING.findall((REPO / "docs" / "CONTRACTS.md").read_text())]
    assert numbers == list(range(1, len(numbers) + 1))


def test_every_citation_names_an_existing_section() -> None:
    found = citations()
    assert len(found) > 40  # the code, docs and manifests do cite it
    missing = [where for where, n in found if n not in sections()]
    assert not missing, missing
