"""Generate the student notebooks in ``exercises/`` from the annotated ``solutions/``.

One source of truth, nbgrader style: a solution notebook marks the answer with::

    def absmean_ternary(w):
        ### BEGIN SOLUTION
        ...the answer...
        ### END SOLUTION

and the student copy gets ``# YOUR CODE HERE`` / ``raise NotImplementedError()`` in its place,
with all outputs cleared.  Blocks must sit inside a function body so the student notebook still
runs top to bottom (the check cell then reports NOT IMPLEMENTED instead of crashing).

Annotated solutions: a markdown (or code) cell whose metadata has ``"tags": ["answer"]`` is the
instructor's answer to a question prompt ("Questions", "To think about", "Going further"); it stays
in ``solutions/`` and is **dropped** from the student copy.  (Jupyter: View → Cell toolbar → Tags.)

nbgrader out of the box: :func:`mark_for_nbgrader` gives every cell the metadata
``nbgrader generate_assignment`` / ``autograde`` (0.9) need, and the generator writes it into
``solutions/`` and ``exercises/``:

* a code cell calling ``checks.check_...`` is an **autograded test** (locked, one point per check
  call); a cell that holds both a solution block and its check call is split in two first (the
  test cell is overwritten from the release at grading time, so the student's code must not live
  in it);
* a cell with a BEGIN/END SOLUTION block is an autograded **solution** cell;
* an ``answer`` cell is a solution cell worth 0 points (nbgrader requires a markdown one to be a
  manually graded cell; its release shows "YOUR ANSWER HERE" where ours drops the cell);
* the "All checks" summary cell (several checks and a tally) is read-only, not graded again.

Under ``nbgrader autograde`` the checks raise on anything but PASS without any setting (nbgrader
sets ``NBGRADER_EXECUTION=autograde``; see :func:`bitnet_edu.checks._core.grading_mode`).

    python -m bitnet_edu.make_exercises            # mark solutions/, rewrite exercises/ from them
    python -m bitnet_edu.make_exercises --check    # exit 1 if either has drifted
    python -m bitnet_edu.make_exercises 01 05      # only lessons 01 and 05
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
ANSWER_TAG = "answer"
_CHECK_CALL = re.compile(r"\bchecks\.(check_\w+)\(")
_DEF = re.compile(r"^(?:def|class)\s+(\w+)", re.M)
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


def is_answer(cell) -> bool:
    """An instructor's answer cell (tagged ``answer``): kept in solutions, dropped for students."""
    return ANSWER_TAG in (cell.get("metadata", {}).get("tags") or [])


def _split_solution_and_check(cell) -> list:
    """[cell] or, when a solution cell ends with top-level check calls, [solution, test] cells."""
    if cell.cell_type != "code" or BEGIN not in cell.source or not _CHECK_CALL.search(cell.source):
        return [cell]
    lines = cell.source.split("\n")
    first = next((i for i, ln in enumerate(lines)
                  if not ln[:1].isspace() and _CHECK_CALL.search(ln)), None)
    if first is None or any(BEGIN in ln for ln in lines[first:]):
        return [cell]  # the check sits inside the solution's code: leave the cell whole
    head = "\n".join(lines[:first]).rstrip("\n")
    tail = "\n".join(lines[first:]).strip("\n")
    sol = nbformat.from_dict(dict(cell, source=head, outputs=[], execution_count=None))
    test = nbformat.v4.new_code_cell(tail)
    if "id" in cell:  # deterministic ids: the test cell is named after its solution cell
        test["id"] = (str(cell["id"])[:58] + "-check")
    else:
        test.pop("id", None)
    return [sol, test]


def _grade_id(base: str, used: set) -> str:
    gid, k = base, 2
    while gid in used:
        gid, k = f"{base}_{k}", k + 1
    used.add(gid)
    return gid


