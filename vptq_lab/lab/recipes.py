"""Recipes: the tuned settings per bit budget, and the one pipeline that runs them.

A :class:`Recipe` says everything ``vptq-lab quantize`` does to a model: the quantizer's config, layer-wise
fine-tuning after each block, and end-to-end distillation from the unquantized model afterwards.
:func:`recipe` gives the one measured best on the default model at a budget (docs/results.md); :func:`run_recipe`
runs one: load the model, calibrate on WikiText-2 validation windows, quantize, distil. The CLI, the benchmarks and
the notebooks all call it, so a table's row and the command that reproduces it take the same path.

    from vptq_lab import recipe, run_recipe

    run = run_recipe(recipe(2))                 # the 2-bit preset, then its distillation
    run.save("q2")                              # the official VPTQ layout, with report.json
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vptq_lab.core.config import VPTQConfig
from vptq_lab.errors import VPTQLabError

log = logging.getLogger(__name__)

__all__ = [
    "Recipe",
    "RecipeRun",
    "recipe",
    "run_recipe",
    "distill_from",
    "FINETUNE_MODES",
    "BEST_FINETUNE",
    "DISTILL_RECIPES",
    "DISTILL_WINDOWS",
    "recipe_for_bits",
]

FINETUNE_MODES = ("none", "layer", "e2e", "layer+e2e")

# The windows distillation trains and selects on, from WikiText-2 validation (split_heldout's arguments): 256 of
# 512 tokens drawn from the text before the last 8 windows, which are held out to select the kept state.
DISTILL_WINDOWS = {"seqlen": 512, "train": 256, "heldout": 8}

# End-to-end distillation per budget: DistillConfig's fields that differ from its defaults. Each runs its cosine
# schedule to the end (a patience above its evaluations) and keeps the state with the lowest held-out KL.
DISTILL_RECIPES: dict[int, dict[str, Any]] = {
    2: {"steps": 240, "schedule": "cosine", "lr": 5e-4, "train_head": True, "select": "kl", "patience": 13},
    3: {"steps": 480, "schedule": "cosine", "lr": 5e-4, "train_head": True, "select": "kl", "patience": 25},
    4: {"steps": 480, "schedule": "cosine", "lr": 2e-4, "train_head": True, "select": "kl", "patience": 25},
}

# The fine-tuning that gives the best model per budget: layer-wise first helps at 3 and 4 bits (docs/results.md).
BEST_FINETUNE = {2: "e2e", 3: "layer+e2e", 4: "layer+e2e"}


@dataclass(frozen=True)
class Recipe:
    """What a quantization run does. ``quantize``: the method's config (a :class:`VPTQConfig` for "vptq" and "vq");
    ``finetune``: one of :data:`FINETUNE_MODES`; ``distill``: the :class:`DistillConfig` when it includes "e2e"."""

    quantize: Any
    method: str = "vptq"
    finetune: str = "none"
    distill: Any = None
    bits: int | None = None  # the budget it was tuned for, if any
    # mixed allocation: each linear gets the ladder's config of least predicted cost within the bits of ``quantize``
    # on the model (:mod:`vptq_lab.lab.allocation`); ``quantize`` then gives only the run-wide settings
    allocate: bool = False
    # with ``allocate``: role -> a factor on that role's predicted cost (:func:`.allocation.role_scale_from_check`),
    # as sorted (role, factor) pairs
    role_scale: tuple[tuple[str, float], ...] | None = None

    def __post_init__(self) -> None:
        if self.finetune not in FINETUNE_MODES:
            raise VPTQLabError(f"finetune={self.finetune!r}: choose one of {', '.join(FINETUNE_MODES)}")
        if ("e2e" in self.finetune) != (self.distill is not None):
            raise VPTQLabError(
                f"finetune={self.finetune!r} but distill={self.distill!r}: end-to-end fine-tuning needs a "
                "DistillConfig, and only it does"
            )
        if "layer" in self.finetune and self.method not in ("vptq", "vq"):
            raise VPTQLabError(f"layer-wise fine-tuning trains codebooks: method {self.method!r} has none")
        if self.allocate and (self.method != "vptq" or not isinstance(self.quantize, VPTQConfig)):
            raise VPTQLabError("mixed allocation (allocate=True) chooses among VPTQ configs: give a VPTQConfig")
        if self.role_scale is not None and not self.allocate:
            raise VPTQLabError("role_scale corrects the costs mixed allocation weighs: it needs allocate=True")

    @property
    def layerwise(self) -> bool:
        return "layer" in self.finetune

    def quantizer_config(self) -> Any:
        """The config ``quantize_`` gets: ``quantize``, with layer-wise fine-tuning switched on when asked for."""
        return self.quantize.replace(finetune=True) if self.layerwise else self.quantize

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "bits": self.bits,
            "finetune": self.finetune,
            "quantize": self.quantize.to_dict(),
            "distill": None if self.distill is None else self.distill.to_dict(),
            "allocate": self.allocate,
            # only when set, so the recipes measured before it keep their cache keys
            **({"role_scale": dict(self.role_scale)} if self.role_scale is not None else {}),
        }


def recipe(
    bits: int,
    method: str = "vptq",
    finetune: str | None = None,
    allocate: bool = False,
    role_scale: Mapping[str, float] | None = None,
    **distill_changes: Any,
) -> Recipe:
    """The tuned recipe at ``bits`` (2, 3 or 4) total bits per weight, overhead included.

    ``method``: "vptq" (default), or a baseline ("vq", "gptq", "rtn") with its preset and no fine-tuning.
    ``finetune``: default, the one measured best at the budget (:data:`BEST_FINETUNE`); "none" gives the
    quantizer's preset alone. ``allocate``: a config per linear within the preset's bits (:mod:`.allocation`);
    ``role_scale``: with it, a factor per role on the predicted costs (:func:`.allocation.role_scale_from_check`).
    ``distill_changes``: DistillConfig fields to change in the budget's distillation.
    """
    from vptq_lab.core.config import PRESETS, preset
    from vptq_lab.core.methods import METHODS, method_preset
    from vptq_lab.model.distill import DistillConfig

    if bits not in PRESETS:
        raise VPTQLabError(f"no recipe for bits={bits!r}: the tuned budgets are {sorted(PRESETS)}")
    if method not in METHODS:
        raise VPTQLabError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if method != "vptq":
        if finetune not in (None, "none") or distill_changes or allocate or role_scale is not None:
            raise VPTQLabError(f"the {method!r} baseline is measured uniform, without fine-tuning: drop finetune=")
        return Recipe(method_preset(method, bits), method, "none", None, bits)
    finetune = BEST_FINETUNE[bits] if finetune is None else finetune
    quantize = preset(bits)
    if "layer" in finetune:
        quantize = quantize.replace(finetune_batch=1)  # one sequence per Adam step: the measured layer-wise recipe
    distill = DistillConfig(**{**DISTILL_RECIPES[bits], **distill_changes}) if "e2e" in finetune else None
    if distill_changes and distill is None:
        raise VPTQLabError(f"distillation settings {sorted(distill_changes)} given, but finetune={finetune!r}")
    scale = None if role_scale is None else tuple(sorted((str(k), float(v)) for k, v in role_scale.items()))
    return Recipe(quantize, "vptq", finetune, distill, bits, allocate, scale)


@dataclass
class RecipeRun:
    """The result of :func:`run_recipe`: the quantized (and fine-tuned) model, its tokenizer and its reports."""

    model: Any
    tokenizer: Any
    recipe: Recipe
    quantization: Any  # QuantizationReport
    distill: Any = None  # DistillReport, when the recipe distils
    extra: dict[str, Any] = field(default_factory=dict)
    calibration_text: str = "WikiText-2 validation"  # the text the calibration windows came from

    def report(self) -> dict[str, Any]:
        """What ``report.json`` holds: the quantization report, the recipe, and the distillation report."""
        out = {**self.quantization.to_dict(), "recipe": self.recipe.to_dict(), **self.extra}
        if self.distill is not None:
            out["distill"] = self.distill.to_dict()
        return out

    def save(self, folder: str | Path, **kwargs: Any) -> Path:
        """:func:`vptq_lab.save_quantized` of the model with this run's report."""
        from vptq_lab.io.checkpoint import save_quantized

        return save_quantized(self.model, self.tokenizer, folder, self.report(), **kwargs)


