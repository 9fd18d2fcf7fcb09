"""nbgrader out of the box: generate_assignment on a lesson, then autograde a solved submission
(full marks) and an unsolved one (zero) — no BITNET_EDU_GRADING needed.

Skipped when nbgrader is not installed (``pip install -e '.[grading]'``).  Uses Lesson 01, the
quickest to execute.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbgrader")

from bitnet_edu import make_exercises as mk  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LESSON = ROOT / "solutions" / "01_absmean_quantization.ipynb"
ASSIGNMENT = "lesson01"


def _nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("BITNET_EDU_GRADING", "NBGRADER_EXECUTION")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # nbgrader runs `alembic` (installed with it, next to this Python) to set up its gradebook
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    r = subprocess.run([sys.executable, "-m", "nbgrader", *args, f"--CourseDirectory.root={course}"],
                       cwd=course, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r


def _scores(course: Path) -> dict:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        return {s: (gb.find_submission(ASSIGNMENT, s).score, gb.find_submission(ASSIGNMENT, s).max_score)
                for s in ("solved", "unsolved")}


def test_marking_is_idempotent_and_counts_every_check():
    nb = nbformat.read(LESSON, as_version=4)
    once = mk.mark_for_nbgrader(nb)
    assert mk.render(mk.mark_for_nbgrader(once)) == mk.render(once)
    tests = [c for c in once.cells if c.metadata.get("nbgrader", {}).get("grade")
             and not c.metadata.nbgrader.solution]  # the autograded tests (not 0-point answers)
    assert tests and all(c.metadata.nbgrader.locked and c.metadata.nbgrader.points >= 1 for c in tests)
    calls = sum(len(mk._CHECK_CALL.findall(c.source)) for c in tests)
    assert sum(c.metadata.nbgrader.points for c in tests) == calls
    ids = [c.metadata.nbgrader.grade_id for c in once.cells if "nbgrader" in c.metadata]
    assert len(ids) == len(set(ids)), "grade ids must be unique"


@pytest.mark.slow
def test_generate_and_autograde(tmp_path):
    course = tmp_path / "course"
    (course / "source" / ASSIGNMENT).mkdir(parents=True)
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\nc.CourseDirectory.course_id = 'bitnet_edu'\n"
        "c.ExecutePreprocessor.timeout = 600\n")
    shutil.copy(LESSON, course / "source" / ASSIGNMENT / LESSON.name)
    _nbgrader(course, "generate_assignment", ASSIGNMENT, "--force")

    released = course / "release" / ASSIGNMENT / LESSON.name
    rel = nbformat.read(released, as_version=4)
    ours = nbformat.read(ROOT / "exercises" / LESSON.name, as_version=4)
    # nbgrader's release and our exercises/ hold the same code; answer cells, which we drop, are
    # nbgrader's empty answer stubs there
    def not_answer(c):
        return not str(c.metadata.get("nbgrader", {}).get("grade_id", "")).startswith("answer_")

    assert ([c.source for c in rel.cells if c.cell_type == "code" and not_answer(c)]
            == [c.source for c in ours.cells if c.cell_type == "code"])
    assert not any("**Answer" in c.source for c in rel.cells), "an answer reached the release"

    # a solved submission: the release with the solution cells filled in from solutions/
    sol = {c.metadata.nbgrader.grade_id: c.source
           for c in mk.mark_for_nbgrader(nbformat.read(LESSON, as_version=4)).cells
           if c.metadata.get("nbgrader", {}).get("solution")}
    solved = nbformat.from_dict(rel)
    for c in solved.cells:
        gid = c.metadata.get("nbgrader", {}).get("grade_id")
        if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "code":
            c.source = sol[gid]
    for student, nb in (("solved", solved), ("unsolved", rel)):
        d = course / "submitted" / student / ASSIGNMENT
        d.mkdir(parents=True)
        nbformat.write(nb, d / LESSON.name)
        (d / "timestamp.txt").write_text("2026-01-01 00:00:00.000000 UTC")
    _nbgrader(course, "autograde", ASSIGNMENT, "--create", "--force")

    scores = _scores(course)
    max_points = sum(c.metadata.nbgrader.points for c in rel.cells
                     if c.metadata.get("nbgrader", {}).get("grade") and "points" in c.metadata.nbgrader)
    assert max_points >= 4
    assert scores["solved"] == (max_points, max_points), scores
    assert scores["unsolved"] == (0, max_points), scores
