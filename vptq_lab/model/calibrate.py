"""Quantize a whole model block by block: `quantize_(model, config, calibration)`.

The loop is generic; the architecture table (:mod:`vptq_lab.model.arch`) says where the
blocks are and which linears share an input. Two propagation modes:

- ``"quantized"`` (GPTQ style): each stage's Hessian is collected with the earlier
  stages of the block already quantized, and the next block sees the quantized
  block's outputs.
- ``"full_precision"`` (official VPTQ style): every Hessian comes from the
  unquantized model's activations.

With ``checkpoint_dir=`` every finished block is committed to disk
(:mod:`vptq_lab.model.resume`); ``resume=True`` continues a killed run from the next
block and ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from vptq_lab.core.bits import bits_per_weight, size_weighted_mean
from vptq_lab.core.config import config_for
from vptq_lab.core.methods import METHODS, dequantized
from vptq_lab.core.quantizer import fit_part_codebook, kmeans_only_loss, part_shapes, prepare_layer, shared_codebooks
from vptq_lab.core.qweight import QuantizedWeight
from vptq_lab.errors import VPTQLabError
from vptq_lab.kernels.dispatch import prefer_backend
from vptq_lab.model.arch import ArchSpec, arch_for, get_blocks, get_module, linear_role, linear_weight, set_module
from vptq_lab.model.distributed import Batches, World, assign, check_device, current_world
from vptq_lab.model.layers import QuantizedLinear, is_quantized
from vptq_lab.model.layerwise import finetune_block
from vptq_lab.model.passes import (
    Captured,
    ReplayQuantized,
    capture_block_inputs,
    hidden_states,
    run_block,
    stage_hessians,
    to_device,
)
from vptq_lab.model.preflight import check_calibration, check_method, preflight
from vptq_lab.model.resume import BlockCheckpoints, run_fingerprint
from vptq_lab.model.threads import one_thread_workers

__all__ = ["LayerRecord", "QuantizationReport", "LayerStore", "quantize_"]

log = logging.getLogger(__name__)


@dataclass
class LayerRecord:
    """One quantized linear: what the widgets, plots and report.json show."""

    name: str
    block: int
    role: str
    out_features: int
    in_features: int
    method: str
    bits_per_weight: float  # paper accounting, all overhead included
    stored_bits_per_weight: float  # the bits the file actually stores (padding, int16 outlier ids)
    proxy_loss_rel: float
    proxy_loss_rel_no_feedback: float | None
    proxy_loss_rel_first_pass: float | None
    codebook_utilisation: float | None
    hessian_tokens: int
    seconds: float
    dead_columns: int = 0  # input columns that were always zero (H_jj = 0): their weights are dropped
    hessian_all_zero: bool = False  # every input was zero: H damped to identity, flagged in the log

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LayerStore:
    """What a notebook needs to re-plot one layer without quantizing again."""

    W: torch.Tensor  # [out, in] fp32, original
    H: torch.Tensor  # [in, in] float64
    qweight: QuantizedWeight


@dataclass
class QuantizationReport:
    config: dict[str, Any]
    method: str
    propagation: str
    records: list[LayerRecord] = field(default_factory=list)
    finetune: list[dict[str, Any]] = field(default_factory=list)  # per block: loss before/after
    seconds: float = 0.0  # this call's wall time
    # resumed from a checkpoint folder: the wall time the earlier runs spent up to their last committed block
    # (None: a folder written before this was recorded); 0.0 for a run from block 0
    seconds_before_resume: float | None = 0.0
    # wall-clock seconds of this call by phase: capture (block 0's inputs), hessian (the passes that collect H),
    # codebooks (each linear's working space and k-means), linears (column loops, residual codebooks, packing),
    # forward (the next block's inputs), finetune (layer-wise), checkpoint (committing blocks)
    timings: dict[str, float] = field(default_factory=dict)
    store: dict[str, LayerStore] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "method": self.method,
            "propagation": self.propagation,
            "seconds": self.seconds,
            "seconds_before_resume": self.seconds_before_resume,
            "timings": self.timings,
            "finetune": self.finetune,
            "layers": [r.to_dict() for r in self.records],
        }

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the wall-clock time of the block to ``timings[phase]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] = round(self.timings.get(phase, 0.0) + time.perf_counter() - start, 3)

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame([r.to_dict() for r in self.records])

    def total_bits_per_weight(self, stored: bool = False) -> float:
        key = "stored_bits_per_weight" if stored else "bits_per_weight"
        return size_weighted_mean((getattr(r, key), (r.out_features, r.in_features)) for r in self.records)


# Quantizing one block -----------------------------------------------------------------------------------


@dataclass
class _BlockContext:
    index: int
    prefix: str
    spec: ArchSpec
    config: Any  # the method's config class (VPTQConfig, RTNConfig, GPTQConfig)
    report: QuantizationReport
    keep: Callable[[str], bool]
    method: str = "vptq"
    codebooks: list[torch.Tensor] | None = None  # the block's shared codebooks (codebook_scope "per-block")
    block_weights: int = 0  # weights of all the block's linears: how a shared codebook's bits are split
    batches: Batches | None = None  # multi-process runs: this rank's calibration batches
    results: dict[str, Any] | None = None  # whole blocks by rank: each installed result (on the CPU), to share
    workers: int = 1  # one process on the CPU: threads that quantize a stage's linears side by side

    @property
    def world(self) -> World:
        return self.batches.world if self.batches is not None else World()

    def config_of(self, name: str) -> Any:
        """The config of this block's linear ``name`` (its own under a MixedConfig)."""
        return config_for(self.config, f"{self.prefix}.{name}")

    @property
    def propagation(self) -> str:
        return getattr(self.config, "propagation", "quantized")


