"""The ``vptq-lab`` command line. Errors print as one line (``vptq-lab: error: ...``), exit status 2."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from vptq_lab.errors import VPTQLabError
from vptq_lab.io.data import GET_WIKITEXT2
from vptq_lab.io.models import DEFAULT_NAMES

__all__ = ["main", "build_parser"]

log = logging.getLogger(__name__)

DATA_DIR_HELP = (
    "folder with WikiText-2's wiki.*.raw (default: $VPTQ_LAB_DATA; with neither, the hub, else a "
    "labelled stand-in corpus)"
)


FINETUNE_CHOICES = ("none", "layer", "e2e", "layer+e2e")
ROLE_SCALE_HELP = (
    'a JSON file, role -> factor on that role\'s predicted cost (e.g. {"v": 0.25}), as benchmarks/sensitivity.py '
    "writes from a measured check (benchmarks/results/role_scale.json for the default model)"
)


def _add_distill_args(p: argparse.ArgumentParser) -> None:
    # Every default below is the recipe's (recipe(bits).distill on a preset, else DistillConfig's own).
    p.add_argument(
        "--distill-steps", type=_positive_int, default=None, help="Adam steps at most (default: the recipe's)"
    )
    p.add_argument("--distill-lr", type=float, default=None, help="learning rate (default: the recipe's)")
    p.add_argument(
        "--distill-patience",
        type=_positive_int,
        default=None,
        help="held-out evaluations (every 20 steps) without a better state before stopping early (default: the "
        "recipe's; steps / 20 never stops early)",
    )
    p.add_argument(
        "--distill-schedule",
        choices=["constant", "cosine"],
        default=None,
        help="learning rate over the steps: constant or cosine (down to 0 at the last step)",
    )
    p.add_argument(
        "--distill-select",
        choices=["ppl", "kl"],
        default=None,
        help="keep the state with the lowest held-out perplexity (ppl) or KL to the teacher (kl)",
    )
    p.add_argument(
        "--distill-train-head",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train the output head too (and the input embeddings where they are tied to it): the same file and "
        "bits, more weights to train and more memory (Adam's state for them)",
    )
    p.add_argument(
        "--distill-hidden-weight",
        type=float,
        default=None,
        help="add this times the blocks' hidden-state error to the teacher's (relative squared error, the mean over "
        "the blocks) to the KL loss (default 0: KL alone)",
    )
    p.add_argument(
        "--distill-code-every",
        type=_positive_int,
        default=None,
        help="code updates (PV-tuning): every N steps the indices move towards the weights plus straight-through "
        "displacements (same file and bits; while training, the fp32 displacements, their gradients and Adam "
        "state take 16 bytes per weight: about 1.7 GB more on the default model). Default: off",
    )
    p.add_argument(
        "--distill-code-lr", type=float, default=None, help="learning rate of the straight-through displacements (5e-4)"
    )
    p.add_argument(
        "--distill-code-fraction",
        type=float,
        default=None,
        help="at most this fraction of a layer's vectors changes code at one update (default 0.01)",
    )


def _add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="cpu",
        help="where the work runs: cpu or cuda (the model stays in CPU memory; each block moves there while it "
        "is quantized). Under torchrun each rank takes GPU LOCAL_RANK",
    )
    p.add_argument(
        "--timeout",
        type=_positive_int,
        default=600,
        help="under torchrun: seconds a rank waits for the others before failing (default 600)",
    )


def _add_resume_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--resume",
        nargs="?",
        const="strict",
        choices=("strict", "if-present"),
        default=None,
        help=f"{what}; the folder must exist. --resume if-present starts a new run when it does not (for "
        "torchrun --max-restarts, whose first attempt has nothing to resume)",
    )


def _resume(args: argparse.Namespace) -> bool:
    """Whether to continue the run in --checkpoint-dir, refusing before any work a strict --resume of a folder that
    does not exist (a mistyped path would otherwise start a whole new run)."""
    if args.resume is None:
        return False
    if args.checkpoint_dir is None:
        raise VPTQLabError("--resume needs --checkpoint-dir (the folder the interrupted run wrote)")
    exists = Path(args.checkpoint_dir).is_dir()
    if args.resume == "strict" and not exists:
        raise VPTQLabError(
            f"--resume: --checkpoint-dir {args.checkpoint_dir} does not exist, so there is no run to continue: "
            "check the path, drop --resume to start a new run there, or pass --resume if-present"
        )
    return exists


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seqlen", type=_positive_int, default=2048, help="tokens per window (default 2048)")
    p.add_argument("--max-windows", type=_positive_int, default=None, help="evaluate only the first N windows")
    p.add_argument("--split", default="test", help="test, validation or train (default test)")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vptq-lab", description="VPTQ workbench: quantize, evaluate, inspect.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="WikiText-2 perplexity of a model (the paper's protocol)")
    p.add_argument("--model", default="default", help="'default', a local folder (VPTQ checkpoints too) or a hub id")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_eval_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("quantize", help="quantize a model with VPTQ and save it in the official layout")
    p.add_argument("--model", default="default", help="'default', a local folder or a hub id")
    p.add_argument("--bits", type=int, choices=(2, 3, 4), default=2, help="preset (default 2)")
    p.add_argument("--config", default=None, help="a VPTQConfig JSON file (overrides --bits)")
    p.add_argument("--out", required=True, help="output folder (must not exist)")
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP + "; calibration uses the validation split")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--checkpoint-dir",
        default=None,
        help="commit every finished block here, so a killed run can be resumed (outside --out)",
    )
    _add_resume_arg(p, "continue the run saved in --checkpoint-dir (same model, config and data)")
    p.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep --checkpoint-dir after success (by default its files are deleted once --out is saved)",
    )
    p.add_argument(
        "--finetune",
        choices=FINETUNE_CHOICES,
        default="none",
        help="layer: layer-wise fine-tuning after each block; e2e: end-to-end distillation from the unquantized "
        "model afterwards, by the recipe tuned for the --bits budget (vptq_lab.recipe(bits).distill; with "
        "--config, DistillConfig's defaults), which --distill-* flags change; "
        "layer+e2e: both (default none)",
    )
    p.add_argument(
        "--allocate",
        action="store_true",
        help="mixed allocation: each linear gets the config of least predicted cost from a ladder (1.4 to 4.5 bits) "
        "within the --bits preset's bits per weight; the sensitivity it needs is measured once per model (about "
        "ten minutes on two cores) and cached",
    )
    p.add_argument("--role-scale", default=None, help=ROLE_SCALE_HELP + " (needs --allocate)")
    _add_distill_args(p)
    _add_device_args(p)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("allocate", help="a config per linear within an average bit budget, by measured sensitivity")
    p.add_argument("--model", default="default", help="'default', a local folder or a hub id")
    p.add_argument("--budget", type=float, required=True, help="average bits per weight, all overhead (e.g. 1.985)")
    p.add_argument("--out", required=True, help="the MixedConfig JSON file to write (for quantize --config)")
    p.add_argument("--role-scale", default=None, help=ROLE_SCALE_HELP)
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP + "; calibration uses the validation split")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_allocate)

    p = sub.add_parser("finetune", help="end-to-end distillation of a saved quantized model (indices unchanged)")
    p.add_argument("--model", required=True, help="a quantized checkpoint folder (vptq-lab quantize --out)")
    p.add_argument("--teacher", default="default", help="the unquantized model it came from (default: 'default')")
    p.add_argument("--out", required=True, help="output folder (must not exist)")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP + "; training and selection use the validation split")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--checkpoint-dir", default=None, help="commit progress here so a killed run can be resumed")
    _add_resume_arg(p, "continue the run saved in --checkpoint-dir")
    p.add_argument(
        "--recipe",
        choices=("auto", "2", "3", "4", "none"),
        default="auto",
        help="2, 3 or 4: start from the distillation tuned for that budget, as `quantize --bits N --finetune e2e` "
        "does; none: DistillConfig's defaults (80 constant steps at lr 2e-4); auto (default): the smallest budget "
        "that holds the checkpoint's bits per weight (its report.json), else none",
    )
    _add_distill_args(p)
    _add_device_args(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("bits", help="exact bits per weight of a config, overhead included")
    p.add_argument("--bits", type=int, choices=(2, 3, 4), default=2, help="preset (default 2)")
    p.add_argument("--config", default=None, help="a VPTQConfig JSON file (overrides --bits)")
    p.add_argument("--model", default="default", help="'default', 'llama2-7b', 'llama2-13b' or a model folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_bits)

    p = sub.add_parser("compare", help="RTN, GPTQ, plain VQ and VPTQ at equal budgets, on the same windows")
    p.add_argument("--model", default="default", help="'default', a local folder or a hub id")
    p.add_argument("--bits", default="2,3,4", help="comma-separated budgets (presets), e.g. 2,3,4")
    p.add_argument("--methods", default="rtn,gptq,vq,vptq", help="comma-separated: rtn, gptq, vq, vptq")
    p.add_argument("--out", required=True, help="CSV file for the table")
    p.add_argument("--windows", type=_positive_int, default=32, help="WikiText-2 test windows (default 32)")
    p.add_argument("--seqlen", type=_positive_int, default=2048, help="tokens per window (default 2048)")
    p.add_argument("--cache", default=None, help="JSON-lines cache of finished rows (default: OUT.cache.jsonl)")
    p.add_argument("--no-fp", action="store_true", help="skip the unquantized row")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", help="the main job: quantize the default model at 2 bits, perplexity before/after")
    p.add_argument("--bits", type=int, choices=(2, 3, 4), default=2, help="preset (default 2)")
    p.add_argument("--max-windows", type=_positive_int, default=8, help="WikiText-2 test windows (default 8)")
    p.add_argument(
        "--out",
        default="artifacts/demo-2bit",
        help="where the quantized model is saved: a new folder, or one an earlier demo wrote (replaced)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_demo)
    return parser


def _print_record(record: dict, as_json: bool, show: bool = True) -> None:
    if not show:  # the other ranks of a torchrun job: rank 0 speaks for the job
        return
    if as_json:
        print(json.dumps(record))
        return
    width = max(map(len, record))
    for key, value in record.items():
        print(f"{key:<{width}}  {value}")


def _eval_record(model_name: str, args: argparse.Namespace) -> dict:
    from vptq_lab.io.models import BASELINE_NOTE, load_model
    from vptq_lab.lab.eval import perplexity

    model, tokenizer = load_model(model_name)
    record = perplexity(
        model,
        tokenizer,
        split=args.split,
        seqlen=args.seqlen,
        max_windows=args.max_windows,
        data_dir=args.data_dir,
        progress=not args.no_progress,
    ).to_dict()
    record = {"model": model_name, **record}
    if model_name in DEFAULT_NAMES:
        record["note"] = BASELINE_NOTE
    if not record["comparable"]:
        record["warning"] = "stand-in corpus: NOT comparable to published WikiText-2 numbers"
    return record


def cmd_eval(args: argparse.Namespace) -> int:
    _print_record(_eval_record(args.model, args), args.json)
    return 0


def _load_config(args: argparse.Namespace):
    """--config's VPTQConfig (one config for every linear) or MixedConfig (``{"default": ..., "layers": ...}``,
    one per linear, as ``vptq-lab allocate`` writes), else the --bits preset; --seed changes it."""
    from vptq_lab.core.config import MixedConfig, VPTQConfig, preset

    if args.config is None:
        config = preset(args.bits)
    else:
        path = Path(args.config)
        if not path.is_file():
            raise VPTQLabError(f"config file {path} does not exist: pass a VPTQConfig JSON file")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise VPTQLabError(
                f"{path} is not valid JSON ({exc}): write one object like "
                '{"vector_lens": [-1, 6], "num_centroids": [-1, 1024]}'
            ) from exc
        kind = MixedConfig if isinstance(data, dict) and "default" in data else VPTQConfig
        try:
            config = kind.from_dict(data)
        except (ValueError, TypeError) as exc:
            raise VPTQLabError(f"{path}: {exc}") from exc
    if getattr(args, "seed", None) is not None:
        config = _with_seed(config, args.seed)
    return config


def _with_seed(config, seed: int):
    from vptq_lab.core.config import MixedConfig

    if isinstance(config, MixedConfig):
        return MixedConfig(
            config.default.replace(seed=seed), {n: c.replace(seed=seed) for n, c in config.layers.items()}
        )
    return config.replace(seed=seed)


def _check_out(out: str, checkpoint_dir: str | None, resume: bool, replace_demo: bool = False) -> None:
    """Refuse before any work: an existing --out is never touched (``replace_demo``: unless an earlier demo wrote
    it), it must be creatable, and the checkpoint dir must sit outside it."""
    if Path(out).exists() and not (replace_demo and _written_by_demo(Path(out))):
        why = " and was not written by `vptq-lab demo`" if replace_demo else ""
        raise VPTQLabError(f"{out} already exists{why}: choose another --out folder (nothing was overwritten)")
    _check_writable_parent(Path(out))
    if checkpoint_dir is not None:
        out_path, ckpt = Path(out).resolve(), Path(checkpoint_dir).resolve()
        if ckpt == out_path or out_path in ckpt.parents:
            raise VPTQLabError(
                f"--checkpoint-dir {checkpoint_dir} is inside --out {out}: put it elsewhere, "
                "since --out is written only once the model is complete"
            )


def _check_writable_parent(out: Path) -> None:
    """--out's nearest existing ancestor must be a folder we can write into, or the save would fail after minutes
    of work. Checked by creating (and removing) an empty folder there: permission bits alone mislead root."""
    import tempfile

    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise VPTQLabError(f"cannot create --out {out}: {parent} is a file, not a folder; choose another --out")
    try:
        Path(tempfile.mkdtemp(prefix=".vptq-lab-probe-", dir=parent)).rmdir()
    except OSError as exc:
        raise VPTQLabError(
            f"cannot create --out {out}: {parent} is not writable ({exc.strerror}); choose another --out"
        ) from None


DEMO_MARK = "vptq-lab-demo.json"  # written into the demo's folder: only such a folder is ever replaced


def _written_by_demo(folder: Path) -> bool:
    return folder.is_dir() and (folder / DEMO_MARK).is_file()


def _quantize(
    model_name: str,
    the_recipe,
    out: str,
    data_dir: str | None,
    progress: bool,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    keep_checkpoints: bool = False,
    device: str = "cpu",
) -> dict:
    """Run ``the_recipe`` on ``model_name`` (:func:`vptq_lab.run_recipe`: quantize, fine-tune) and save it. Under
    torchrun every rank works and rank 0 alone saves."""
    from vptq_lab.lab.recipes import run_recipe

    _check_out(out, checkpoint_dir, resume)
    run = run_recipe(
        the_recipe,
        model_name,
        data_dir=data_dir,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        device=device,
    )
    world = _world()
    extra = {"distill": run.distill.to_dict()} if run.distill is not None else {}
    if world.distributed:
        extra["ranks"] = world.size
    if world.main:
        run.save(out)
    cleanup = {}
    if checkpoint_dir is not None and world.main:  # the model is saved whole: the checkpoints have done their job
        from vptq_lab.model.distill import remove_distill_checkpoint
        from vptq_lab.model.resume import remove_checkpoints

        cleanup = {"checkpoint_dir": checkpoint_dir, "checkpoint_dir_kept": keep_checkpoints}
        if not keep_checkpoints:
            freed = remove_distill_checkpoint(Path(checkpoint_dir) / "distill") + remove_checkpoints(checkpoint_dir)
            cleanup["checkpoint_mb_freed"] = round(freed / 2**20, 1)
    report, config = run.quantization, the_recipe.quantize
    return {
        "model": model_name,
        "out": out,
        "finetune": the_recipe.finetune,
        "bits_per_weight": round(report.total_bits_per_weight(), 4),
        "stored_bits_per_weight": round(report.total_bits_per_weight(stored=True), 4),
        "mean_proxy_loss_rel": round(float(report.to_dataframe().proxy_loss_rel.mean()), 5),
        "layers": len(report.records),
        "propagation": report.propagation,
        "calibration": f"{config.nsamples} x {config.seqlen} tokens of {run.calibration_text}",
        "seconds": report.seconds,
        # resumed: the earlier runs' time up to their last committed block (None: an older checkpoint folder)
        **({"seconds_before_resume": report.seconds_before_resume} if report.seconds_before_resume != 0.0 else {}),
        **extra,
        **cleanup,
    }


def _world():
    from vptq_lab.model.distributed import current_world

    return current_world()


def _start_ranks(args: argparse.Namespace) -> None:
    """Under torchrun: join the process group (gloo on CPU, NCCL on CUDA). Alone: only check --device."""
    from vptq_lab.model.distributed import init_distributed

    init_distributed(args.device, args.timeout)


DISTILL_FLAGS = (
    "steps",
    "lr",
    "patience",
    "schedule",
    "select",
    "train_head",
    "hidden_weight",
    "code_every",
    "code_lr",
    "code_fraction",
)  # the DistillConfig fields a --distill-* flag sets


def _distill_changes(args: argparse.Namespace) -> dict:
    """The DistillConfig fields the --distill-* flags given set."""
    changes = {}
    for name in DISTILL_FLAGS:
        value = getattr(args, f"distill_{name}")
        if value is None:
            continue
        if name in ("code_lr", "code_fraction") and args.distill_code_every is None:
            raise VPTQLabError(f"--distill-{name.replace('_', '-')} needs --distill-code-every N (code updates)")
        changes[name] = value
    return changes


def _distill_config(base: dict, args: argparse.Namespace):
    """DistillConfig of ``base`` fields changed by the --distill-* flags, checked by DistillConfig itself before any
    long work starts (the error names the flag)."""
    from vptq_lab.model.distill import DistillConfig

    try:
        return DistillConfig(**{**base, **_distill_changes(args)})
    except ValueError as exc:  # DistillConfig names the field first: "lr=-1.0 must be ..."
        name = str(exc).partition("=")[0]
        flag = f"--distill-{name.replace('_', '-')}" if name in DISTILL_FLAGS else "the distillation recipe"
        raise VPTQLabError(f"{flag}: {exc}") from exc


def _cli_recipe(args: argparse.Namespace):
    """The recipe `vptq-lab quantize` runs: on a preset (--bits), the budget's tuned recipe with --finetune's mode
    (its distillation changed by --distill-* flags); with --config, that config, layer-wise fine-tuning as the file
    says it, and DistillConfig's defaults changed by the flags."""
    from vptq_lab.lab.allocation import read_role_scale
    from vptq_lab.lab.recipes import DISTILL_RECIPES, Recipe, recipe

    config = _load_config(args)
    e2e = "e2e" in args.finetune
    if not e2e and _distill_changes(args):
        raise VPTQLabError("--distill-* flags set end-to-end distillation: they need --finetune e2e or layer+e2e")
    if args.config is not None:
        if args.allocate:
            raise VPTQLabError("--allocate chooses a config per linear itself: give --bits, not --config")
        if args.role_scale is not None:
            raise VPTQLabError("--role-scale weighs --allocate's choice: give --bits and --allocate, not --config")
        distill = _distill_config({}, args) if e2e else None
        return Recipe(config, "vptq", args.finetune, distill)
    distill = _distill_config(DISTILL_RECIPES[args.bits], args) if e2e else None
    if args.role_scale is not None and not args.allocate:
        raise VPTQLabError("--role-scale corrects the costs --allocate weighs: add --allocate, or drop --role-scale")
    scale = None if args.role_scale is None else read_role_scale(args.role_scale)
    tuned = recipe(args.bits, finetune=args.finetune, allocate=args.allocate, role_scale=scale)
    quantize = tuned.quantize if args.seed is None else tuned.quantize.replace(seed=args.seed)
    return dataclasses.replace(tuned, quantize=quantize, distill=distill)  # the CLI's seed and distillation flags


