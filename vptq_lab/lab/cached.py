"""The default model quantized once and shared: what the tutorials (and anyone exploring) load instead of waiting.

    from vptq_lab.lab.cached import cached_quantized

    model, tokenizer, report = cached_quantized(2)   # the 2-bit preset: minutes the first time, a second after

The first call quantizes the default model with the ``bits`` preset (:func:`vptq_lab.run_recipe`, no fine-tuning),
with a progress bar, committing each block so that an interrupted build resumes, and saves it bit-exact (fp32) in
the cache folder (``$VPTQ_LAB_CACHE``, else ``~/.cache/vptq_lab``) under a key made of the recipe, the calibration
text, the checkpoint format and the results version. Later calls, and later notebooks, load that folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

__all__ = ["cached_quantized", "cached_folder"]


def cached_folder(bits: int, data_dir: str | None = None) -> Path:
    """Where :func:`cached_quantized` keeps the ``bits`` preset's model (it may not exist yet)."""
    from vptq_lab.io.checkpoint import FORMAT_VERSION
    from vptq_lab.io.data import load_wikitext2
    from vptq_lab.io.models import cache_dir
    from vptq_lab.lab.recipes import recipe
    from vptq_lab.lab.results import RESULTS_VERSION

    text = load_wikitext2("validation", data_dir)
    what = {
        "recipe": recipe(bits, finetune="none").to_dict(),
        "calibration_text": hashlib.sha256(text.joined().encode()).hexdigest(),
        "versions": [FORMAT_VERSION, RESULTS_VERSION],
    }
    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "quantized" / f"default-{bits}bit-{key}"


def cached_quantized(bits: int = 2, *, data_dir: str | None = None, progress: bool = True) -> tuple[Any, Any, dict]:
    """``(model, tokenizer, report)`` of the default model at the ``bits`` preset: the report is what
    ``report.json`` holds (per-layer records under ``"layers"``, timings, the recipe). Built once (module doc)."""
    import torch

    from vptq_lab.io.checkpoint import load_quantized
    from vptq_lab.lab.recipes import recipe, run_recipe

    folder = cached_folder(bits, data_dir)
    if not (folder / "report.json").is_file():
        blocks = folder.with_name(folder.name + ".blocks")  # block checkpoints of a build in progress
        run = run_recipe(
            recipe(bits, finetune="none"),
            data_dir=data_dir,
            progress=progress,
            checkpoint_dir=blocks,
            resume=blocks.is_dir(),
        )
        run.save(folder, dtype=torch.float32)  # written whole or not at all
        shutil.rmtree(blocks, ignore_errors=True)
    model, tokenizer = load_quantized(folder)
    return model, tokenizer, json.loads((folder / "report.json").read_text())