def _checked_weight(module: nn.Module, name: str, H: torch.Tensor, ctx: _BlockContext) -> torch.Tensor:
    """The linear's W [out, in], after the checks that would make its quantization meaningless."""
    full = f"{ctx.prefix}.{name}"
    W = linear_weight(module, ctx.spec.transposed)  # [out, in]
    if not torch.isfinite(W).all():
        raise VPTQLabError(f"{full} has NaN or inf weights: fix or reload the model before quantizing")
    if not torch.isfinite(H).all():
        raise VPTQLabError(
            f"{full}: its inputs on the calibration data contain NaN or inf (the activations "
            "overflowed): load the model in float32, or check the calibration token ids"
        )
    return W


def _run_method(W: torch.Tensor, H: torch.Tensor, name: str, ctx: _BlockContext, **extra: Any) -> tuple[Any, float]:
    """(the method's result for one linear, seconds). ``extra``: more keyword arguments for the method; a block's
    shared codebooks (``ctx.codebooks``) unless they hold others."""
    start = time.perf_counter()
    if ctx.codebooks is not None:
        extra = {"codebooks": ctx.codebooks, **extra}
    try:
        result = METHODS[ctx.method].quantize(W, H.float(), ctx.config_of(name), **extra)
    except VPTQLabError:
        raise
    except ValueError as exc:  # the quantizer's own checks: give them the layer's name
        raise VPTQLabError(f"{ctx.prefix}.{name}: {exc}") from exc
    return result, time.perf_counter() - start


def _install(
    block: nn.Module, name: str, W: torch.Tensor, H: torch.Tensor, tokens: int, result: Any, seconds: float, ctx
) -> None:
    """Swap one linear's result into the block, and record it."""
    full = f"{ctx.prefix}.{name}"
    if result.info.get("hessian_all_zero"):
        log.warning(
            "%s saw only zero inputs on the calibration data (all-zero Hessian, damped to identity; its "
            "dead columns were set to zero): check the calibration data and the layers before it",
            full,
        )
    _swap(block, name, result, ctx.spec, ctx.method)
    ctx.report.records.append(_record(full, ctx, W.shape, result, tokens, seconds))
    if ctx.keep(full):  # on the CPU: the store outlives the block's visit to the device
        ctx.report.store[full] = LayerStore(W.to("cpu", copy=True), H.to("cpu", copy=True), _on(result, "cpu"))
    if ctx.results is not None:
        ctx.results[name] = _on(result, "cpu")