def cmd_allocate(args: argparse.Namespace) -> int:
    from vptq_lab.core.config import preset
    from vptq_lab.lab.allocation import allocate_mixed, model_sensitivity, read_role_scale

    out = Path(args.out)
    if out.exists():
        raise VPTQLabError(f"{out} already exists: choose another --out file (nothing was overwritten)")
    _check_writable_parent(out)
    if not 0 < args.budget <= 16:
        raise VPTQLabError(f"--budget {args.budget} must be an average number of bits per weight in (0, 16]")
    scale = None if args.role_scale is None else read_role_scale(args.role_scale)  # checked before the long work
    table = model_sensitivity(args.model, data_dir=args.data_dir, progress=not args.no_progress)
    found = allocate_mixed(table, args.budget, role_scale=scale)
    runwide = preset(2)  # the presets' calibration and run-wide settings
    config = found.config.replace(nsamples=runwide.nsamples, seqlen=runwide.seqlen)
    out.write_text(json.dumps(config.to_dict(), indent=1) + "\n")
    summary = {
        "model": args.model,
        "out": str(out),
        "budget": args.budget,
        "bits_per_weight": round(found.bits, 4),
        "predicted_kl": round(found.cost, 6),
        "rungs": found.counts(),
        **({"role_scale": scale} if scale is not None else {}),
    }
    _print_record(summary, args.json)
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    args.resume = _resume(args)
    _check_out(args.out, args.checkpoint_dir, args.resume)
    _start_ranks(args)
    the_recipe = _cli_recipe(args)
    summary = _quantize(
        args.model,
        the_recipe,
        args.out,
        args.data_dir,
        not args.no_progress,
        args.checkpoint_dir,
        args.resume,
        args.keep_checkpoints,
        args.device,
    )
    _print_record(summary, args.json, _world().main)
    return 0


