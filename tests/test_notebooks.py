"""Static checks on the tutorials; nbval (in `make test`) executes them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_all_eight_tutorials_are_there():
    assert [p.name[:3] for p in NOTEBOOKS] == [f"{i:02d}_" for i in range(1, 9)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_opens_with_what_you_learn_need_and_how_long(path):
    first = _cells(path)[0]
    text = _source(first)
    assert first["cell_type"] == "markdown" and re.match(rf"# {path.name[:2]} · ", text), text[:80]
    for part in ("**What you will learn**", "**What it needs:**", "**How long:**"):
        assert part in text, f"{path.name}: the opening cell lacks {part}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_markdown_cells_are_not_commented_out(path):
    # Lines left as jupytext "# " comments render as top-level headings in JupyterLab. The notebook's title
    # (the first line of its first cell) is the only level-1 heading; sections use "## ".
    for i, cell in enumerate(_cells(path)):
        if cell["cell_type"] != "markdown":
            continue
        for j, line in enumerate(_source(cell).split("\n")):
            if (i, j) != (0, 0):
                assert not (line == "#" or line.startswith("# ")), f"{path.name} cell {i} line {j}: {line[:60]!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_executed_without_errors(path):
    code = [c for c in _cells(path) if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code), f"{path.name} is not committed executed"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name} was committed with an error output"


def _notebook(prefix: str) -> Path:
    return next(p for p in NOTEBOOKS if p.name.startswith(prefix))


def _code(prefix: str) -> str:
    path = _notebook(prefix)
    return "\n".join(_source(c) for c in _cells(path) if c["cell_type"] == "code")


# Every concept of docs/algorithm.md sections 2 (the pieces) and 3 (bit accounting), with the notebook and the code
# that computes it there. A notebook edit that drops one of these cells fails here.
CONCEPTS = {
    "2.1 Hessians from forward hooks, float64, divided by the token count": (
        "02",
        [r"hessian_hooks\(", r"rows\.T @ rows / rows\.shape\[0\]", r"H_tiny\.dtype"],
    ),
    "2.1 layers with one input share one H (q/k/v, gate/up)": ("02", [r"spec\.stages", r"one H serves all three"]),
    "2.1 quantized vs full-precision propagation": ("05", [r"SMALL_CFG\.replace\(propagation=mode\)"]),
    "2.1 how much propagation changes the next block's H": ("02", [r"next_hessian\(q_block0\)"]),
    "2.2 dead columns": ("02", [r"condition_hessian\(H_dead", r"Wc\[:, 3\] == 0"]),
    "2.2 damping": ("02", [r"percdamp=0\.01", r"smallest eigenvalue"]),
    "2.2 act-order": ("02", [r"act_order\(H_damped\)"]),
    "2.2 upper Cholesky factor of H^-1": ("02", [r"inverse_cholesky_upper\(H_damped\)", r"U\.double\(\)\.T @ U"]),
    "2.3 vectors: v output rows of one input column, padded": (
        "01",
        [r"to_vectors\(W_small, v=2\)", r"from_vectors\("],
    ),
    "2.4 k-means weighted by H_jj": ("03", [r"init_codebooks\(prep, config\)"]),
    "2.4 what per-point weights change in k-means": ("01", [r"weighted_kmeans\(X_iso, 8, weights=w"]),
    "2.5 the column loop with error feedback, and the no-feedback ablation": (
        "03",
        [r"quantize_columns\(prep, parts, config\.blocksize, feedback=True\)", r"feedback=False", r"vq_no_feedback\("],
    ),
    "2.6 residual VQ": ("04", [r"num_res_centroids=\(-1, k2\)"]),
    "2.7 outlier columns": ("04", [r"npercent=npercent", r"vector_lens=\(v0, base\.v\)"]),
    "2.8 groups": ("04", [r"group_num=g"]),
    "2.9 per-column normalisation": ("04", [r"enable_norm=True"]),
    "2.10 layer-wise fine-tuning": ("05", [r"finetune=True"]),
    "2.11 end-to-end distillation, indices fixed": ("05", [r"distill_\(student, teacher", r"indices_before"]),
    "3 index and codebook bits by hand, against bits_per_weight": ("01", [r"bits_per_weight\(cfg, \(out_f, in_f\)"]),
    "3 paper checks: 1.002 bits, 2.02 (7B), 2.19 (13B), 3.27 for 'v8-k65536-256'": (
        "01",
        [r"out_f, in_f, v, k = 4096, 4096, 8, 256", r'"2\.02"', r'"2\.19"', r'"3\.27"'],
    ),
    "3 totals per transformer block, with perm/scale/bias charged": ("01", [r"llama_block\(", r"enable_norm=True"]),
    "3 a k=4096, v=6 codebook costs ~0.8 bit per weight on the 135M model": (
        "07",
        [r"vptq_model_bits\(paper_cfg, SMOLLM2_135M_SHAPES\)"],
    ),
}


@pytest.mark.parametrize("concept", list(CONCEPTS))
def test_every_algorithm_concept_is_computed_in_a_notebook(concept):
    prefix, patterns = CONCEPTS[concept]
    code = _code(prefix)
    missing = [p for p in patterns if not re.search(p, code)]
    assert not missing, f"notebook {prefix} no longer computes {concept!r}: {missing}"


def test_the_concept_list_covers_every_numbered_piece_of_the_algorithm_doc():
    text = (Path(__file__).resolve().parents[1] / "docs" / "algorithm.md").read_text(encoding="utf-8")
    section = text[text.index("## 2.") : text.index("## 3.")]
    pieces = {f"2.{n}" for n in re.findall(r"^(\d+)\. \*\*", section, flags=re.M)}
    assert len(pieces) >= 10
    assert pieces <= {c.split()[0] for c in CONCEPTS}, sorted(pieces - {c.split()[0] for c in CONCEPTS})


# Committed outputs come from the default model ------------------------------------------------------------------

# What a smoke run or a random model leaves in a notebook's outputs or code.
SMOKE = re.compile(r"configuration: smoke|tiny random|tiny_llama|smoke (run|mode|configuration)", re.IGNORECASE)
# The default model's linear shapes (SmolLM2-135M: hidden 576, MLP 1536), as a quantizing tutorial prints them.
DEFAULT_SHAPES = re.compile(r"576\D{1,6}1536|1536\D{1,6}576|576\D{1,6}576")
QUANTIZES = re.compile(r"\b(quantize_|vptq_quantize|quantize_with_trace|cached_quantized|run_recipe)\(")


def _outputs_text(path: Path) -> str:
    texts = []
    for cell in _cells(path):
        for out in cell.get("outputs", []):
            texts.append("".join(out.get("text", "")))
            data = out.get("data", {})
            for kind in ("text/plain", "text/html", "text/markdown"):
                texts.append("".join(data.get(kind, "")))
    return "\n".join(texts)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_never_come_from_a_smoke_run_or_a_random_model(path):
    found = SMOKE.search(_outputs_text(path)) or SMOKE.search(_code(path.name[:2]))
    assert not found, f"{path.name}: {found.group(0)!r}: tutorials run on the default model, in CI too"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_tutorial_that_quantizes_shows_the_default_models_shapes(path):
    if not QUANTIZES.search(_code(path.name[:2])):
        pytest.skip(f"{path.name} quantizes nothing")
    assert DEFAULT_SHAPES.search(_outputs_text(path)), f"{path.name}: no output shows the default model's shapes"


def test_the_guards_catch_a_smoke_output(tmp_path):
    bad = tmp_path / "99_bad.ipynb"
    cell = {
        "cell_type": "code",
        "source": "quantize_(m)",
        "outputs": [{"output_type": "stream", "text": "configuration: smoke"}],
    }
    bad.write_text(json.dumps({"cells": [cell]}))
    assert SMOKE.search(_outputs_text(bad)) and not DEFAULT_SHAPES.search(_outputs_text(bad))
