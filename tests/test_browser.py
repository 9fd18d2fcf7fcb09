"""A real browser: JupyterLab + Debian's Chromium driven by Playwright, on notebook 01.

The test starts JupyterLab on 127.0.0.1 (free port, random token, a temp copy of the
notebook), opens it in headless Chromium, runs all cells from the Run menu, moves the
quantization explorer's slider with the keyboard and asserts the plotly plot redrew with
different data. It saves a screenshot to a temp dir, and also to ``$BITNET_EDU_SCREENSHOTS``
when that is set (the README's images come from there).

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``) and ``pip install playwright``;
never ``playwright install`` (it downloads a browser). Skips with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "01_absmean_quantization.ipynb"
CHROMIUM = os.environ.get("BITNET_EDU_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EXPLORER_LABEL = "outlier fraction"  # a control label only the QuantizationExplorer has


def _requirements():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install -y chromium")
    pytest.importorskip("playwright.sync_api", reason="pip install playwright (no `playwright install`)")
    pytest.importorskip("jupyterlab", reason="pip install jupyterlab")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def _copy_with_kernelspec(src: Path, dst: Path):
    """Copy a notebook, naming the kernel so JupyterLab does not stop at a 'Select Kernel' dialog."""
    import nbformat

    nb = nbformat.read(src, as_version=4)
    nb.metadata.setdefault("kernelspec", KERNELSPEC)
    nbformat.write(nb, dst)


def _fallback_notebook(path: Path):
    """Until notebook 01 exists: the smallest notebook showing the explorer."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from bitnet_edu.widgets import QuantizationExplorer\n"
                                          "QuantizationExplorer()")]
    nb.metadata["kernelspec"] = KERNELSPEC
    nbformat.write(nb, path)


def _api(base: str, token: str, path: str, method: str = "GET"):
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return json.loads(body) if body else None


@pytest.fixture
def lab(tmp_path):
    """JupyterLab serving a temp copy of notebook 01; yields (url, tmp_path)."""
    yield from _serve(tmp_path, "01_explorer.ipynb",
                      lambda p: _copy_with_kernelspec(NOTEBOOK, p) if NOTEBOOK.exists() else _fallback_notebook(p))


def _serve(tmp_path, name, write_notebook):
    """A JupyterLab server on 127.0.0.1 serving a temp dir holding one notebook."""
    _requirements()
    work = tmp_path / "work"
    work.mkdir()
    write_notebook(work / name)
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, BITNET_EDU_FAST="1", PYTHONPATH=str(ROOT),
               JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"), JUPYTER_RUNTIME_DIR=str(tmp_path / "run"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"))
    log = open(tmp_path / "lab.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
         "--ServerApp.port_retries=0", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
         "jupyterlab.NeverCheckForUpdate"] + (["--allow-root"] if os.geteuid() == 0 else []),
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # the server is up when its REST API answers
            try:
                _api(base, token, "/api/status")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield f"{base}/lab/tree/{name}?token={token}", tmp_path
    finally:
        try:  # kernels run in their own sessions: shut them down through the API first
            for k in _api(base, token, "/api/kernels") or []:
                _api(base, token, f"/api/kernels/{k['id']}", "DELETE")
        except OSError:
            pass
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# JS helpers evaluated in the page: the output area that holds the explorer, and its plot's data.
_FIND_OUTPUT = """label => {
  const outs = Array.from(document.querySelectorAll('.jp-OutputArea-output'))
    .filter(o => o.querySelector('.js-plotly-plot .main-svg') && o.querySelector('.noUi-handle'));
  const hit = outs.find(o => o.innerText.includes(label)) || outs[0];
  if (!hit) return false;
  document.querySelectorAll('[data-bitnet-edu-target]').forEach(e => e.removeAttribute('data-bitnet-edu-target'));
  hit.setAttribute('data-bitnet-edu-target', '1');
  return true;
}"""
_PLOT_DATA = """el => Array.from(el.querySelectorAll('.js-plotly-plot g.trace path'))
  .map(p => p.getAttribute('d')).join('|')"""


def _ready(page, idle: bool = True):
    """Wait until the kernel is up, answering a 'Select Kernel' dialog if JupyterLab asks."""
    page.wait_for_function("""() => {
      for (const b of document.querySelectorAll('.Toastify button'))  // the "Jupyter news?" toast
        if (b.innerText.trim() === 'No') b.click();
      const ok = document.querySelector('.jp-Dialog .jp-mod-accept');
      if (ok) { ok.click(); return false; }
      return /Idle|Busy/.test(document.querySelector('#jp-main-statusbar')?.innerText || '');
    }""", polling=500)
    if idle:
        page.wait_for_function("() => /Idle/.test(document.querySelector('#jp-main-statusbar').innerText)")