def _budget_of(report: dict) -> int | None:
    """The smallest tuned budget that holds a saved report's bits per weight (its layers' size-weighted mean, all
    overhead); None (DistillConfig's defaults) where the report has no layers or no budget holds them."""
    from vptq_lab.core.bits import size_weighted_mean
    from vptq_lab.lab.recipes import recipe_for_bits

    shaped = [
        (layer["bits_per_weight"], (layer["out_features"], layer["in_features"]))
        for layer in report.get("layers") or []
    ]
    if not any(out * inp for _, (out, inp) in shaped):
        log.info("no layer records in report.json: distilling with DistillConfig's defaults (pass --recipe N)")
        return None
    bits = size_weighted_mean(shaped)
    budget = recipe_for_bits(bits)
    log.info("%.4f bits per weight: distilling with the %s recipe", bits, f"{budget}-bit" if budget else "default")
    return budget


def cmd_finetune(args: argparse.Namespace) -> int:
    from vptq_lab.io.checkpoint import load_quantized, save_quantized
    from vptq_lab.lab.recipes import DISTILL_RECIPES, distill_from

    args.resume = _resume(args)
    _check_out(args.out, args.checkpoint_dir, args.resume)
    _start_ranks(args)
    folder = Path(args.model)
    if not (folder / "config.json").is_file():
        raise VPTQLabError(
            f"--model {folder} is not a quantized checkpoint folder: pass what `vptq-lab quantize --out` wrote"
        )
    report = json.loads((folder / "report.json").read_text()) if (folder / "report.json").is_file() else {}
    budget = {"auto": _budget_of(report), "none": None}.get(args.recipe, None)
    budget = int(args.recipe) if args.recipe not in ("auto", "none") else budget
    config = _distill_config(DISTILL_RECIPES[budget] if budget else {}, args)  # before the model loads
    student, tokenizer = load_quantized(folder)
    if tokenizer is None:
        raise VPTQLabError(f"{folder} has no tokenizer: re-save it with its tokenizer")
    distilled = distill_from(
        student,
        tokenizer,
        args.teacher,
        config,
        data_dir=args.data_dir,
        progress=not args.no_progress,
        checkpoint_dir=args.checkpoint_dir,
        resume=args.resume,
        device=args.device,
    )
    result = distilled.to_dict()
    report["distill"] = result
    if not _world().main:
        return 0
    save_quantized(student, tokenizer, args.out, report)
    if args.checkpoint_dir is not None:
        from vptq_lab.model.distill import remove_distill_checkpoint

        remove_distill_checkpoint(args.checkpoint_dir)
    summary = {
        "model": args.model,
        "teacher": args.teacher,
        "out": args.out,
        "recipe": f"{budget}-bit" if budget else "DistillConfig defaults",
        **{k: result[k] for k in ("initial", "best", "final", "steps_run", "stopped_early", "seconds")},
    }
    _print_record(summary, args.json)
    return 0