def _swap(block: nn.Module, name: str, result: Any, spec: ArchSpec, method: str) -> None:
    """Put one linear's result in the block: a QuantizedLinear, or (scalar baselines) the dequantized weight
    written into the dense layer."""
    module = get_module(block, name)
    if isinstance(result, QuantizedWeight):
        set_module(block, name, QuantizedLinear(result, getattr(module, "bias", None)))
    else:
        with torch.no_grad():
            dense = dequantized(result).to(module.weight.device)  # [out, in]
            module.weight.copy_(dense.t() if spec.transposed else dense)
        module.vptq_lab_method = method


# Several processes: the linears of a stage go to owner ranks -------------------------------------------------


def _on(result: Any, device: torch.device | str) -> Any:
    """A method's result with its tensors on ``device`` (to share it between ranks, or to install it)."""
    if isinstance(result, QuantizedWeight):
        return result.to(device)
    moved = {
        f.name: getattr(result, f.name).to(device) for f in fields(result) if torch.is_tensor(getattr(result, f.name))
    }
    return replace(result, **moved)


def _linear_cost(name: str, shape: tuple[int, int], ctx: _BlockContext) -> float:
    """Relative cost of one linear's column loop (and, for scalar methods, its whole quantization)."""
    out, n = shape
    config = ctx.config_of(name)
    k = getattr(config, "k1", 16)
    return out * n * (2.0 * k + getattr(config, "blocksize", 128)) * (2 if getattr(config, "k2", 0) else 1)


