"""Every ```python block in README.md runs as written and prints what it shows.

Each block runs in a fresh temporary directory in its own interpreter (with a
timeout) and must show its output as ``# -> text`` comments, one per printed
line, in order: ``...`` inside a shown line stands for text that varies by
machine (timings, accuracies after a few epochs), and a shown line that is
only ``...`` for any number of lines (the rest of a table). A block whose first line is ``# not run: <why>``
is skipped with that reason (for code that needs something this suite does not
install, such as torch).
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
TIMEOUT_S = 60


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, code) of every fenced ```python block."""
    blocks = []
    for m in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, re.M | re.S):
        blocks.append((text.count("\n", 0, m.start()) + 2, m.group(1)))
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def shown_output(code: str) -> list[str]:
    """The output a block promises: ``# -> text`` comments, one printed line each."""
    return [m.group(1).rstrip() for m in re.finditer(r"#\s*->\s?(.*)$", code, re.M)]


def _line_pattern(shown: str) -> str:
    """``...`` in a shown line stands for any text on that line (numbers that vary by machine)."""
    return "[^\\n]*".join(re.escape(part) for part in shown.split("..."))


def _matches(shown: str, printed: str) -> bool:
    return re.fullmatch(_line_pattern(shown), printed) is not None


def output_matches(shown: list[str], printed: str) -> bool:
    """The printed text against the shown lines, in order; a shown line that is
    only ``...`` stands for any number of printed lines (the rest of a table)."""
    parts = ["(?:[^\\n]*\\n)*?" if line.strip() == "..." else _line_pattern(line) + "\\n" for line in shown]
    text = printed if printed.endswith("\n") or not printed else printed + "\n"
    return re.fullmatch("".join(parts), text) is not None


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"line{n}" for n, _ in BLOCKS])
def test_readme_block(line, code, tmp_path):
    first = code.splitlines()[0] if code.strip() else ""
    if first.startswith("# not run:"):
        pytest.skip(first[2:].strip())
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       timeout=TIMEOUT_S)
    assert r.returncode == 0, f"README.md block at line {line} failed:\n{r.stderr}"
    assert r.stdout.strip(), f"README.md block at line {line} prints nothing"
    shown = shown_output(code)
    assert shown, f"README.md block at line {line} does not show its output (# -> lines)"
    assert output_matches(shown, r.stdout), (f"README.md block at line {line} shows\n" + "\n".join(shown)
                                             + f"\nbut prints\n{r.stdout}")


def test_matcher():
    assert _matches("accuracy ...%", "accuracy 97.5%")
    assert not _matches("accuracy ...%", "loss 97.5")
    assert output_matches(["| a |", "..."], "| a |\n| 1 |\n| 2 |\n")
    assert output_matches(["| a |", "...", "end"], "| a |\nend\n")
    assert not output_matches(["| a |", "end"], "| a |\n| 1 |\nend\n")
    assert not output_matches(["x ..."], "x 1\ny 2\n")  # ... stays on its line
    assert [b[0] for b in python_blocks("x\n```python\nprint(1)\n```\n")] == [3]


def test_readme_links_resolve():
    """Relative links in the README point at files in the repository (docs/design.md, the licenses)."""
    text = README.read_text(encoding="utf-8")
    targets = {m.group(1).split("#")[0] for m in re.finditer(r"\]\(([^)\s]+)\)", text)
               if "://" not in m.group(1) and not m.group(1).startswith("#")}
    assert {"docs/design.md", "LICENSE-MIT", "LICENSE-APACHE"} <= targets
    for t in targets:
        assert (README.parent / t).is_file(), t
    assert "DESIGN.md" not in text and "DESIGN §" not in text  # the old file never was in the repository


def test_design_sections_cited_exist():
    design = (README.parent / "docs" / "design.md").read_text(encoding="utf-8")
    for n in re.findall(r"docs/design\.md §(\d)", README.read_text(encoding="utf-8")):
        assert re.search(rf"^## {n}\. ", design, re.M), n
    anchors = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^## (.+)$", design, re.M)}
    for a in re.findall(r"docs/design\.md#([\w-]+)", README.read_text(encoding="utf-8")):
        assert a in anchors, a
