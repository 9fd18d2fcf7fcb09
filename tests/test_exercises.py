"""Exercises come from one source: solutions/ generates exercises/, and the two never drift."""

from pathlib import Path

import nbformat
import pytest

from bitnet_edu import make_exercises as mk
from bitnet_edu import nbval_plugin

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


def test_strip_solutions_keeps_indent_and_surroundings():
    src = "def f(x):\n    '''doc'''\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n    ### END SOLUTION\n\nf"
    out = mk.strip_solutions(src)
    assert out == "def f(x):\n    '''doc'''\n    # YOUR CODE HERE\n    raise NotImplementedError()\n\nf"


@pytest.mark.parametrize(
    "src, msg",
    [
        ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION", "inside a function"),
        ("def f():\n    ### BEGIN SOLUTION\n    pass", "without"),
        ("def f():\n    pass\n    ### END SOLUTION", "without a matching"),
    ],
)
def test_strip_solutions_rejects_bad_markup(src, msg):
    with pytest.raises(ValueError, match=msg):
        mk.strip_solutions(src)


def test_exercises_match_generator():
    """Fails when someone edits exercises/ by hand or forgets to regenerate."""
    want = mk.expected_exercises(ROOT)
    assert want, "no solution notebooks found"
    for path, text in want.items():
        assert path.exists(), f"missing {path.name}: run python -m bitnet_edu.make_exercises"
        assert path.read_text() == text, f"{path.name} drifted: run python -m bitnet_edu.make_exercises"
    extra = {p.name for p in (ROOT / "exercises").glob("*.ipynb")} - {p.name for p in want}
    assert not extra, f"exercise notebooks without a solution source: {extra}"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solution_notebooks_are_graded(path):
    nb = nbformat.read(path, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    n_checks = sum(s.count("checks.check_") for s in code)
    n_blocks = sum(s.count(mk.BEGIN) for s in code)
    assert n_checks >= 3, f"{path.name}: at least 3 check calls expected, found {n_checks}"
    assert n_blocks >= 3, f"{path.name}: at least 3 solution blocks expected, found {n_blocks}"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "store with outputs cleared"


def test_every_lesson_has_an_exercise_pair():
    lessons = {p.name[:2] for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    sols = {p.name[:2] for p in SOLUTIONS}
    assert lessons <= sols, f"lessons without exercises: {sorted(lessons - sols)}"


def test_plugin_reads_check_lines():
    outs = [{"output_type": "stream", "name": "stdout",
             "text": "✅ [check] absmean: PASS\n⏳ [check] absmax: NOT IMPLEMENTED — fill in\n"}]
    found = nbval_plugin._CHECK.findall(nbval_plugin._text_of(outs))
    assert found == [("absmean", "PASS"), ("absmax", "NOT IMPLEMENTED")]
    assert nbval_plugin._expected_status("/x/solutions/01_a.ipynb") == "PASS"
    assert nbval_plugin._expected_status("/x/exercises/01_a.ipynb") == "NOT IMPLEMENTED"
    assert nbval_plugin._expected_status("/x/notebooks/01_a.ipynb") is None


def test_checks_never_raise():
    from bitnet_edu.checks import FAIL, NOT_IMPLEMENTED, PASS, check

    @check
    def check_positive(fn):
        assert fn(2) > 0, "expected a positive number"

    def stub(x):
        raise NotImplementedError()

    assert check_positive(lambda x: x).status == PASS
    assert check_positive(stub).status == NOT_IMPLEMENTED
    bad = check_positive(lambda x: -x)
    assert bad.status == FAIL and "positive" in bad.message
    crash = check_positive(lambda x: x / 0)
    assert crash.status == FAIL and "ZeroDivisionError" in crash.message


def test_grading_mode_raises_on_anything_but_pass(monkeypatch):
    from bitnet_edu.checks import check

    @check
    def check_one(fn):
        assert fn() == 1, "expected 1"

    monkeypatch.setenv("BITNET_EDU_GRADING", "1")
    assert check_one(lambda: 1).passed
    with pytest.raises(AssertionError, match="FAIL"):
        check_one(lambda: 2)
    with pytest.raises(AssertionError, match="NOT IMPLEMENTED"):
        check_one(lambda: (_ for _ in ()).throw(NotImplementedError()))


def test_grading_mode_is_on_under_nbgrader_unless_turned_off(monkeypatch):
    """nbgrader's autograde/validate set NBGRADER_EXECUTION; BITNET_EDU_GRADING set by hand wins."""
    from bitnet_edu.checks import check

    @check
    def check_one(fn):
        assert fn() == 1, "expected 1"

    monkeypatch.delenv("BITNET_EDU_GRADING", raising=False)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    assert not check_one(lambda: 2).passed  # a plain notebook: FAIL is printed, nothing raised
    for mode in ("autograde", "validate"):
        monkeypatch.setenv("NBGRADER_EXECUTION", mode)  # set after import: read at each check
        with pytest.raises(AssertionError, match="FAIL"):
            check_one(lambda: 2)
    monkeypatch.setenv("BITNET_EDU_GRADING", "0")
    assert not check_one(lambda: 2).passed


def test_check_names_are_unique_across_stages():
    """`from .stageN import *` would silently replace an earlier stage's check of the same name."""
    import importlib
    import pkgutil

    import bitnet_edu.checks as pkg

    owner = {}
    for m in pkgutil.iter_modules(pkg.__path__):
        if m.name.startswith("stage"):
            for name in importlib.import_module(f"bitnet_edu.checks.{m.name}").__all__:
                assert name not in owner, f"{name} defined in both {owner[name]} and {m.name}"
                owner[name] = m.name
                assert getattr(pkg, name).__module__.endswith(m.name)


def _tiny_solution(answer_source="**Answer.** 42, measured above."):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("from bitnet_edu import checks"),
        nbformat.v4.new_code_cell("def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n\n\n"
                                  "checks.check_sqnr(f)"),
        nbformat.v4.new_markdown_cell("## Questions\n\n* Why?"),
        nbformat.v4.new_markdown_cell(answer_source, metadata={"tags": ["answer"]}),
        nbformat.v4.new_code_cell("print('answer code')", metadata={"tags": ["answer", "other"]}),
    ]
    return nb


def test_answer_cells_are_dropped_from_the_student_copy():
    nb = _tiny_solution()
    student = mk.student_notebook(mk.mark_for_nbgrader(nb))
    text = mk.render(student)
    assert "42, measured" not in text and "answer code" not in text
    assert "## Questions" in text  # the prompt stays
    # the solution notebook keeps them, marked as ungraded nbgrader solution cells
    marked = mk.mark_for_nbgrader(nb)
    answers = [c for c in marked.cells if mk.is_answer(c)]
    assert len(answers) == 2
    assert all(c.metadata.nbgrader["solution"] for c in answers)
    # nbgrader wants a markdown solution cell to be a (manual) grade cell: worth 0 points
    assert all(c.metadata.nbgrader.get("points", 0) == 0 for c in answers)
    assert [c.metadata.nbgrader["grade"] for c in answers] == [True, False]


def test_solution_and_check_in_one_cell_are_split_for_nbgrader():
    marked = mk.mark_for_nbgrader(_tiny_solution())
    sol, test = marked.cells[1], marked.cells[2]
    assert sol.source.endswith("### END SOLUTION") and test.source == "checks.check_sqnr(f)"
    assert sol.metadata.nbgrader == {"grade": False, "grade_id": "solution_f", "locked": False,
                                     "schema_version": 3, "solution": True}
    assert test.metadata.nbgrader == {"grade": True, "grade_id": "check_sqnr", "locked": True,
                                      "points": 1, "schema_version": 3, "solution": False}
    assert mk.render(mk.mark_for_nbgrader(marked)) == mk.render(marked), "marking is idempotent"


def test_check_mode_catches_a_changed_answer_cell(tmp_path, capsys):
    (tmp_path / "solutions").mkdir()
    src = tmp_path / "solutions" / "01_x.ipynb"
    nbformat.write(_tiny_solution(), src)
    assert mk.main(["--root", str(tmp_path)]) == 0
    assert mk.main(["--root", str(tmp_path), "--check"]) == 0
    ex = tmp_path / "exercises" / "01_x.ipynb"
    assert "42, measured" not in ex.read_text()
    # someone edits the exercise by hand: drift
    ex.write_text(ex.read_text().replace("## Questions", "## Questions (edited)"))
    assert mk.main(["--root", str(tmp_path), "--check"]) == 1
    assert "out of date: exercises/01_x.ipynb" in capsys.readouterr().out
    assert mk.main(["--root", str(tmp_path)]) == 0
    # an answer cell that loses its tag would leak to students: drift too
    nb = nbformat.read(src, as_version=4)
    for c in nb.cells:
        if mk.is_answer(c) and c.cell_type == "markdown":
            c.metadata.tags = []
    nbformat.write(nb, src)
    assert mk.main(["--root", str(tmp_path), "--check"]) == 1
