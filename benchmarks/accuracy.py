"""Recipes per budget (2, 3 and 4 bits) on the default model: presets and fine-tuning, on the same test windows.

Every row is quantized (and fine-tuned) from the same default model and evaluated on the first ``--windows``
WikiText-2 test windows of 2048 tokens. Rows already measured by ``benchmarks/vptq_table.py`` (the presets and
layer-wise fine-tuning) are taken from its cache; the others are computed here and cached in
``benchmarks/results/accuracy.cache.jsonl`` (one JSON line each, keyed like the compare caches), so an
interrupted run resumes at the next row (a row killed during its quantization resumes from its block checkpoints,
and its time adds the killed runs' time up to their last committed block, `quantize_s_before_resume`). Writes
``benchmarks/results/accuracy.csv`` and ``accuracy.md``.

    OMP_NUM_THREADS=1 python benchmarks/accuracy.py --rows vptq2-e2e

Distillation trains on validation windows and selects on held-out validation windows (the last 2 windows of 512
tokens of the validation split), never on the test split.

``--malloc release`` first calls ``release_freed_memory()`` (glibc's mmap threshold fixed: less resident
memory, more CPU time; ``benchmarks/results/distill_memory.json``); the default leaves glibc as it is.
``peak_rss_gb`` is the whole run's peak, evaluation included; ``details`` also holds ``recipe_peak_rss_gb``, the
peak of quantization and fine-tuning alone (the recipe a user runs), and ``recipe_cpu_seconds``, their CPU time
(with one thread, the time the recipe would take alone even beside other jobs). ``--rerun`` measures rows again that are
already cached (the newest line wins). ``--fresh`` quantizes afresh a row that would reuse another row's
quantization (``QUANTIZED_AS``), so that its time is one run's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import pandas as pd
import torch
from _bench import RESULTS, add_malloc_arg, apply_malloc, markdown_table

from vptq_lab import calibration_windows, load_model, load_wikitext2, perplexity, preset, quantize_
from vptq_lab.io.data import tokenize
from vptq_lab.lab.compare import cache_versions, code_commit, config_key, current_rows, peak_rss
from vptq_lab.model.finetune import DISTILL_WINDOWS, DistillConfig, distill_, split_heldout

CACHE = RESULTS / "accuracy.cache.jsonl"
CHECKPOINTS = Path("artifacts") / "accuracy-checkpoints"  # per row: block checkpoints to resume a crashed run
COLUMNS = [
    "budget",
    "recipe",
    "bits_per_weight",
    "perplexity",
    "windows",
    "fp_perplexity",
    "quantize_seconds",
    "peak_rss_gb",
    "best",
    "commit",
    "details",
]
DISTILL = DistillConfig(steps=80, lr=2e-4, batch=1, eval_every=20, patience=3)  # DistillConfig()'s defaults
DISTILL_DATA = DISTILL_WINDOWS  # what `vptq-lab quantize --finetune e2e` uses

# name -> (budget, recipe, layer-wise fine-tuning, end-to-end distillation, changes to the budget's preset)
SHARED_2BIT = {"vector_lens": (-1, 6), "num_centroids": (-1, 2048), "group_num": 1, "codebook_scope": "per-block"}
PLAN = {
    "vptq2-e2e": (2, "2-bit preset + end-to-end distillation", False, True, {}),
    "vptq2-lw-e2e": (2, "2-bit preset + layer-wise + end-to-end", True, True, {}),
    "vptq2-e2e-cos240": (2, "2-bit preset + end-to-end, 240 steps, cosine lr", False, True, {}),
    "vptq2-e2e-cos240-lr5e-4": (2, "2-bit preset + end-to-end, 240 steps, cosine lr 5e-4", False, True, {}),
    "vptq2-e2e-cos240-lr1e-3": (2, "2-bit preset + end-to-end, 240 steps, cosine lr 1e-3", False, True, {}),
    "vptq2-e2e-cos240-lr5e-4-head": (
        2,
        "2-bit preset + end-to-end, 240 steps, cosine lr 5e-4, head and tied embeddings trained",
        False,
        True,
        {},
    ),
    "vptq2-shared": (2, "2-bit, one v6/k2048 codebook per block", False, False, SHARED_2BIT),
    "vptq2-shared-e2e": (2, "2-bit, one v6/k2048 codebook per block + end-to-end", False, True, SHARED_2BIT),
    "vptq3-e2e": (3, "3-bit preset + end-to-end distillation", False, True, {}),
    "vptq4-e2e": (4, "4-bit preset + end-to-end distillation", False, True, {}),
    "vptq3-e2e-cos240-lr5e-4": (3, "3-bit preset + end-to-end, 240 steps, cosine lr 5e-4", False, True, {}),
    "vptq4-e2e-cos240-lr5e-4": (4, "4-bit preset + end-to-end, 240 steps, cosine lr 5e-4", False, True, {}),
    "vptq3-e2e-cos240-lr5e-4-head": (
        3,
        "3-bit preset + end-to-end, 240 steps, cosine lr 5e-4, head and tied embeddings trained",
        False,
        True,
        {},
    ),
    "vptq4-e2e-cos240-lr5e-4-head": (
        4,
        "4-bit preset + end-to-end, 240 steps, cosine lr 5e-4, head and tied embeddings trained",
        False,
        True,
        {},
    ),
    "vptq4-e2e-cos240-lr1e-4-kl": (
        4,
        "4-bit preset + end-to-end, 240 steps, cosine lr 1e-4, kept by KL",
        False,
        True,
        {},
    ),
    "vptq3-e2e-cos240-lr2e-4-kl": (
        3,
        "3-bit preset + end-to-end, 240 steps, cosine lr 2e-4, kept by KL",
        False,
        True,
        {},
    ),
    "vptq4-e2e-cos240-lr2e-4-kl": (
        4,
        "4-bit preset + end-to-end, 240 steps, cosine lr 2e-4, kept by KL",
        False,
        True,
        {},
    ),
    "vptq3-e2e-cos240-lr5e-4-kl": (
        3,
        "3-bit preset + end-to-end, 240 steps, cosine lr 5e-4, kept by KL",
        False,
        True,
        {},
    ),
    "vptq3-e2e-cos240-lr5e-4-head-kl": (
        3,
        "3-bit preset + end-to-end, 240 steps, cosine lr 5e-4, head and tied embeddings trained, kept by KL",
        False,
        True,
        {},
    ),
    "vptq3-e2e-cos480-lr5e-4-head-kl": (
        3,
        "3-bit preset + end-to-end, 480 steps, cosine lr 5e-4, head and tied embeddings trained, kept by KL",
        False,
        True,
        {},
    ),
    "vptq3-e2e-cos240-lr5e-4-head-kl-h10": (
        3,
        "3-bit preset + end-to-end, 240 steps, cosine lr 5e-4, head and tied embeddings trained, kept by KL, "
        "hidden-state term x10",
        False,
        True,
        {},
    ),
    "vptq4-e2e-cos480-lr2e-4-head-kl": (
        4,
        "4-bit preset + end-to-end, 480 steps, cosine lr 2e-4, head and tied embeddings trained, kept by KL",
        False,
        True,
        {},
    ),
    "vptq4-e2e-cos240-lr2e-4-head-kl-h10": (
        4,
        "4-bit preset + end-to-end, 240 steps, cosine lr 2e-4, head and tied embeddings trained, kept by KL, "
        "hidden-state term x10",
        False,
        True,
        {},
    ),
    "vptq4-e2e-cos240-lr5e-4-kl": (
        4,
        "4-bit preset + end-to-end, 240 steps, cosine lr 5e-4, kept by KL",
        False,
        True,
        {},
    ),
    "vptq4-e2e-cos240-lr2e-4-head-kl": (
        4,
        "4-bit preset + end-to-end, 240 steps, cosine lr 2e-4, head and tied embeddings trained, kept by KL",
        False,
        True,
        {},
    ),
    # layer-wise fine-tuning of each block before the budget's best distillation recipe (at 2 bits and 80 constant
    # steps, layer-wise first took 48.63 to 46.95)
    "vptq3-lw-e2e-cos240-lr5e-4-head-kl": (
        3,
        "3-bit preset + layer-wise + end-to-end, 240 steps, cosine lr 5e-4, head and tied embeddings trained, "
        "kept by KL",
        True,
        True,
        {},
    ),
    "vptq3-lw-e2e-cos480-lr5e-4-head-kl": (
        3,
        "3-bit preset + layer-wise + end-to-end, 480 steps, cosine lr 5e-4, head and tied embeddings trained, "
        "kept by KL",
        True,
        True,
        {},
    ),
    "vptq3-lw-e2e-cos480-lr5e-4-head-kl-p24": (
        3,
        "3-bit preset + layer-wise + end-to-end, 480 steps, cosine lr 5e-4, head and tied embeddings trained, "
        "kept by KL, no early stop",
        True,
        True,
        {},
    ),
    "vptq4-lw-e2e-cos240-lr2e-4-head-kl": (
        4,
        "4-bit preset + layer-wise + end-to-end, 240 steps, cosine lr 2e-4, head and tied embeddings trained, "
        "kept by KL",
        True,
        True,
        {},
    ),
    # the 4-bit 480-step row stopped early at step 160 (patience 3 on a noisy held-out KL): the same run without
    # early stopping, alone and after layer-wise fine-tuning
    "vptq4-e2e-cos480-lr2e-4-head-kl-p24": (
        4,
        "4-bit preset + end-to-end, 480 steps, cosine lr 2e-4, head and tied embeddings trained, kept by KL, "
        "no early stop",
        False,
        True,
        {},
    ),
    "vptq4-lw-e2e-cos480-lr2e-4-head-kl-p24": (
        4,
        "4-bit preset + layer-wise + end-to-end, 480 steps, cosine lr 2e-4, head and tied embeddings trained, "
        "kept by KL, no early stop",
        True,
        True,
        {},
    ),
    "vptq4-calib128x512": (4, "4-bit preset, 128 x 512 calibration tokens", False, False, {"nsamples": 128}),
    # the presets as today's code quantizes them (the preset rows above come from vptq_table.py at an older commit):
    # the starting points of the rows that reuse these quantizations, evaluated without fine-tuning
    "vptq3-now": (3, "3-bit preset (quantized by the code of the 3-bit e2e rows)", False, False, {}),
    "vptq4-now": (4, "4-bit preset (quantized by the code of the 4-bit e2e rows)", False, False, {}),
    "vptq4-e2e-now": (
        4,
        "4-bit preset + end-to-end distillation (quantized by the code of the 4-bit e2e rows)",
        False,
        True,
        {},
    ),
}
# A row whose quantization is another row's, config for config: it starts from a copy of that row's block
# checkpoints (quantization is deterministic for a seed and thread count), and its time and memory add that row's
# quantization to its own fine-tuning, so the row still counts everything.
QUANTIZED_AS = {
    "vptq2-shared-e2e": "vptq2-shared",
    "vptq2-e2e-cos240": "vptq2-e2e",
    "vptq2-e2e-cos240-lr5e-4": "vptq2-e2e",
    "vptq2-e2e-cos240-lr1e-3": "vptq2-e2e",
    "vptq2-e2e-cos240-lr5e-4-head": "vptq2-e2e-cos240-lr5e-4",
    "vptq4-e2e-cos240-lr1e-4-kl": "vptq4-e2e-cos240-lr5e-4-head",
    "vptq4-e2e-cos240-lr2e-4-kl": "vptq4-e2e-cos240-lr5e-4-head",
    "vptq3-now": "vptq3-e2e-cos240-lr2e-4-kl",
    "vptq3-e2e-cos240-lr5e-4-kl": "vptq3-e2e-cos240-lr2e-4-kl",
    "vptq3-e2e-cos240-lr5e-4-head-kl": "vptq3-e2e-cos240-lr2e-4-kl",
    "vptq3-e2e-cos480-lr5e-4-head-kl": "vptq3-e2e-cos240-lr2e-4-kl",
    "vptq4-e2e-cos240-lr5e-4-kl": "vptq4-e2e-cos240-lr5e-4-head",
    "vptq4-e2e-cos240-lr2e-4-head-kl": "vptq4-e2e-cos240-lr5e-4-head",
    "vptq4-now": "vptq4-e2e-cos240-lr5e-4-head",
    "vptq4-e2e-cos240-lr2e-4-head-kl-h10": "vptq4-e2e-cos240-lr5e-4-head",
    "vptq4-e2e-cos480-lr2e-4-head-kl": "vptq4-e2e-cos240-lr5e-4-head",
    "vptq3-e2e-cos240-lr5e-4-head-kl-h10": "vptq3-e2e-cos240-lr2e-4-kl",
    "vptq4-e2e-now": "vptq4-e2e-cos240-lr5e-4-head",
    "vptq3-lw-e2e-cos480-lr5e-4-head-kl": "vptq3-lw-e2e-cos240-lr5e-4-head-kl",
    "vptq3-lw-e2e-cos480-lr5e-4-head-kl-p24": "vptq3-lw-e2e-cos240-lr5e-4-head-kl",
    "vptq4-e2e-cos480-lr2e-4-head-kl-p24": "vptq4-e2e-cos240-lr5e-4-head",
    "vptq4-lw-e2e-cos480-lr2e-4-head-kl-p24": "vptq4-lw-e2e-cos240-lr2e-4-head-kl",
}
# Rows measured on a quantization that today's code no longer makes (the quantizer changed after them, see
# docs/results.md): they stay in the table, marked, and are never `best`, since their command would not reproduce
# them; the row named measures the same recipe on today's quantization.
SUPERSEDED = {"vptq4-e2e": "vptq4-e2e-now"}
SUPERSEDED_MARK = "[older quantization]"
# A row's changes to DISTILL (the rows not named here use DISTILL itself).
DISTILL_CHANGES = {
    "vptq2-e2e-cos240": {"steps": 240, "schedule": "cosine"},
    "vptq2-e2e-cos240-lr5e-4": {"steps": 240, "schedule": "cosine", "lr": 5e-4},
    "vptq2-e2e-cos240-lr1e-3": {"steps": 240, "schedule": "cosine", "lr": 1e-3},
    "vptq2-e2e-cos240-lr5e-4-head": {"steps": 240, "schedule": "cosine", "lr": 5e-4, "train_head": True},
    "vptq3-e2e-cos240-lr5e-4": {"steps": 240, "schedule": "cosine", "lr": 5e-4},
    "vptq4-e2e-cos240-lr5e-4": {"steps": 240, "schedule": "cosine", "lr": 5e-4},
    "vptq3-e2e-cos240-lr5e-4-head": {"steps": 240, "schedule": "cosine", "lr": 5e-4, "train_head": True},
    "vptq4-e2e-cos240-lr5e-4-head": {"steps": 240, "schedule": "cosine", "lr": 5e-4, "train_head": True},
    "vptq4-e2e-cos240-lr1e-4-kl": {"steps": 240, "schedule": "cosine", "lr": 1e-4, "select": "kl"},
    "vptq3-e2e-cos240-lr2e-4-kl": {"steps": 240, "schedule": "cosine", "lr": 2e-4, "select": "kl"},
    "vptq4-e2e-cos240-lr2e-4-kl": {"steps": 240, "schedule": "cosine", "lr": 2e-4, "select": "kl"},
    "vptq3-e2e-cos240-lr5e-4-kl": {"steps": 240, "schedule": "cosine", "lr": 5e-4, "select": "kl"},
    "vptq3-e2e-cos240-lr5e-4-head-kl": {
        "steps": 240,
        "schedule": "cosine",
        "lr": 5e-4,
        "select": "kl",
        "train_head": True,
    },
    "vptq3-e2e-cos480-lr5e-4-head-kl": {
        "steps": 480,
        "schedule": "cosine",
        "lr": 5e-4,
        "select": "kl",
        "train_head": True,
    },
    "vptq4-e2e-cos240-lr5e-4-kl": {"steps": 240, "schedule": "cosine", "lr": 5e-4, "select": "kl"},
    "vptq3-e2e-cos240-lr5e-4-head-kl-h10": {
        "steps": 240,
        "schedule": "cosine",
        "lr": 5e-4,
        "select": "kl",
        "train_head": True,
        "hidden_weight": 10.0,
    },
    "vptq4-e2e-cos480-lr2e-4-head-kl": {
        "steps": 480,
        "schedule": "cosine",
        "lr": 2e-4,
        "select": "kl",
        "train_head": True,
    },
    "vptq4-e2e-cos240-lr2e-4-head-kl-h10": {
        "steps": 240,
        "schedule": "cosine",
        "lr": 2e-4,
        "select": "kl",
        "train_head": True,
        "hidden_weight": 10.0,
    },
    "vptq4-e2e-cos240-lr2e-4-head-kl": {
        "steps": 240,
        "schedule": "cosine",
        "lr": 2e-4,
        "select": "kl",
        "train_head": True,
    },
}

# The layer-wise rows distil as the row without layer-wise fine-tuning named here.
LAYERWISE_TWIN = {
    "vptq3-lw-e2e-cos240-lr5e-4-head-kl": "vptq3-e2e-cos240-lr5e-4-head-kl",
    "vptq3-lw-e2e-cos480-lr5e-4-head-kl": "vptq3-e2e-cos480-lr5e-4-head-kl",
    "vptq4-lw-e2e-cos240-lr2e-4-head-kl": "vptq4-e2e-cos240-lr2e-4-head-kl",
    "vptq4-lw-e2e-cos480-lr2e-4-head-kl-p24": "vptq4-e2e-cos480-lr2e-4-head-kl-p24",
}
# Rows that distil as the row named here without early stopping: 24 evaluations of patience never stop a 480-step run.
# Patience 3 stopped the 3-bit 480-step layer-wise row at step 60 (its first three evaluations, lr near 5e-4, were
# all above the layer-wise start) and the 4-bit 480-step row at step 160 (a noisy held-out KL).
NO_EARLY_STOP = {
    "vptq3-lw-e2e-cos480-lr5e-4-head-kl-p24": "vptq3-lw-e2e-cos480-lr5e-4-head-kl",
    "vptq4-e2e-cos480-lr2e-4-head-kl-p24": "vptq4-e2e-cos480-lr2e-4-head-kl",
}


def distill_changes(name: str) -> dict:
    """A row's changes to DISTILL: its own, its layer-wise twin's, or those of the row it repeats without early
    stopping."""
    if name in LAYERWISE_TWIN:
        return distill_changes(LAYERWISE_TWIN[name])
    if name in NO_EARLY_STOP:
        return {**distill_changes(NO_EARLY_STOP[name]), "patience": 24}
    return DISTILL_CHANGES.get(name, {})


def distill_config(name: str) -> DistillConfig:
    return DISTILL.replace(**distill_changes(name))


def _key(name: str, windows: int) -> str:
    key = {
        "row": name,
        "windows": windows,
        "distill": config_key(distill_config(name)),
        "distill_data": DISTILL_DATA,
        **cache_versions(),
    }
    if PLAN[name][4]:  # rows keyed before the preset changes existed keep their keys
        key["changes"] = {k: list(v) if isinstance(v, tuple) else v for k, v in PLAN[name][4].items()}
    return json.dumps(key, sort_keys=True)


def run_row(name: str, windows: int, malloc: str, reuse: bool = True) -> dict:
    budget, recipe, layerwise, e2e, changes = PLAN[name]
    commit = code_commit()  # the code that runs, read before the long work
    config = preset(budget).replace(finetune=layerwise, finetune_batch=1, **changes)
    student, tokenizer = load_model("default")
    valid = load_wikitext2("validation")
    with peak_rss() as memory:
        with peak_rss() as recipe_memory:
            start, cpu = time.perf_counter(), time.process_time()
            calib = calibration_windows(tokenizer, valid, config.nsamples, config.seqlen, config.seed)
            # block checkpoints: a rerun after a crash (in distillation, say) resumes instead of quantizing again
            ckpt = CHECKPOINTS / name
            reused = _reuse_quantization(name, ckpt) if reuse else None
            report = quantize_(student, config, calib, checkpoint_dir=ckpt, resume=ckpt.exists())
            details = {"quantize_s": round(time.perf_counter() - start, 1), "malloc": malloc}
            if e2e:
                teacher, _ = load_model("default")
                train, held = split_heldout(tokenize(tokenizer, valid), **DISTILL_DATA, seed=config.seed)
                distilled = distill_(student, teacher, train, held, distill_config(name))
                del teacher
                details["distill"] = distilled.to_dict()
            seconds = round(time.perf_counter() - start, 1)
            details["recipe_cpu_seconds"] = round(time.process_time() - cpu, 1)  # the time alone, at one thread
        details["recipe_peak_rss_gb"] = round(recipe_memory["peak_gib"] * 2**30 / 1e9, 3)
        if reused:
            details["quantization_from"] = reused
            seconds = round(seconds + reused["quantize_s"], 1)
        elif report.seconds_before_resume != 0.0:  # resumed after a kill: the earlier runs' blocks count too
            details["quantize_s_before_resume"] = report.seconds_before_resume  # None: a folder from before the record
            seconds = round(seconds + (report.seconds_before_resume or 0.0), 1)
        details["stored_bits_per_weight"] = round(report.total_bits_per_weight(stored=True), 4)
        rec = perplexity(student, tokenizer, max_windows=windows)
    return {
        "budget": budget,
        "recipe": recipe,
        "bits_per_weight": round(report.total_bits_per_weight(), 4),
        "perplexity": round(rec.perplexity, 4),
        "windows": rec.windows,
        "quantize_seconds": seconds,
        "peak_rss_gb": round(max(memory["peak_gib"] * 2**30 / 1e9, reused["peak_rss_gb"] if reused else 0.0), 3),
        "commit": commit,
        "threads": torch.get_num_threads(),
        "comparable": rec.comparable,
        "details": json.dumps(details),
    }


def _reuse_quantization(name: str, ckpt: Path) -> dict | None:
    """Seed ``ckpt`` with the checkpoints of the row that ``name`` is quantized as; return that quantization's cost."""
    source = QUANTIZED_AS.get(name)
    if source is None:
        return None
    done = current_rows(CACHE)
    row = next((r for k, r in done.items() if json.loads(k)["row"] == source), None)
    src = ckpt.parent / source
    if row is None or not src.is_dir():
        raise SystemExit(f"{name} reuses the quantization of {source}: run --rows {source} first")
    if not ckpt.exists():
        shutil.copytree(src, ckpt)  # a copy: the source row's folder is left as it is
    quantize_s = json.loads(row["details"])["quantize_s"]
    return {"row": source, "commit": row["commit"], "quantize_s": quantize_s, "peak_rss_gb": row["peak_rss_gb"]}