def run_recipe(
    the_recipe: Recipe,
    model: str = "default",
    *,
    data_dir: str | None = None,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    device: str = "cpu",
) -> RecipeRun:
    """Load ``model`` ("default", a folder or a hub id), quantize it by ``the_recipe`` on WikiText-2 validation
    windows (``nsamples`` x ``seqlen`` of its config), then distil it from the unquantized model when the recipe says
    so (:func:`distill_from`). ``checkpoint_dir``: blocks (and distillation steps, in its ``distill/`` folder) are
    committed there, and ``resume=True`` continues a killed run. Under ``torchrun`` every rank runs it."""
    from vptq_lab.io.data import calibration_windows, load_wikitext2
    from vptq_lab.io.models import load_model
    from vptq_lab.model.calibrate import quantize_

    if resume and checkpoint_dir is not None and not Path(checkpoint_dir).is_dir():
        raise VPTQLabError(
            f"--resume: {checkpoint_dir} does not exist, so there is no run to continue: check the path, or drop "
            "--resume to start a new run there"
        )
    student, tokenizer = load_model(model)
    config = the_recipe.quantizer_config()
    extra = {}
    if the_recipe.allocate:
        config, extra["allocation"] = _allocated(the_recipe, config, model, data_dir, progress)
    nsamples, seqlen, seed = _calibration_of(the_recipe)
    text = load_wikitext2("validation", data_dir)
    calibration = calibration_windows(tokenizer, text, nsamples, seqlen, seed)
    report = quantize_(
        student,
        config,
        calibration,
        method=the_recipe.method,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        device=device,
    )
    distilled = None
    if the_recipe.distill is not None:
        sub = None if checkpoint_dir is None else Path(checkpoint_dir) / "distill"
        distilled = distill_from(
            student,
            tokenizer,
            model,
            the_recipe.distill,
            data_dir=data_dir,
            progress=progress,
            checkpoint_dir=sub,
            resume=resume and sub is not None and sub.exists(),
            device=device,
        )
    label = "WikiText-2 validation" if text.comparable else text.name
    return RecipeRun(student, tokenizer, the_recipe, report, distilled, extra, label)


