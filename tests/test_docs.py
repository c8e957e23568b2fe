"""The documentation: the spec and the architecture page are in the repository, the README's
layout names every module, and no text points outside the repository."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# references to documents outside the repository (written so that this file does not match itself)
OUTSIDE = re.compile("|".join([r"\.\./shared", r"\bSPEC" + r"\.md", r"(?i:\bseeds?[ _]?0\d\d)",
                               r"(?i:\bissues? #?\d+\b)"]))
TEXT_SUFFIXES = {".py", ".md", ".cu", ".cuh", ".json", ".toml", ".txt", ".cfg", ".yml", ".yaml", ""}


def _text_files():
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if not path.is_file() or rel.parts[0].startswith(".") or path.suffix not in TEXT_SUFFIXES:
            continue
        if any(p in ("__pycache__", "build", "dist") or p.endswith(".egg-info") for p in rel.parts):
            continue
        yield rel, path


def test_docs_exist_and_readme_links_them():
    text = README.read_text()
    for doc in ("docs/spec.md", "docs/architecture.md"):
        assert (ROOT / doc).is_file(), doc
        assert f"]({doc})" in text, f"README.md does not link {doc}"


def test_no_text_refers_outside_the_repository():
    bad = []
    for rel, path in _text_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for i, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                bad.append(f"{rel}:{i}: {line.strip()[:120]}")
    assert not bad, "text referring to documents outside the repository:\n" + "\n".join(bad)


def test_the_outside_pattern_catches_what_it_should():
    for s in ("see ../sha" + "red/SPEC" + ".md", "seed " + "002's example", "Seed" + "002", "as is" + "sue 4 asks",
              "Is" + "sues #12"):
        assert OUTSIDE.search(s), s
    for s in ("docs/spec.md", "seed=0", "seed 0 gives", "an issue with tensor cores"):
        assert not OUTSIDE.search(s), s


def _layout_section():
    text = README.read_text()
    start = text.index("## Layout")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


@pytest.mark.parametrize("folder", ["gpubp", "kernels", "benchmarks"])
def test_readme_layout_names_every_module(folder):
    layout = _layout_section()
    missing = []
    for path in sorted((ROOT / folder).rglob("*")):
        if path.suffix not in (".py", ".cu", ".cuh") or "__pycache__" in path.parts or "results" in path.parts:
            continue
        if path.name == "__init__.py" and path.parent.name in ("kernels", "examples"):
            continue                      # package markers only
        if f"`{path.name}`" not in layout:
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"README.md's layout section does not describe: {missing}"