def table_rows() -> list[dict]:
    """This script's cached rows, plus the preset and layer-wise rows of vptq_table's cache."""
    rows = []
    for key, r in current_rows(CACHE).items():
        name = json.loads(key)["row"]
        if name in SUPERSEDED:
            r = {**r, "recipe": f"{r['recipe']} {SUPERSEDED_MARK} (today's: row {SUPERSEDED[name]})"}
        rows.append(r)
    for r in current_rows(RESULTS / "vptq_table.cache.jsonl").values():
        if r["method"] == "fp":
            continue
        cfg = json.loads(r["config"])
        if cfg["propagation"] != "quantized":
            continue
        recipe = f"{r['target_bits']}-bit preset" + (" + layer-wise" if cfg["finetune"] else "")
        rows.append(
            {
                "budget": r["target_bits"],
                "recipe": recipe,
                "bits_per_weight": r["bits"],
                "perplexity": r["perplexity"],
                "windows": r["windows"],
                "quantize_seconds": r["quant_seconds"],
                "peak_rss_gb": round(r["peak_rss_gib"] * 2**30 / 1e9, 3),
                "commit": r["commit"],
                "details": "benchmarks/results/vptq_table.cache.jsonl",
            }
        )
    return rows


def write(windows: int) -> pd.DataFrame:
    fp = next(r for r in current_rows(RESULTS / "vptq_table.cache.jsonl").values() if r["method"] == "fp")
    table = pd.DataFrame(table_rows())
    table = table[table.windows == windows].copy()
    table["fp_perplexity"] = fp["perplexity"]
    within = (table.bits_per_weight <= table.budget) & ~table.recipe.str.contains(SUPERSEDED_MARK, regex=False)
    best = table[within].groupby("budget").perplexity.idxmin()
    table["best"] = table.index.isin(best.values)
    table = table.sort_values(["budget", "perplexity"])[COLUMNS]
    table.to_csv(RESULTS / "accuracy.csv", index=False)
    (RESULTS / "accuracy.md").write_text(markdown_table(table.drop(columns=["details"])))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="vptq2-e2e", help=f"comma-separated, of {', '.join(PLAN)}; none: table only")
    parser.add_argument("--windows", type=int, default=32)
    add_malloc_arg(parser)
    parser.add_argument("--rerun", action="store_true", help="measure the rows again even if they are cached")
    parser.add_argument(
        "--fresh", action="store_true", help="quantize afresh even rows that reuse another row's quantization"
    )
    args = parser.parse_args()
    apply_malloc(parser, args)
    done = current_rows(CACHE)
    for name in [] if args.rows == "none" else args.rows.split(","):
        key = _key(name, args.windows)
        if key in done and not args.rerun:
            continue
        if (key in done or args.fresh) and (CHECKPOINTS / name).exists():
            parser.error(
                f"{name}: {CHECKPOINTS / name} holds an earlier run's block checkpoints, which --rerun or --fresh "
                "would resume from instead of quantizing again; move or delete that folder first"
            )
        row = run_row(name, args.windows, args.malloc, reuse=not args.fresh)
        with CACHE.open("a") as fh:
            fh.write(json.dumps({"key": key, "row": row}) + "\n")
        print(row, flush=True)
    print(write(args.windows).drop(columns=["details"]).to_string(index=False))


if __name__ == "__main__":
    main()
