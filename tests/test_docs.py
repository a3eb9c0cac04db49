"""The front door and the docs stay true: README is short, its local links resolve, and every test
docs/reliability.md names as proof of a guarantee exists."""

import re

from conftest import ROOT

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)")


def test_readme_is_a_front_door_with_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 220
    setup = readme.split("```")[1].split("\n", 1)[1]  # the first code block (after its language): set-up
    commands = [line.split("#")[0].strip() for line in setup.splitlines() if line.split("#")[0].strip()]
    assert commands == ["make train", "make test"]


def test_every_local_link_of_readme_and_docs_resolves():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in LINK.findall(page.read_text()):
            if (
                "://" not in target
                and not target.startswith("mailto:")
                and not (page.parent / target).exists()
            ):
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_every_test_named_in_reliability_md_exists():
    text = (ROOT / "docs" / "reliability.md").read_text()
    sources = {
        p.relative_to(ROOT / "tests").as_posix(): p.read_text() for p in (ROOT / "tests").rglob("test_*.py")
    }
    missing, current = [], None
    for ref in re.findall(r"`((?:\w+/)?test_\w+\.py(?:::test_\w+)?|::test_\w+)", text):
        file, _, function = ref.partition("::")
        current = file or current
        if current not in sources or (function and f"def {function}(" not in sources[current]):
            missing.append(ref if file else f"{current}{ref}")
    assert not missing, missing
    assert len(re.findall(r"::test_\w+", text)) >= 30  # the page names its proofs