def _named_shapes(name: str) -> dict[str, tuple[int, int]]:
    """Linear shapes of a named reference model, or of a model folder (loaded)."""
    from vptq_lab.lab.budget import LLAMA2_7B_BLOCK, LLAMA2_13B_BLOCK, SMOLLM2_135M_SHAPES, repeat_blocks, shapes_of

    named = {
        "llama2-7b": lambda: repeat_blocks(LLAMA2_7B_BLOCK, 32),
        "llama2-13b": lambda: repeat_blocks(LLAMA2_13B_BLOCK, 40),
        **{alias: lambda: SMOLLM2_135M_SHAPES for alias in DEFAULT_NAMES},
    }
    if name in named:
        return named[name]()
    from vptq_lab.io.models import load_model

    return shapes_of(load_model(name)[0])


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise VPTQLabError(f"--{what} must be comma-separated whole numbers like 2,3,4, got {text!r}") from None
    if not values:
        raise VPTQLabError(f"--{what} is empty: give e.g. 2,3,4")
    return values


def cmd_compare(args: argparse.Namespace) -> int:
    from vptq_lab.lab.compare import CompareSettings, compare

    budgets = _int_list(args.bits, "bits")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    out = Path(args.out)
    if out.suffix != ".csv":
        raise VPTQLabError(f"--out {out} should be a .csv file")
    settings = CompareSettings(windows=args.windows, seqlen=args.seqlen, data_dir=args.data_dir)
    table = compare(
        args.model,
        methods,
        budgets,
        settings=settings,
        include_fp=not args.no_fp,
        cache=args.cache or out.with_suffix(".cache.jsonl"),
        progress=not args.no_progress,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    print(
        table[["method", "target_bits", "bits", "perplexity", "proxy_loss_rel_mean", "quant_seconds"]].to_string(
            index=False
        )
    )
    return 0


def cmd_bits(args: argparse.Namespace) -> int:
    import pandas as pd

    from vptq_lab.core.bits import bits_per_weight, size_weighted_mean
    from vptq_lab.core.config import config_for

    config = _load_config(args)
    shapes = _named_shapes(args.model)
    rows = [
        {"layer": name, "out": s[0], "in": s[1], **bits_per_weight(config_for(config, name), s, mode="paper").to_dict()}
        for name, s in shapes.items()
    ]
    table = pd.DataFrame(rows)
    total = {
        "layer": "TOTAL",
        "bits_per_weight": size_weighted_mean((r["bits_per_weight"], (r["out"], r["in"])) for r in rows),
    }
    if args.json:
        print(json.dumps({"config": config.to_dict(), "layers": rows, "total": total}))
    else:
        print(table.to_string(index=False))
        print(f"\nTOTAL bits per weight (overhead included): {total['bits_per_weight']:.4f}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vptq_lab.lab.recipes import recipe

    out = Path(args.out)
    _check_out(args.out, None, False, replace_demo=True)  # before any work: a user's folder is never touched
    eval_args = argparse.Namespace(
        split="test", seqlen=2048, max_windows=args.max_windows, data_dir=None, no_progress=False
    )
    staging = out.with_name(f".{out.name}.new")  # the new model lands here, then replaces an earlier demo's folder
    if _written_by_demo(staging):
        _remove_demo_folder(staging)
    summary = _quantize("default", recipe(args.bits, finetune="none"), str(staging), None, True)
    (staging / DEMO_MARK).write_text(json.dumps({"written_by": "vptq-lab demo", "bits": args.bits}))
    if _written_by_demo(out):
        _remove_demo_folder(out)
    staging.rename(out)
    summary["out"] = args.out
    # the baseline after the quantization, so that the long step starts within a minute of the model loading
    before = _eval_record("default", eval_args)
    after = _eval_record(args.out, eval_args)
    rows = {
        "full precision (Q4_1 GGUF baseline)": (16.0, before),
        f"VPTQ {args.bits}-bit preset": (summary["bits_per_weight"], after),
    }
    if args.json:
        print(json.dumps({"before": before, "after": after, "quantize": summary}))
        return 0
    text = "WikiText-2" if before["comparable"] else before["dataset"]
    print(f"\n{text} test split, seqlen 2048, first {before['windows']} windows")
    print(f"{'model':<40}{'bits/weight':>12}{'perplexity':>12}")
    for name, (bits, rec) in rows.items():
        print(f"{name:<40}{bits:>12.3f}{rec['perplexity']:>12.3f}")
    print(f"quantized in {summary['seconds']:.0f} s; saved to {args.out}")
    print(f"note: {before['note']}")
    if "warning" in before:  # the stand-in corpus: say so beside the numbers, not only in the log above them
        print(f"warning: {before['warning']}; {GET_WIKITEXT2}")
    return 0


def _remove_demo_folder(folder: Path) -> None:
    """Delete a folder that ``vptq-lab demo`` wrote, checked again just before (never a user's folder)."""
    import shutil

    if not _written_by_demo(folder):
        raise VPTQLabError(f"{folder} was not written by `vptq-lab demo`: refusing to delete it")
    shutil.rmtree(folder)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except VPTQLabError as exc:
        print(f"vptq-lab: error:{_rank_tag()} {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not _in_job():
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        if _lost_contact(exc):  # a peer died or hung: say so in one line; torchrun then stops the job
            print(
                f"vptq-lab: error:{_rank_tag()} lost contact with the other ranks ({type(exc).__name__}: {first}): "
                f"another rank failed, and printed its own error, or did not answer within --timeout "
                f"{getattr(args, 'timeout', '?')} s; this rank stops too",
                file=sys.stderr,
            )
        else:  # this rank's own failure: the traceback, then one line; the other ranks lose contact and stop
            import traceback

            traceback.print_exc()
            print(f"vptq-lab: error:{_rank_tag()} failed with {type(exc).__name__}: {first}", file=sys.stderr)
        return 1
    finally:
        if _in_job():
            from vptq_lab.model.distributed import close_distributed

            close_distributed()


def _in_job() -> bool:
    if "torch" not in sys.modules:  # nothing imported torch: no job to be in
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _lost_contact(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because of another rank (its death, or the timeout)."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):  # torch >= 2.2: DistBackendError, DistNetworkError, ...
        return True
    text = str(exc)
    return any(s in text for s in ("gloo", "NCCL", "Connection closed", "Connection reset", "Timed out"))


def _rank_tag() -> str:
    if not _in_job():
        return ""
    import torch.distributed as dist

    return f" rank {dist.get_rank()} of {dist.get_world_size()}:"


if __name__ == "__main__":
    sys.exit(main())
