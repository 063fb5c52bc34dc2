"""A real browser on a real JupyterLab: the widgets render, a slider moves, the output follows.

Needs Debian's chromium at /usr/bin/chromium (``.ci/run`` installs it) and the
``playwright`` package (never ``playwright install``: the browser is the system
one). Run alone with ``pytest -m browser tests/test_browser.py``. Screenshots go
to ``$VPTQ_LAB_ARTIFACTS/browser`` (default ``artifacts/browser`` in the repo).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from lab_harness import CHROMIUM, CHROMIUM_ARGS, jupyterlab  # beside this file: the launcher is not in the package

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]

SETUP = """\
import torch
from vptq_lab.model.calibrate import quantize_
from vptq_lab.core.config import VPTQConfig
from vptq_lab.testing import tiny_llama
from vptq_lab.lab.widgets import build_bit_budget_comparator, build_outlier_explorer

config = VPTQConfig(vector_lens=(-1, 4), num_centroids=(-1, 16), kmeans_iters=3, nsamples=4, seqlen=32)
model = tiny_llama(hidden=64, layers=2)
calibration = torch.randint(0, 384, (4, 32), generator=torch.Generator().manual_seed(0))
report = quantize_(model, config, calibration, keep=True, progress=False)
entry = report.store["model.layers.0.mlp.down_proj"]"""

OUTLIERS = """\
box = build_outlier_explorer(entry.W, entry.H, config)
box.explorer.npercent.add_class("vptq-npercent")
box.explorer.bits_label.add_class("vptq-bits")
box.explorer.columns_label.add_class("vptq-columns")
box"""

BUDGET = """\
from vptq_lab.lab.budget import SMOLLM2_135M_SHAPES