def _allocated(the_recipe: Recipe, config: Any, model: str, data_dir: str | None, progress: bool):
    """The MixedConfig of least predicted cost within the bits of ``config`` on ``model``, with ``config``'s run-wide
    settings, and a summary of the allocation."""
    from vptq_lab.core.config import MODEL_FIELDS
    from vptq_lab.lab.allocation import allocate_mixed, model_sensitivity, uniform_bits

    table = model_sensitivity(model, data_dir=data_dir, progress=progress)
    budget = uniform_bits(table, config)
    scale = None if the_recipe.role_scale is None else dict(the_recipe.role_scale)
    found = allocate_mixed(table, budget, role_scale=scale)
    mixed = found.config.replace(**{f: getattr(config, f) for f in (*MODEL_FIELDS, "seed")})
    summary = {"budget": round(budget, 4), "bits_per_weight": round(found.bits, 4), "predicted_kl": found.cost}
    if scale is not None:
        summary["role_scale"] = scale
    return mixed, {**summary, "rungs": found.counts(), "per_linear": found.rungs}


def _calibration_of(the_recipe: Recipe) -> tuple[int, int, int]:
    """(nsamples, seqlen, seed) of the calibration windows: the VPTQ config's, else the 2-bit preset's."""
    from vptq_lab.core.config import preset

    source = the_recipe.quantize if hasattr(the_recipe.quantize, "nsamples") else preset(2)
    return source.nsamples, source.seqlen, getattr(the_recipe.quantize, "seed", source.seed)


def distill_from(
    student: Any,
    tokenizer: Any,
    teacher: str | Any,
    config: Any,
    *,
    data_dir: str | None = None,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    device: str = "cpu",
) -> Any:
    """End-to-end distillation of ``student`` (quantized, in place) from ``teacher`` (a model, or its name for
    :func:`load_model`) on WikiText-2 validation windows (:data:`DISTILL_WINDOWS`), selected on the held-out ones.
    The teacher must be the model the student came from (same vocabulary, width and depth). Returns the
    :class:`DistillReport`."""
    from vptq_lab.io.data import load_wikitext2, split_heldout, tokenize
    from vptq_lab.io.models import load_model
    from vptq_lab.model.distill import distill_

    teacher_model = load_model(teacher)[0] if isinstance(teacher, str) else teacher
    for key in ("vocab_size", "hidden_size", "num_hidden_layers"):
        mine, theirs = getattr(student.config, key, None), getattr(teacher_model.config, key, None)
        if mine != theirs:
            raise VPTQLabError(
                f"the teacher {teacher if isinstance(teacher, str) else ''} is not the model the student came from "
                f"({key} {theirs} != {mine}): pass the unquantized model as the teacher (--teacher)"
            )
    ids = tokenize(tokenizer, load_wikitext2("validation", data_dir))
    train, held = split_heldout(ids, **DISTILL_WINDOWS)
    return distill_(
        student,
        teacher_model,
        train,
        held,
        config,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        device=device,
    )


def recipe_for_bits(bits_per_weight: float) -> int | None:
    """The smallest tuned budget that holds ``bits_per_weight`` (a saved model's, all overhead), or None."""
    return next((b for b in sorted(DISTILL_RECIPES) if bits_per_weight <= b + 1e-9), None)
