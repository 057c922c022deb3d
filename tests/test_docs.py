"""The docs a clone reads: every reference to docs/semantics.md names an anchor the page has, and nothing
points to documents outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEMANTICS = ROOT / "docs" / "semantics.md"
#: "docs/semantics.md#sites, #places" → sites, places; "[text](#lens)" inside the page → lens
REFERENCE = re.compile(r"semantics\.md((?:#[\w-]+)(?:,? #[\w-]+)*)")
LOCAL_LINK = re.compile(r"\]\(#([\w-]+)\)")


def sources() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "tools").glob("*.py"))]
    for folder, patterns in (("rlsteer", ("*.py", "*.yaml")), ("tests", ("*.py",)), ("bench", ("*.py",))):
        for pattern in patterns:
            files += sorted((ROOT / folder).rglob(pattern))
    return files


def anchors() -> set[str]:
    return set(re.findall(r'<a id="([\w-]+)"></a>', SEMANTICS.read_text(encoding="utf-8")))


def test_every_reference_to_the_semantics_page_names_an_existing_anchor():
    known = anchors()
    assert {"steering", "objective", "templates", "evaluation", "persistence", "token-shift"} <= known
    missing = []
    for path in sources():
        text = path.read_text(encoding="utf-8")
        names = [name for group in REFERENCE.findall(text) for name in re.findall(r"#([\w-]+)", group)]
        if path == SEMANTICS:
            names += LOCAL_LINK.findall(text)
        missing += [f"{path.relative_to(ROOT)}: #{name}" for name in names if name not in known]
    assert not missing, missing


def test_no_reference_points_outside_the_repository():
    outside = ("DESIGN §", "reference-semantics", "../shared")
    hits = [f"{path.relative_to(ROOT)}: {needle!r}" for path in sources() if path != Path(__file__)
            for needle in outside if needle in path.read_text(encoding="utf-8")]
    assert not hits, hits