def test_explorer_slider_redraws_the_plot_in_chromium(lab):
    from playwright.sync_api import sync_playwright

    url, tmp_path = lab
    shots = [tmp_path / "quant_explorer.png"]
    if os.environ.get("BITNET_EDU_SCREENSHOTS"):
        Path(os.environ["BITNET_EDU_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        shots.append(Path(os.environ["BITNET_EDU_SCREENSHOTS"]) / "quant_explorer.png")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})
        try:
            page = ctx.new_page()
            page.set_default_timeout(180_000)  # a cold JupyterLab on a busy 2-core box is slow
            page.goto(url)
            page.wait_for_selector(".jp-Notebook .jp-Cell")
            _ready(page)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            _ready(page, idle=False)

            # notebook 01 computes before it shows the explorer: wait for a plot with a slider
            page.wait_for_function(_FIND_OUTPUT, arg=EXPLORER_LABEL, timeout=300_000, polling=500)
            out = page.locator("[data-bitnet-edu-target]")
            out.scroll_into_view_if_needed()
            page.wait_for_function(f"() => ({_PLOT_DATA})(document.querySelector('[data-bitnet-edu-target]')).length > 0")
            before = out.evaluate(_PLOT_DATA)

            handle = out.locator(".noUi-handle").first
            handle.focus()
            for _ in range(5):  # noUiSlider moves one step per arrow key
                handle.press("ArrowRight")
            page.wait_for_function(
                f"before => ({_PLOT_DATA})(document.querySelector('[data-bitnet-edu-target]')) !== before",
                arg=before, timeout=60_000, polling=250)
            after = out.evaluate(_PLOT_DATA)
            assert after and after != before

            png = out.screenshot()
            for s in shots:
                s.write_bytes(png)
        except Exception:  # keep what the browser showed: the first thing to look at in CI
            page.screenshot(path=str(tmp_path / "browser_failure.png"))  # in pytest's tmp dir
            raise
        finally:
            ctx.close()
    assert shots[0].stat().st_size > 1000


GALLERY = {  # README screenshot name -> cell source displaying one widget
    "quant_explorer": "from bitnet_edu.widgets import QuantizationExplorer\nQuantizationExplorer()",
    "bitlinear_stepper": "from bitnet_edu.widgets import BitLinearStepper\nBitLinearStepper()",
    "lut_stepper": "from bitnet_edu.widgets import LookupTableStepper\nLookupTableStepper()",
    "kernel_race": ("from bitnet_edu.widgets import KernelRace\nrace = KernelRace('640×2560 (k, v)', repeat=3)\n"
                    "race.controls['threads'].value = 1\nrace.race()\nrace"),
    "energy_calculator": "from bitnet_edu.widgets import EnergyCalculator\nEnergyCalculator(context=1024)",
    "chat": ("import time\nfrom bitnet_edu.widgets import ChatWidget\n"
             "class Demo:  # a stand-in model when the embedded one is not installed\n"
             "    tokenizer = None\n"
             "    def stream(self, prompt, max_new_tokens=8, **kw):\n"
             "        for w in 'and the earth was without form , and void'.split()[:max_new_tokens]:\n"
             "            time.sleep(0.02)\n"
             "            yield ' ' + w\n"
             "try:\n    import bitnet_edu\n    model = bitnet_edu.load_model()\n"
             "except ValueError:\n    model = Demo()\n"
             "chat = ChatWidget(model, max_new_tokens=10)\nchat.send('In the beginning God created the heaven')\nchat"),
}


def _gallery_notebook(path: Path, gallery: dict):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"# gallery: {k}\n{src}") for k, src in gallery.items()]
    nb.metadata["kernelspec"] = KERNELSPEC
    nbformat.write(nb, path)


def test_widget_gallery_renders_and_screenshots(tmp_path):
    """Every stage-6 gallery widget renders a plotly plot in Chromium; PNGs for the README."""
    from playwright.sync_api import sync_playwright

    shot_dir = Path(os.environ.get("BITNET_EDU_SCREENSHOTS") or tmp_path / "shots")
    shot_dir.mkdir(parents=True, exist_ok=True)
    import bitnet_edu.widgets as widgets

    # a widget another stage has not shipped yet is left out
    gallery = {k: src for k, src in GALLERY.items()
               if hasattr(widgets, src.split("from bitnet_edu.widgets import ")[1].split()[0])}
    gen = _serve(tmp_path, "gallery.ipynb", lambda p: _gallery_notebook(p, gallery))
    url, _ = next(gen)
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
                args=CHROMIUM_ARGS, viewport={"width": 1500, "height": 900})
            try:
                page = ctx.new_page()
                page.set_default_timeout(300_000)
                page.goto(url)
                page.wait_for_selector(".jp-Notebook .jp-Cell")
                _ready(page)
                page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
                page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
                _ready(page, idle=False)
                cells = page.locator(".jp-Notebook .jp-CodeCell")
                page.wait_for_function(
                    "n => document.querySelectorAll('.jp-CodeCell .jp-OutputArea-output .js-plotly-plot .main-svg').length >= n",
                    arg=len(gallery), polling=500)
                _ready(page)
                for i, key in enumerate(gallery):
                    out = cells.nth(i).locator(".jp-OutputArea-output").last
                    out.scroll_into_view_if_needed()
                    assert out.locator(".js-plotly-plot").count() >= 1, key
                    (shot_dir / f"{key}.png").write_bytes(out.screenshot())
            finally:
                ctx.close()
    finally:
        for _ in gen:
            pass
    for key in gallery:
        assert (shot_dir / f"{key}.png").stat().st_size > 1000
