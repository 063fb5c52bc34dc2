"""Issue 7's new-user check: open JupyterLab in a checkout, run notebooks with "Run All Cells", change nothing.

It drives Debian's chromium (playwright, never ``playwright install``) on a real JupyterLab, the way a user
clicks: open the notebook, accept the kernel, Run > Run All Cells, File > Save Notebook. Then it reads the
saved notebook and records, per notebook: wall time, cells executed, error outputs and the printed text.

The kernels get this process's environment without ``CI`` (so the notebooks run their full configuration)
and without ``$VPTQ_LAB_DATA`` (a new user has not set it). JupyterLab saves the executed notebooks into the
checkout, so give it a throwaway clone, never the checkout you commit from:

    git clone -q . /tmp/newuser && (cd /tmp/newuser && make venv)
    /tmp/newuser/.venv/bin/python tests/new_user_walkthrough.py --repo /tmp/newuser \\
        --notebooks 01 05 --out benchmarks/results/new_user_walkthrough.json

An existing --out file keeps the notebooks this run does not repeat; every entry records its commit, date
and OMP_NUM_THREADS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from lab_harness import CHROMIUM, CHROMIUM_ARGS, jupyterlab  # beside this script

HERE = Path(__file__).resolve().parents[1]


_REQUEST = re.compile(rb'"msg_type":\s*"execute_request"')
_REPLY = re.compile(rb'"msg_type":\s*"execute_reply"')


def _run_all(page, url: str, shots: Path, name: str, limit_s: float) -> float:
    """Open the notebook at url, Run All Cells, wait until the kernel answered every cell, save. Returns seconds.

    Progress is read from the kernel's websocket: Run All sends one execute_request per code cell, and the kernel
    answers each with an execute_reply (an "aborted" one for the cells after an error). Prompts such as "[*]" are
    not reliable on a quick notebook or a busy machine: they can come and go, or not yet be drawn, between polls.
    """
    page.set_default_timeout(120_000)
    sent: list[int] = []
    answered: list[int] = []

    def on_websocket(ws) -> None:
        def count(frames: list[int], pattern: re.Pattern):
            return lambda payload: (
                frames.append(1)
                if pattern.search(payload if isinstance(payload, bytes) else payload.encode())
                else None
            )

        ws.on("framesent", count(sent, _REQUEST))
        ws.on("framereceived", count(answered, _REPLY))

    page.on("websocket", on_websocket)  # before goto, so the kernel's socket is seen
    try:
        page.goto(url)
        page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for()
        idle = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator[data-status='idle']")
        idle.wait_for(timeout=120_000)
        page.locator(".jp-StatusBar-Widget", has_text="| Idle").first.wait_for(timeout=120_000)  # kernel connected
        current = page.locator(".lm-DockPanel .lm-TabBar-tab.lm-mod-current .lm-TabBar-tabLabel")
        current.filter(has_text=name).first.wait_for(timeout=60_000)  # Run All acts on the current tab
        start = time.monotonic()
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel").get_by_text("Run All Cells", exact=True).click()
        queued = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-InputPrompt", has_text="[*]")
        quiet = 0
        while quiet < 2:  # every cell answered, then two polls in a row with the page showing nothing running
            if time.monotonic() - start > limit_s:
                raise TimeoutError(f"{name} still running after {limit_s:.0f}s")
            if not sent and time.monotonic() - start > 60:
                raise TimeoutError(f"{name}: Run All Cells sent nothing to the kernel within 60 s")
            page.wait_for_timeout(1_000)
            done = sent and len(answered) >= len(sent) and queued.count() == 0 and idle.count() == 1
            quiet = quiet + 1 if done else 0
    finally:
        page.remove_listener("websocket", on_websocket)
    seconds = time.monotonic() - start
    page.locator(".lm-MenuBar-itemLabel", has_text="File").first.click()
    page.locator(".lm-Menu-itemLabel").get_by_text("Save Notebook", exact=True).click()
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-mod-dirty").wait_for(state="detached", timeout=30_000)
    page.screenshot(path=str(shots / f"{Path(name).stem}.png"), full_page=False)
    return seconds


def _summary(path: Path, seconds: float) -> dict:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    errors = [
        f"{o.get('ename')}: {o.get('evalue')}"
        for c in code
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    text = [
        "".join(o.get("text", ""))
        for c in code
        for o in c.get("outputs", [])
        if o.get("output_type") == "stream" and o.get("name") == "stdout"
    ]
    tables = [
        "".join(o["data"]["text/plain"])
        for c in code
        for o in c.get("outputs", [])
        if o.get("output_type") == "execute_result"
        and "text/plain" in o.get("data", {})
        and "text/html" in o.get("data", {})
    ]
    return {
        "seconds": round(seconds, 1),
        "code_cells": len(code),
        "executed": sum(1 for c in code if c.get("execution_count")),
        "errors": errors,
        "stdout": text,
        "tables": tables,
    }


def _write(out: Path, record: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, required=True, help="a throwaway clone (its notebooks get overwritten)")
    ap.add_argument("--notebooks", nargs="+", default=["01", "05"], help="number prefixes, run in this order")
    ap.add_argument("--out", type=Path, required=True, help="JSON results file")
    ap.add_argument("--limit-min", type=float, default=180, help="give up on a notebook after this many minutes")
    args = ap.parse_args(argv)
    repo = args.repo.resolve()
    if repo == HERE:
        ap.error(f"--repo {repo} is this checkout: JupyterLab would overwrite the committed notebooks; clone it first")
    if not CHROMIUM.exists():
        ap.error("Debian chromium not found at /usr/bin/chromium: apt-get install -y --no-install-recommends chromium")
    from playwright.sync_api import sync_playwright

    paths = [next(iter(sorted((repo / "notebooks").glob(f"{n}_*.ipynb"))), None) for n in args.notebooks]
    missing = [n for n, p in zip(args.notebooks, paths) if p is None]
    if missing:
        ap.error(f"no notebooks/{missing[0]}_*.ipynb in {repo}")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "VPTQ_LAB_DATA")}
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"vptq_lab_walkthrough_{os.getpid()}"
    shots = repo / "artifacts" / "walkthrough"
    shots.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    # Notebooks recorded earlier in --out stay unless run again here; each entry says which commit and threads ran it.
    old = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {}
    record = {
        "how": "JupyterLab + chromium: open, Run > Run All Cells, File > Save Notebook",
        "notebooks": old.get("notebooks", {}),
    }
    run_info = {
        "repo_commit": commit,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "env": {"CI": None, "VPTQ_LAB_DATA": None, "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS")},
    }
    with open(shots / "jupyterlab.log", "w") as log, jupyterlab(repo, work / "home", log, env) as (port, token):
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                str(work / "profile"),
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 1400},
            )
            page = context.pages[0] if context.pages else context.new_page()
            dialog = page.locator(".jp-Dialog")
            page.add_locator_handler(dialog, lambda: dialog.locator(".jp-mod-accept").click())
            try:
                for path in paths:
                    rel = path.relative_to(repo).as_posix()
                    print(f"running {rel} ...", flush=True)
                    # a fresh workspace per notebook: only its tab is open, so Run All cannot reach the last one
                    url = f"http://127.0.0.1:{port}/lab/workspaces/walk-{path.stem[:2]}/tree/{rel}?reset&token={token}"
                    seconds = _run_all(page, url, shots, path.name, args.limit_min * 60)
                    record["notebooks"][path.name] = {
                        **run_info,
                        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        **_summary(path, seconds),
                    }
                    s = record["notebooks"][path.name]
                    print(
                        f"  {s['seconds']:.0f}s, {s['executed']}/{s['code_cells']} cells, errors: {s['errors']}",
                        flush=True,
                    )
                    _write(args.out, record)  # after each notebook, so a stopped run keeps what finished
            finally:
                context.close()
    _write(args.out, record)
    ran = [record["notebooks"][p.name] for p in paths]  # every one is there: a notebook that did not finish raised
    ok = all(not s["errors"] and s["executed"] == s["code_cells"] for s in ran)
    print("all cells ran, no errors" if ok else f"FAILED: see {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
