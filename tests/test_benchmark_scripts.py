"""The GPU benchmark scripts, run in their CPU smoke mode, and the plot notebook 08 draws from their results.

No GPU reaches CI, so this is what keeps `benchmarks/kernel_speed.py` and `benchmarks/decode.py` working until one
does: the same code paths on tiny shapes (Triton under its interpreter), writing the same JSON layout.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vptq_lab.lab import plots

if importlib.util.find_spec("triton") is None:  # never import triton here: see conftest.py
    pytest.skip("triton is not installed (pip install 'vptq-lab[triton]')", allow_module_level=True)
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture(scope="module")
def kernels_json(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("kernels")
    proc = _run("kernel_speed.py", "--cpu-smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "kernels_cpu-smoke.json").read_text())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
@pytest.mark.parametrize("script", ["kernel_speed.py", "decode.py"])
def test_refuses_to_time_without_a_gpu(script, tmp_path):
    proc = _run(script, "--out", str(tmp_path))
    assert proc.returncode != 0 and "no CUDA device" in proc.stderr and "--cpu-smoke" in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_kernels_smoke_writes_every_row(kernels_json):
    meta, rows = kernels_json["meta"], kernels_json["rows"]
    assert meta["smoke"] is True and meta["device_name"] and meta["triton"] and meta["torch"] == torch.__version__
    # every tiny shape x bit budget x batch (1 and 16)
    assert {(r["shape"], r["bits"], r["batch"]) for r in rows} == {
        (s, b, n) for s in ("tiny_square", "tiny_up") for b in ("2bit_v8_k256", "3bit_v4_k64_k16") for n in (1, 16)
    }
    for r in rows:
        times = [v for k, v in r.items() if k.endswith("_ms")]
        assert len(times) >= 6 and all(math.isfinite(t) and t > 0 for t in times), r
        assert ("gemv_ms" in r) == (r["batch"] == 1)  # the fused GEMV takes at most 8 tokens (gemv.MAX_TOKENS)
        assert r["gemm_best"] in ("dequant", "fused")
        assert r["gemm_best"] == min(("dequant", "fused"), key=lambda m: r[f"gemm_{m}_ms"])
        assert r["speedup_vs_dense"] == pytest.approx(r["dense_ms"] / r["vq_linear_triton_ms"])
    v8 = next(r for r in rows if r["bits"] == "2bit_v8_k256")  # log2(256) / 8 = 1 index bit per weight
    assert v8["index_bits_per_weight"] == pytest.approx(1.0, abs=0.1)


def test_decode_smoke(tmp_path):
    proc = _run("decode.py", "--cpu-smoke", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "decode_cpu-smoke.json").read_text())
    assert data["meta"]["device"] and data["meta"]["config"]["layers"] == 2
    models = {r["model"]: r for r in data["rows"]}
    assert set(models) == {"dense", "2bit_v8_k256"}
    assert all(r["tokens_per_s"] > 0 and r["new_tokens"] > 0 for r in models.values())
    assert models["2bit_v8_k256"]["weights_gb"] < models["dense"]["weights_gb"]  # VQ weights are smaller


def test_kernel_results_plot(kernels_json):
    fig = plots.kernel_results(kernels_json)
    ax = fig.axes[0]
    assert kernels_json["meta"]["device_name"] in ax.get_title() and "2bit_v8_k256" in ax.get_title()
    assert "µs" in ax.get_ylabel() and plots.to_png(fig).startswith(b"\x89PNG")
    # 2 shapes x 2 batches, one bar each for dense, Triton and torch dequant
    assert len(ax.patches) == 12 and len(ax.get_xticklabels()) == 4
    assert {t.get_text() for t in ax.get_legend().get_texts()} == set(plots.KERNEL_PATHS.values())
    bars = sorted(p.get_height() for p in ax.patches)
    rows = [r for r in kernels_json["rows"] if r["bits"] == "2bit_v8_k256"]
    assert bars == pytest.approx(sorted(1000 * r[k] for r in rows for k in plots.KERNEL_PATHS))
    assert "3bit_v4_k64_k16" in plots.kernel_results(kernels_json, bits="3bit_v4_k64_k16").axes[0].get_title()
    with pytest.raises(ValueError, match="2bit_v8_k256"):
        plots.kernel_results(kernels_json, bits="4bit")
    with pytest.raises(ValueError, match="no rows"):
        plots.kernel_results({"meta": {}, "rows": []})


def test_notebook_08_plots_gpu_results_when_a_file_names_a_gpu(kernels_json, tmp_path, monkeypatch):
    # Notebook 08's benchmark cells, run where benchmarks/results holds one CPU file and one naming a GPU.
    cells = json.loads((BENCH.parent / "notebooks" / "08_kernels.ipynb").read_text(encoding="utf-8"))["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    start = next(i for i, s in enumerate(code) if "gpu_results = []" in s)
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "kernels_cpu-smoke.json").write_text(json.dumps(kernels_json))
    gpu = {
        "meta": {**kernels_json["meta"], "device_name": "NVIDIA H100 80GB HBM3 (test file)"},
        "rows": kernels_json["rows"],
    }
    (results / "kernels.json").write_text(json.dumps(gpu))
    monkeypatch.chdir(results)
    shown: list = []
    namespace = {"json": json, "Path": Path, "plots": plots, "display": shown.append}
    for source in code[start : start + 1]:  # the cell that finds GPU files and plots them
        exec(source, namespace)  # noqa: S102 - the notebook's own cells
    assert [(name, device) for name, device, _ in namespace["gpu_results"]] == [
        ("kernels.json", "NVIDIA H100 80GB HBM3 (test file)")
    ]  # the CPU file is skipped
    titles = [fig.axes[0].get_title() for fig in shown]
    assert len(titles) == 2 and all(t.startswith("NVIDIA H100 80GB HBM3 (test file)") for t in titles)