def mark_for_nbgrader(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of a solution notebook with nbgrader (schema 3) metadata on every graded cell.

    Deterministic (the same notebook always gets the same ids), so it can run on every write.
    """
    nb = nbformat.from_dict(nb)
    cells = [c for cell in nb.cells for c in _split_solution_and_check(cell)]
    used: set = set()
    for k, cell in enumerate(cells):
        cell.metadata.pop("nbgrader", None)
        meta = None
        if is_answer(cell):
            meta = dict(grade=False, solution=True, locked=False,
                        grade_id=_grade_id(f"answer_{k}", used))
            if cell.cell_type == "markdown":  # nbgrader: a markdown answer is a manual grade cell
                meta.update(grade=True, points=0)
        elif cell.cell_type == "code" and BEGIN in cell.source:
            names = _DEF.findall(cell.source)
            meta = dict(grade=False, solution=True, locked=False,
                        grade_id=_grade_id("solution_" + (names[0] if names else str(k)), used))
        elif cell.cell_type == "code" and _CHECK_CALL.search(cell.source):
            calls = _CHECK_CALL.findall(cell.source)
            if len(calls) > 1 and len(set(calls)) == len(calls) and "passed" in cell.source:
                meta = dict(grade=False, solution=False, locked=True,
                            grade_id=_grade_id("all_checks", used))  # the summary: not graded twice
            else:
                meta = dict(grade=True, solution=False, locked=True, points=len(calls),
                            grade_id=_grade_id(calls[0], used))
        if meta is not None:
            meta["schema_version"] = 3
            cell.metadata["nbgrader"] = dict(sorted(meta.items()))
    nb.cells = cells
    return nb


def student_notebook(nb: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """A copy of a solution notebook with solutions stubbed, answers dropped, outputs cleared."""
    nb = nbformat.from_dict(nb)  # deep copy
    nb.cells = [c for c in nb.cells if not is_answer(c)]
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


def expected_solutions(root: Path) -> dict[Path, str]:
    """Map each solutions/ path to its text once marked for nbgrader."""
    out = {}
    for src in sorted((root / "solutions").glob("*.ipynb")):
        marked = render(mark_for_nbgrader(nbformat.read(src, as_version=4)))
        out[src] = src.read_text() if _same_notebook(src.read_text(), marked) else marked
    return out


def _same_notebook(a: str, b: str) -> bool:
    """Equal as notebooks (key order and JSON layout aside): an editor's own formatting of an
    already-marked solution is left alone."""
    import json
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return False


def expected_exercises(root: Path) -> dict[Path, str]:
    """Map each exercises/ path to the text the generator would write there."""
    return {
        root / "exercises" / src.name: render(student_notebook(
            mark_for_nbgrader(nbformat.read(src, as_version=4)), src.name))
        for src in sorted((root / "solutions").glob("*.ipynb"))
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--check", action="store_true", help="report drift instead of writing")
    ap.add_argument("lessons", nargs="*", help="only these lessons (e.g. 01 05); default all")
    args = ap.parse_args(argv)
    want = {**expected_solutions(args.root), **expected_exercises(args.root)}
    if args.lessons:
        want = {p: t for p, t in want.items() if p.name[:2] in args.lessons}
    if args.check:
        stale = [p for p, text in want.items() if not p.exists() or p.read_text() != text]
        extra = [p for p in (args.root / "exercises").glob("*.ipynb")
                 if p not in want and (not args.lessons or p.name[:2] in args.lessons)]
        for p in stale:
            print(f"out of date: {p.relative_to(args.root)}")
        for p in extra:
            print(f"no solution source for: {p.relative_to(args.root)}")
        if stale or extra:
            print("run: python -m bitnet_edu.make_exercises")
            return 1
        print(f"{len(want)} solution and exercise notebooks up to date")
        return 0
    (args.root / "exercises").mkdir(exist_ok=True)
    for p, text in want.items():
        if p.exists() and p.read_text() == text:
            continue
        p.write_text(text)
        print(f"wrote {p.relative_to(args.root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
