"""Generate the student notebooks in ``exercises/`` from the annotated ``solutions/``.

One source of truth, nbgrader style: a solution notebook marks the answer with::

    def absmean_ternary(w):
        ### BEGIN SOLUTION
        ...the answer...
        ### END SOLUTION

and the student copy gets ``# YOUR CODE HERE`` / ``raise NotImplementedError()`` in its place,
with all outputs cleared.  Blocks must sit inside a function body so the student notebook still
runs top to bottom (the check cell then reports NOT IMPLEMENTED instead of crashing).

    python -m bitnet_edu.make_exercises            # rewrite exercises/ from solutions/
    python -m bitnet_edu.make_exercises --check    # exit 1 if exercises/ has drifted
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = ["# YOUR CODE HERE", "raise NotImplementedError()"]
_BLOCK = re.compile(r"^([ \t]*)" + re.escape(BEGIN) + r"[ \t]*$")


def strip_solutions(source: str, where: str = "cell") -> str:
    """Replace every BEGIN/END SOLUTION block in one cell's source with the stub."""
    out, lines, i = [], source.split("\n"), 0
    while i < len(lines):
        m = _BLOCK.match(lines[i])
        if not m:
            if lines[i].strip() == END:
                raise ValueError(f"{where}: '{END}' without a matching '{BEGIN}'")
            out.append(lines[i])
            i += 1
            continue
        indent = m.group(1)
        if not indent:
            raise ValueError(f"{where}: solution blocks must be inside a function body (indented)")
        j = i + 1
        while j < len(lines) and lines[j].strip() != END:
            j += 1
        if j == len(lines):
            raise ValueError(f"{where}: '{BEGIN}' without '{END}'")
        out += [indent + s for s in STUB]
        i = j + 1
    return "\n".join(out)


def student_notebook(nb: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """A copy of a solution notebook with solutions stubbed and outputs cleared."""
    nb = nbformat.from_dict(nb)  # deep copy
    n_blocks = 0
    for k, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            if BEGIN in cell.source:
                n_blocks += cell.source.count(BEGIN)
                cell.source = strip_solutions(cell.source, f"{name} cell {k}")
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    if n_blocks == 0:
        raise ValueError(f"{name}: no '{BEGIN}' blocks found; is this a solution notebook?")
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def expected_exercises(root: Path) -> dict[Path, str]:
    """Map each exercises/ path to the text the generator would write there."""
    return {
        root / "exercises" / src.name: render(student_notebook(nbformat.read(src, as_version=4), src.name))
        for src in sorted((root / "solutions").glob("*.ipynb"))
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--check", action="store_true", help="report drift instead of writing")
    args = ap.parse_args(argv)
    want = expected_exercises(args.root)
    if args.check:
        stale = [p for p, text in want.items() if not p.exists() or p.read_text() != text]
        extra = [p for p in (args.root / "exercises").glob("*.ipynb") if p not in want]
        for p in stale:
            print(f"out of date: {p.relative_to(args.root)}")
        for p in extra:
            print(f"no solution source for: {p.relative_to(args.root)}")
        if stale or extra:
            print("run: python -m bitnet_edu.make_exercises")
            return 1
        print(f"{len(want)} exercise notebooks up to date")
        return 0
    (args.root / "exercises").mkdir(exist_ok=True)
    for p, text in want.items():
        p.write_text(text)
        print(f"wrote {p.relative_to(args.root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