budget = build_bit_budget_comparator(SMOLLM2_135M_SHAPES)
budget.explorer.summary.add_class("vptq-budget")
budget"""


def _notebook(folder: Path) -> Path:
    cells = [
        {"cell_type": "code", "id": f"cell-{i}", "metadata": {}, "source": src, "outputs": [], "execution_count": None}
        for i, src in enumerate((SETUP, OUTLIERS, BUDGET))
    ]
    nb = {
        "cells": cells,
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    }
    path = folder / "widgets_smoke.ipynb"
    path.write_text(json.dumps(nb))
    return path


@pytest.fixture
def artifacts() -> Path:
    folder = Path(os.environ.get("VPTQ_LAB_ARTIFACTS") or REPO / "artifacts") / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_widgets_in_jupyterlab(tmp_path, artifacts):
    if not CHROMIUM.exists():
        pytest.skip(
            "Debian chromium not found at /usr/bin/chromium: apt-get install -y --no-install-recommends "
            "chromium (.ci/run does this)"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the PyPI package) is not installed")
    start = time.monotonic()
    root = tmp_path / "lab"
    root.mkdir()
    _notebook(root)
    log_path = artifacts / "jupyterlab.log"
    env = {
        **os.environ,
        "MPLBACKEND": "agg",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    with open(log_path, "w") as log, jupyterlab(root, tmp_path / "jupyter-home", log, env) as (port, token):
        with sync_api.sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 1400},
            )
            page = context.new_page()
            try:
                _drive(page, port, token, artifacts, sync_api.expect)
            except Exception:
                page.screenshot(path=str(artifacts / "failure.png"), full_page=True)
                raise
            finally:
                context.close()
    elapsed = time.monotonic() - start
    (artifacts / "timing.txt").write_text(f"{elapsed:.1f} s\n")
    assert elapsed < 300, f"the browser test took {elapsed:.0f}s"


def _drive(page, port: int, token: str, artifacts: Path, expect) -> None:
    page.set_default_timeout(60_000)
    # JupyterLab may ask which kernel to start (with the notebook's own kernel preselected): accept it
    # whenever it shows up.
    dialog = page.locator(".jp-Dialog")
    page.add_locator_handler(dialog, lambda: dialog.locator(".jp-mod-accept").click())
    page.goto(f"http://127.0.0.1:{port}/lab/tree/widgets_smoke.ipynb?token={token}")
    page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for()
    try:
        dialog.locator(".jp-mod-accept").click(timeout=5_000)
    except Exception:  # no dialog this time
        pass
    expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_have_count(1, timeout=90_000)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()  # the Run menu, as a user would
    page.locator(".lm-Menu-itemLabel").get_by_text("Run All Cells", exact=True).click()

    bits = page.locator(".vptq-bits")
    bits.wait_for(state="visible", timeout=40_000)
    expect(page.locator(".vptq-budget")).to_contain_text("bits/weight", timeout=60_000)
    expect(bits).to_contain_text("bits/weight")
    before = bits.inner_text()
    try:  # the "Jupyter news?" toast covers part of the screenshots
        page.locator(".jp-toast-button", has_text="No").click(timeout=2_000)
    except Exception:
        pass
    page.screenshot(path=str(artifacts / "01_widgets_rendered.png"), full_page=True)

    handle = page.locator(".vptq-npercent .noUi-handle").first
    handle.focus()
    for _ in range(4):  # 4 steps of 0.5 percent: 2% of 160 columns leave
        page.keyboard.press("ArrowRight")
    expect(page.locator(".vptq-npercent .widget-readout")).to_have_text("2.0")
    # Each key press is one change sent to the kernel; wait for the last one's answer: ceil(2% of 160) = 4.
    expect(page.locator(".vptq-columns")).to_contain_text("4 of 160 columns leave", timeout=30_000)
    expect(bits).not_to_have_text(before)
    expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_have_count(1, timeout=30_000)
    after = bits.inner_text()
    assert "v0=4" in after and before.split()[0] != after.split()[0]  # outliers on, bits changed
    bits.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "02_slider_moved.png"), full_page=True)


def _tiny_notebook(path: Path, sources: list[str]) -> None:
    cells = [
        {"cell_type": "code", "id": f"c{i}", "metadata": {}, "source": s, "outputs": [], "execution_count": None}
        for i, s in enumerate(sources)
    ]
    path.write_text(
        json.dumps(
            {
                "cells": cells,
                "nbformat": 4,
                "nbformat_minor": 5,
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            }
        )
    )


def test_new_user_walkthrough_script(tmp_path, monkeypatch, repo_script):
    # tests/new_user_walkthrough.py on a throwaway "checkout": one notebook that runs, one that fails.
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium not found at /usr/bin/chromium (.ci/run installs it)")
    pytest.importorskip("playwright.sync_api", reason="playwright (the PyPI package) is not installed")
    walkthrough = repo_script("tests/new_user_walkthrough.py")
    repo = tmp_path / "clone"
    (repo / "notebooks").mkdir(parents=True)
    _tiny_notebook(
        repo / "notebooks" / "01_ok.ipynb",
        ["import os\nprint('CI =', os.environ.get('CI'), '| data =', os.environ.get('VPTQ_LAB_DATA'))", "print(6 * 7)"],
    )
    _tiny_notebook(repo / "notebooks" / "02_broken.ipynb", ["raise RuntimeError('boom')", "print('never')"])
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"notebooks": {"99_earlier.ipynb": {"seconds": 1.0, "errors": []}}}))
    monkeypatch.setenv("CI", "1")  # both must be hidden from the kernels: a new user has neither
    monkeypatch.setenv("VPTQ_LAB_DATA", "/nowhere")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    assert (
        walkthrough.main(["--repo", str(repo), "--notebooks", "01", "02", "--out", str(out), "--limit-min", "4"]) == 1
    )  # 02 fails
    record = json.loads(out.read_text())["notebooks"]
    assert set(record) == {"99_earlier.ipynb", "01_ok.ipynb", "02_broken.ipynb"}  # the earlier entry is kept
    ok, broken = record["01_ok.ipynb"], record["02_broken.ipynb"]
    assert ok["stdout"] == ["CI = None | data = None\n", "42\n"] and ok["executed"] == 2 and ok["errors"] == []
    assert ok["env"] == {"CI": None, "VPTQ_LAB_DATA": None, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    assert ok["repo_commit"] == "" and ok["date"].endswith("Z")  # tmp "clone" is no git repo
    assert broken["errors"] == ["RuntimeError: boom"] and broken["executed"] < broken["code_cells"]
    assert json.loads((repo / "notebooks" / "01_ok.ipynb").read_text())["cells"][1]["execution_count"]  # saved
    with pytest.raises(SystemExit):  # never on the checkout it lives in
        walkthrough.main(["--repo", str(REPO), "--out", str(out)])