def _codebook_jobs(weights: dict[str, torch.Tensor], ctx: _BlockContext) -> list[tuple[str, int, float]]:
    """``(linear, part, cost)`` for every k-means part of a stage's per-linear codebooks (cost: vectors x
    centroids). Empty when the method fits none (scalar methods, shared codebooks)."""
    if ctx.method not in ("vptq", "vq") or ctx.codebooks is not None:
        return []
    return [
        (name, i, cols * -(-W.shape[0] // v) * k)
        for name, W in weights.items()
        for i, (cols, v, k) in enumerate(part_shapes(ctx.config_of(name), W.shape[1]))
    ]


def _split_codebooks(weights: dict[str, torch.Tensor], H: torch.Tensor, ctx: _BlockContext) -> dict[str, list]:
    """The per-linear codebooks of a stage, each k-means part fitted by its owner rank and shared: ``{name: [C]}``.
    Empty when the method fits no per-linear codebooks (scalar methods, shared codebooks)."""
    jobs = _codebook_jobs(weights, ctx)
    if not jobs:
        return {}
    owners = assign([cost for _, _, cost in jobs], ctx.world.size)
    fitted, preps = {}, {}
    for job, ((name, i, _), owner) in enumerate(zip(jobs, owners)):
        if owner == ctx.world.rank:
            if name not in preps:
                preps[name] = prepare_layer(weights[name], H.float(), ctx.config_of(name), feedback=False)
            fitted[job] = fit_part_codebook(preps[name], ctx.config_of(name), i).cpu()
    out: dict[str, list] = {name: [] for name in weights}
    for job, ((name, _, _), owner) in enumerate(zip(jobs, owners)):
        out[name].append(ctx.world.share(fitted.get(job), owner).to(ctx.world.device))
    return out


def _quantize_stage_local(block: nn.Module, todo: list[str], H: torch.Tensor, tokens: int, ctx: _BlockContext) -> None:
    """One process: each linear's working space (:func:`prepare_layer`) and the k-means parts of its codebooks,
    then the linears themselves (column loops, residual codebooks, packing), each on ``ctx.workers`` threads side
    by side, longest first; the results are installed in the stage's order. A linear's result does not depend on
    the number of workers."""
    weights = {n: _checked_weight(get_module(block, n), n, H, ctx) for n in todo}
    with one_thread_workers(ctx.workers) as pool:
        with ctx.report.timed("codebooks"):
            extra = _fit_codebooks(pool, weights, H, ctx)
        with ctx.report.timed("linears"):
            order = sorted(todo, key=lambda n: -_linear_cost(n, tuple(weights[n].shape), ctx))
            jobs = {n: pool.submit(_run_method, weights[n], H, n, ctx, **extra.get(n, {})) for n in order}
            results = {n: job.result() for n, job in jobs.items()}
    for name in todo:
        _install(block, name, weights[name], H, tokens, *results[name], ctx)


def _fit_codebooks(
    pool: ThreadPoolExecutor, weights: dict[str, torch.Tensor], H: torch.Tensor, ctx: _BlockContext
) -> dict[str, dict[str, Any]]:
    """The vector methods' per-linear work before the column loop, on the pool: each linear's working space, then
    every k-means part of its codebooks. ``{name: {"prepared": ..., "codebooks": [C per part]}}``, the keyword
    arguments that hand them to the quantizer (only ``prepared`` with shared codebooks; empty for scalar methods)."""
    if ctx.method not in ("vptq", "vq"):
        return {}
    Hf, feedback = H.float(), ctx.method == "vptq"
    preps = dict(zip(weights, pool.map(lambda n: prepare_layer(weights[n], Hf, ctx.config_of(n), feedback), weights)))
    out: dict[str, dict[str, Any]] = {n: {"prepared": preps[n]} for n in weights}
    jobs = _codebook_jobs(weights, ctx)
    fitted = {
        (name, i): pool.submit(fit_part_codebook, preps[name], ctx.config_of(name), i)
        for name, i, _ in sorted(jobs, key=lambda job: -job[2])
    }
    for name in {n for n, _, _ in jobs}:
        out[name]["codebooks"] = [fitted[(n, i)].result() for n, i, _ in jobs if n == name]
    return out


def _helpers(todo: list[str], owners: list[int], ctx: _BlockContext) -> dict[str, int]:
    """For a stage with fewer linears than ranks (o_proj, down_proj): a rank that owns no linear computes each
    owned linear's k-means-only pass (a diagnostic, :func:`kmeans_only_loss`) while the owner runs the column loop,
    rather than wait. ``{linear: helper rank}``; empty when every rank owns a linear."""
    idle = [r for r in range(ctx.world.size) if r not in owners]
    if ctx.method != "vptq" or not idle:
        return {}
    return {name: idle[i % len(idle)] for i, name in enumerate(todo)}


def _quantize_stage(block: nn.Module, names: tuple[str, ...], H: torch.Tensor, tokens: int, ctx: _BlockContext) -> None:
    """Quantize the linears of one stage (they share ``H``). One process: on ``ctx.workers`` threads side by side
    (:func:`_quantize_stage_local`). Several: each codebook part and each
    linear is computed by its owner rank and shared, in the same order on every rank."""
    todo = [n for n in names if not is_quantized(get_module(block, n))]
    for name in sorted(set(names) - set(todo), key=names.index):
        log.info("%s.%s is already quantized; skipped", ctx.prefix, name)
    if not todo:
        return
    if not ctx.world.distributed:
        _quantize_stage_local(block, todo, H, tokens, ctx)
        return
    weights = {n: _checked_weight(get_module(block, n), n, H, ctx) for n in todo}
    with ctx.report.timed("codebooks"):
        codebooks = _split_codebooks(weights, H, ctx)
    with ctx.report.timed("linears"):
        _owned_linears(block, todo, weights, codebooks, H, tokens, ctx)


def _owned_linears(block, todo, weights, codebooks, H, tokens, ctx: _BlockContext) -> None:
    """Several processes: each rank quantizes the linears it owns, then every result is shared and installed."""
    owners = assign([_linear_cost(n, tuple(W.shape), ctx) for n, W in weights.items()], ctx.world.size)
    helpers = _helpers(todo, owners, ctx)
    done = {}
    for name, owner in zip(todo, owners):  # first every linear this rank owns, then the exchange: no rank waits
        linear_codebooks = codebooks.get(name, ctx.codebooks)
        helper = helpers.get(name)
        if owner == ctx.world.rank:
            extra = {}
            if helper is not None:  # the helper's value, received when the owner's info needs it
                extra["kmeans_only_loss"] = functools.partial(ctx.world.share, None, helper)
            if linear_codebooks is not None:
                extra["codebooks"] = linear_codebooks
            result, seconds = _run_method(weights[name], H, name, ctx, **extra)
            done[name] = (_on(result, "cpu"), seconds)
        elif helper == ctx.world.rank:
            ctx.world.share(kmeans_only_loss(weights[name], H.float(), ctx.config_of(name), linear_codebooks), helper)
        elif helper is not None:
            ctx.world.share(None, helper)  # a collective: every rank takes part, in the order of the linears
    for name, owner in zip(todo, owners):
        result, seconds = ctx.world.share(done.get(name), owner)
        _install(block, name, weights[name], H, tokens, _on(result, ctx.world.device), seconds, ctx)


def _record(name: str, ctx: _BlockContext, shape: torch.Size, result: Any, tokens: int, seconds: float) -> LayerRecord:
    info = result.info
    util = info.get("codebook_utilisation")
    config = config_for(ctx.config, name)  # name: the full name
    bits = METHODS[ctx.method].bits(config, tuple(shape))
    if ctx.codebooks is not None:  # each shared codebook counted once, split among the block's linears by size
        b = bits_per_weight(config, tuple(shape), mode="paper")
        codebook = b.codebook_bits + b.outlier_codebook_bits
        bits = (b.total_bits - codebook + codebook * b.num_weights / ctx.block_weights) / b.num_weights
    stored = (
        bits_per_weight(config, tuple(shape), mode="stored").bits_per_weight
        if isinstance(result, QuantizedWeight)
        else bits
    )
    return LayerRecord(
        name=name,
        block=ctx.index,
        role=linear_role(name),
        out_features=shape[0],
        in_features=shape[1],
        method=ctx.method,
        bits_per_weight=bits,
        stored_bits_per_weight=stored,
        proxy_loss_rel=float(info["proxy_loss_rel"]),
        proxy_loss_rel_no_feedback=info.get("proxy_loss_rel_kmeans_only"),
        proxy_loss_rel_first_pass=info.get("proxy_loss_rel_first_pass"),
        codebook_utilisation=None if util is None else float(util if not isinstance(util, list) else util[0]),
        hessian_tokens=tokens,
        seconds=round(seconds, 3),
        dead_columns=int(info.get("dead_columns", 0)),
        hessian_all_zero=bool(info.get("hessian_all_zero", False)),
    )


def _pending_stages(block: nn.Module, spec: ArchSpec) -> list[tuple[str, ...]]:
    return [s for s in spec.stages if not all(is_quantized(get_module(block, n)) for n in s)]


def _quantize_block(
    block: nn.Module, inputs: Captured | None, ctx: _BlockContext, hessians: dict | None = None
) -> None:
    """Quantize one block. ``hessians``: every pending stage's, from the block as it is now (full-precision
    propagation only; ``inputs`` then goes unused)."""
    stages = _pending_stages(block, ctx.spec)
    if not stages:
        log.info("%s is already quantized; skipped", ctx.prefix)
        return
    shared = getattr(ctx.config, "codebook_scope", "per-linear") == "per-block"
    # Every stage's Hessian from the block as it is now: full-precision propagation quantizes with them, and shared
    # codebooks are fitted on them; one pass serves both.
    need_all = shared or ctx.propagation == "full_precision"
    if hessians is None and need_all:
        with ctx.report.timed("hessian"):
            hessians = stage_hessians(block, stages, inputs, ctx.batches)
    if shared:
        with ctx.report.timed("codebooks"):
            _share_codebooks(block, stages, hessians, ctx)
    if ctx.propagation == "full_precision":
        for stage in stages:
            _quantize_stage(block, stage, *hessians[stage[0]], ctx)
        return
    for stage in stages:  # GPTQ "true sequential": later stages see the quantized earlier ones
        with ctx.report.timed("hessian"):
            H, tokens = stage_hessians(block, [stage], inputs, ctx.batches)[stage[0]]
        _quantize_stage(block, stage, H, tokens, ctx)


def _share_codebooks(
    block: nn.Module, stages: list[tuple[str, ...]], hessians: dict[str, tuple], ctx: _BlockContext
) -> None:
    """Fit the block's shared codebooks on all its linears (``hessians``: per stage, from the block as it is now),
    before any of them is quantized; the stages then quantize against them (with fresh Hessians in quantized
    propagation)."""
    layers = [
        (linear_weight(get_module(block, name), ctx.spec.transposed), hessians[stage[0]][0].float())
        for stage in stages
        for name in stage
    ]
    ctx.codebooks = shared_codebooks(layers, ctx.config)
    ctx.block_weights = sum(W.numel() for W, _ in layers)


# The driver ---------------------------------------------------------------------------------------------


def _keep_predicate(keep: bool | Iterable[str] | None) -> Callable[[str], bool]:
    if keep is True:
        return lambda name: True
    names = set(keep or ())
    return lambda name: name in names


def quantize_(
    model: nn.Module,
    config: Any,
    calibration: torch.Tensor,
    *,
    method: str = "vptq",
    keep: bool | Iterable[str] | None = None,
    progress: bool = True,
    batch_size: int = 4,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
) -> QuantizationReport:
    """Quantize every decoder-block linear of ``model`` in place; returns the per-layer report.

    ``method``: "vptq" (default), "vq", "gptq" or "rtn" (:data:`vptq_lab.core.methods.METHODS`), with that
    method's config class. Vector methods replace each linear by a QuantizedLinear; scalar baselines write
    their dequantized weight into the dense layer.
    calibration: int64 token ids [nsamples, seqlen]. ``keep``: layer names (or True) whose W, H and
    QuantizedWeight stay in ``report.store`` for plots. Linears already quantized are skipped.
    Every input is checked before the model is touched, so a bad config leaves the model as it was.

    ``checkpoint_dir``: commit each finished block there (see :mod:`vptq_lab.model.resume`).
    ``resume=True``: ``model`` must be freshly loaded; the completed blocks are re-applied from the
    folder and the run continues with the next block (``keep`` then covers only the new blocks).

    ``device`` ("cpu", "cuda", "cuda:1"; default: where the model is): the model stays where it is, and each
    decoder block moves to ``device`` only while it is worked on, with the calibration activations; Hessians,
    k-means and the column loop run there. Under ``torchrun`` (a process group is initialised, see
    :mod:`vptq_lab.model.distributed`) the ranks split the calibration batches and the linears, every rank ends
    with the whole quantized model, and rank 0 alone writes ``checkpoint_dir``.
    """
    check_calibration(calibration)
    check_method(method, config, checkpoint_dir)
    if resume and checkpoint_dir is None:
        raise VPTQLabError("resume=True needs checkpoint_dir= (the folder a previous run wrote)")
    spec = arch_for(model)
    blocks = get_blocks(model, spec)
    preflight(model, spec, config, calibration)
    home = next(model.parameters()).device
    world = current_world(check_device(device) if device is not None else home)
    if world.distributed and getattr(config, "finetune", False):
        raise VPTQLabError(
            "layer-wise fine-tuning (finetune=True, --finetune layer) does not run under torchrun yet: "
            "quantize in one process, or use --finetune e2e, which runs data-parallel"
        )
    num_batches = -(-calibration.shape[0] // batch_size)
    batches = Batches.of(world, num_batches)
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = BlockCheckpoints.open(
            checkpoint_dir,
            run_fingerprint(model, config, calibration, batch_size),
            len(blocks),
            resume,
            writer=world.main,
        )
    propagation = getattr(config, "propagation", "quantized")
    report = QuantizationReport(config.to_dict(), method, propagation)
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    mine = [calibration[b * batch_size : (b + 1) * batch_size] for b in batches.mine]
    ids = torch.cat(mine) if mine else calibration[:0]
    with report.timed("capture"):
        inputs = to_device(capture_block_inputs(model, blocks[0], ids, batch_size), world.device)
    first = _resume_from(ckpt, blocks, report) if ckpt is not None else 0
    if first:
        inputs = to_device(ckpt.restore_hidden(inputs, batches.mine, num_batches), world.device)
    bar = tqdm(total=len(blocks), initial=first, desc="quantizing blocks", disable=not progress or not world.main)
    workers = torch.get_num_threads() if world.device.type == "cpu" and not world.distributed else 1
    run = _Run(
        blocks, spec, config, method, _keep_predicate(keep), world, batches, home, report, ckpt, bar, start, workers
    )
    with prefer_backend("torch"), bar:  # quantized blocks as dense matmuls (cached), on every device
        if world.distributed and propagation == "full_precision":
            _whole_blocks_by_rank(run, inputs, first)
        else:
            _block_by_block(run, inputs, first)
    model.train(was_training)
    report.seconds = round(time.perf_counter() - start, 2)
    return report


@dataclass
class _Run:
    """What every block of one quantize_ call shares."""

    blocks: nn.ModuleList
    spec: ArchSpec
    config: Any
    method: str
    keep: Callable[[str], bool]
    world: World
    batches: Batches
    home: torch.device
    report: QuantizationReport
    ckpt: BlockCheckpoints | None
    bar: Any
    start: float  # perf_counter() at the call's start
    workers: int = 1  # threads for a stage's linears (one process on the CPU: torch's thread count)

    def context(self, i: int, batches: Batches | None, report: QuantizationReport | None = None) -> _BlockContext:
        return _BlockContext(
            i,
            f"{self.spec.blocks}.{i}",
            self.spec,
            self.config,
            self.report if report is None else report,
            self.keep,
            self.method,
            batches=batches,
            workers=self.workers,
        )

    def commit(self, i: int, hidden: list[torch.Tensor] | None) -> None:
        """Rank 0 writes block ``i`` (on its home device) and the hidden states after it to the checkpoint folder."""
        if self.ckpt is not None and self.world.main:
            records = [r.to_dict() for r in self.report.records]
            before = self.report.seconds_before_resume
            seconds = None if before is None else before + time.perf_counter() - self.start
            self.ckpt.save(i, self.blocks[i], records, self.report.finetune, hidden, seconds)


def _block_by_block(run: _Run, inputs: Captured, first: int) -> None:
    """Quantize the blocks one after another (under torchrun, every rank works on the same block)."""
    for i in range(first, len(run.blocks)):
        block = run.blocks[i].to(run.world.device)
        inputs = _one_block(run, i, block, inputs)
        run.blocks[i].to(run.home)
        if run.ckpt is not None:
            with run.report.timed("checkpoint"):
                run.commit(i, _all_hidden(run.world, run.batches, hidden_states(inputs)))
        run.bar.update()


def _one_block(run: _Run, i: int, block: nn.Module, inputs: Captured) -> Captured:
    """Quantize block ``i`` (and fine-tune it layer-wise if the config says so); returns the next block's inputs."""
    config, report = run.config, run.report
    propagation = getattr(config, "propagation", "quantized")
    finetune = getattr(config, "finetune", False)
    with report.timed("forward"):
        fp_outputs = run_block(block, inputs) if propagation == "full_precision" or finetune else None
    replay = ReplayQuantized(block, len(inputs)) if propagation == "quantized" else None
    try:
        _quantize_block(block, inputs, run.context(i, run.batches))
        if propagation == "quantized" and not finetune:
            with report.timed("forward"):
                return run_block(block, inputs)
    finally:
        if replay is not None:
            replay.close()
    if finetune:
        with report.timed("finetune"):
            stats = finetune_block(
                block,
                inputs,
                hidden_states(fp_outputs),
                run.spec,
                config.finetune_steps,
                config.finetune_lr,
                config.seed + i,
                config.finetune_batch,
            )
        report.finetune.append({"block": i, **stats})
    if propagation == "full_precision":
        return fp_outputs
    with report.timed("forward"):
        return run_block(block, inputs)


def _whole_blocks_by_rank(run: _Run, inputs: Captured, first: int) -> None:
    """Full-precision propagation under torchrun: whole blocks go to ranks.

    Blocks are taken ``world.size`` at a time. For each block of a group, every rank pushes its own batches
    through the full-precision block, and the ranks reduce the block's Hessians (exactly as one process sums
    them). Then rank ``r`` quantizes the group's ``r``-th block alone, through the one-process code, and the
    owners share their results; every rank installs them in block order. A block's quantization depends only on
    its weights, its Hessians and the config (seeds included), so the result is the one-process result.
    """
    world, blocks = run.world, run.blocks
    for start in range(first, len(blocks), world.size):
        group = range(start, min(start + world.size, len(blocks)))
        mine, hidden = None, {}
        for i in group:  # collective: the Hessians of the group's blocks, one after another
            block = blocks[i].to(world.device)
            with run.report.timed("hessian"):
                hessians = stage_hessians(block, _pending_stages(block, run.spec), inputs, run.batches)
            with run.report.timed("forward"):
                inputs = run_block(block, inputs)
            if run.ckpt is not None:
                hidden[i] = _all_hidden(world, run.batches, hidden_states(inputs))
            blocks[i].to(run.home)
            if i - start == world.rank:
                mine = (i, hessians)
            del hessians
        done = None
        if mine is not None:  # this rank's block, alone
            i, hessians = mine
            own = QuantizationReport(run.report.config, run.report.method, run.report.propagation)
            ctx = run.context(i, None, own)
            ctx.results = {}
            _quantize_block(blocks[i].to(world.device), None, ctx, hessians)
            blocks[i].to(run.home)
            done = (ctx.results, own.records, own.store)
            del mine, hessians
        for i in group:  # the exchange, in block order
            results, records, store = world.share(done if i - start == world.rank else None, i - start)
            if i - start != world.rank:
                for name, result in results.items():
                    _swap(blocks[i], name, _on(result, run.home), run.spec, run.method)
            run.report.records.extend(records)
            run.report.store.update(store)
            with run.report.timed("checkpoint"):
                run.commit(i, hidden.pop(i, None))
            run.bar.update()
            log.info("%s.%d quantized by rank %d", run.spec.blocks, i, i - start)


def _all_hidden(world: World, batches: Batches, hidden: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """Every batch's hidden states in batch order on rank 0 (None elsewhere), on the CPU."""
    mine = [h.cpu() for h in hidden]
    if not world.distributed:
        return mine
    shares = world.gather(dict(zip(batches.mine, mine)))
    if shares is None:
        return None
    merged = {b: h for share in shares for b, h in share.items()}
    return [merged[b] for b in range(batches.total)]


def _resume_from(ckpt: BlockCheckpoints, blocks: nn.ModuleList, report: QuantizationReport) -> int:
    """Re-apply the completed blocks and their records; returns the first block still to do."""
    state = ckpt.state
    for i in range(state.completed):
        ckpt.apply(blocks[i], i)
    report.records = [LayerRecord(**r) for r in state.records]
    report.finetune = list(state.finetune)
    report.seconds_before_resume = state.seconds if state.completed else 0.0
    if state.completed:
        log.info("resumed from %s: blocks 0..%d re-applied", ckpt.folder, state.completed - 1)
    return state.completed
