"""End-to-end distillation of a quantized model: ``distill_(student, teacher, train_ids, heldout_ids, config)``.

After quantization, the whole quantized model (the student) is trained to match the full-precision model (the
teacher): the loss is the KL divergence between their next-token distributions on calibration text, minimised by
Adam. Only the codebooks (main, residual, outlier), the RMSNorm weights and, with ``enable_norm``, the per-column
``weight_scale``/``weight_bias`` train; the indices stay fixed unless ``code_every`` is set (PV-tuning's code
updates, docs/algorithm.md step 11: the codes follow straight-through displacements of the weights), so the file format
and the bits stay the same either way.
The embeddings and ``lm_head`` stay frozen unless ``train_head=True``: then the output head trains too (and with it
the input embeddings where the model ties them, as SmolLM2 does). Those are the model's 16-bit tensors, stored as
before, so the file and its bits stay the same; what changes is how many weights train (28M more on SmolLM2-135M,
against about 1M codebook entries at the 2-bit preset) and the memory Adam needs for them.

- ``hidden_weight`` > 0 adds a second term to the loss: each block's output matched to the teacher's (relative
  squared error, the mean over the blocks), a signal per block rather than only at the logits. Off by default.
- Memory stays bounded: the teacher's logits are recomputed for each step's batch and never kept.
- Selection is on held-out windows (never the test split): their perplexity and KL to the teacher are measured
  every ``eval_every`` steps, the best state by ``config.select`` (perplexity by default, or KL) is kept, and
  training stops after ``patience`` evaluations without improvement.
- A run is deterministic for a seed and thread count, and with ``checkpoint_dir`` it can be killed and resumed
  bit-identically: every evaluation commits the trained tensors, Adam's state and the sampler's position (only
  safetensors and JSON, written atomically).
- ``device=`` runs it there (student and teacher move for the run, and back). Under ``torchrun`` it is
  data-parallel: each rank takes its own ``batch`` windows per step (the global batch is ``batch`` x ranks), the
  gradients are averaged over the ranks, the held-out windows are split between them, and rank 0 alone writes
  the checkpoint. Every rank ends with the same trained model.

The paper's LLaMA-2-13B at 2.02 bits goes 6.29 -> 6.07 with layer-wise and 5.32 with layer-wise plus end-to-end
fine-tuning (docs/algorithm.md, Published numbers).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from vptq_lab.core.config import JsonConfig
from vptq_lab.errors import VPTQLabError
from vptq_lab.files import atomic_save_tensors, atomic_write_bytes
from vptq_lab.kernels.dispatch import prefer_backend
from vptq_lab.model.distributed import World, check_device, current_world
from vptq_lab.model.layers import QuantizedLinear
from vptq_lab.model.logprobs import chunk_log_probs, plain_head, window_nll_kl

__all__ = [
    "DistillConfig",
    "DistillReport",
    "distill_",
    "distill_loss",
    "trainable_parameters",
    "end_training",
    "remove_distill_checkpoint",
]

log = logging.getLogger(__name__)
STATE = "distill-state.json"
TENSORS = "distill-tensors.safetensors"
STATE_VERSION = 1
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class DistillConfig(JsonConfig):
    """End-to-end distillation settings. The defaults are a short, safe run; the settings tuned per bit budget are
    ``vptq_lab.recipe(bits).distill``."""

    steps: int = 80  # Adam steps at most
    lr: float = 2e-4
    schedule: str = "constant"  # "constant" lr, or "cosine": lr * (1 + cos(pi * step / steps)) / 2, down to 0
    batch: int = 1  # training windows per step
    eval_every: int = 20  # steps between held-out evaluations (and checkpoints)
    patience: int = 3  # evaluations without improvement before stopping early
    temperature: float = 1.0
    train_norms: bool = True  # the RMSNorm weights (and weight_scale/weight_bias with enable_norm)
    train_head: bool = False  # the output head too (and the input embeddings where they are tied to it)
    select: str = "ppl"  # keep the state with the lowest held-out "ppl" (perplexity) or "kl" (to the teacher)
    seed: int = 0
    # Code updates (PV-tuning's discrete step; 0: the indices never change). Every `code_every` steps the codes
    # move towards the weights plus straight-through displacements, which Adam trains at `code_lr` (on the same
    # schedule) from the gradient w.r.t. the dequantized weights; at most `code_fraction` of a layer's vectors
    # change at once.
    code_every: int = 0
    code_lr: float = 5e-4
    code_fraction: float = 0.01
    # > 0: the loss adds this times the blocks' hidden-state error to the teacher's (relative squared error, the
    # mean over the blocks); the held-out figures and selection stay KL and perplexity
    hidden_weight: float = 0.0

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based): a function of the step alone, so a resumed run has it."""
        return self.lr * self.lr_factor(step)

    def lr_factor(self, step: int) -> float:
        """The schedule's factor at step ``step`` (0-based): 1 throughout for "constant"."""
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * step / self.steps))
        return 1.0

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "eval_every", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be an int >= 1")
        if not isinstance(self.code_every, int) or isinstance(self.code_every, bool) or self.code_every < 0:
            raise ValueError(f"code_every={self.code_every!r} must be an int >= 0 (0: the codes never change)")
        if isinstance(self.code_fraction, bool) or not (
            isinstance(self.code_fraction, (int, float)) and 0.0 < self.code_fraction <= 1.0
        ):
            raise ValueError(f"code_fraction={self.code_fraction!r} must be in (0, 1] (try 0.01)")
        for name in ("lr", "temperature", "code_lr"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (math.isfinite(value) and value > 0)
            ):
                raise ValueError(f"{name}={value!r} must be a positive number (lr: try 1e-4)")
        if (
            isinstance(self.hidden_weight, bool)
            or not isinstance(self.hidden_weight, (int, float))
            or not (math.isfinite(self.hidden_weight) and self.hidden_weight >= 0)
        ):
            raise ValueError(f"hidden_weight={self.hidden_weight!r} must be a number >= 0 (0: KL alone; try 1.0)")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} must be one of {SCHEDULES}")
        if self.select not in ("ppl", "kl"):
            raise ValueError(f"select={self.select!r} must be 'ppl' (held-out perplexity) or 'kl' (held-out KL)")
        for name in ("train_norms", "train_head"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a bool")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r} must be an int >= 0")


@dataclass
class DistillReport:
    config: dict[str, Any]
    initial: dict[str, float]  # held-out ppl and kl before training
    best: dict[str, float]  # the kept state: step, held-out ppl and kl
    final: dict[str, float]  # after the kept state is stored back in the codebooks' dtype
    steps_run: int
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)  # per evaluation: step, train_kl, heldout ppl/kl
    seconds: float = 0.0
    # code updates (code_every > 0): per update, the step, the fraction of all vectors that took a new code, the
    # squared error to the targets before and after, and the seconds it took
    code_updates: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trainable_parameters(
    model: nn.Module, train_norms: bool = True, train_head: bool = False
) -> dict[str, nn.Parameter]:
    """Start training: name -> fp32 parameter for every codebook (and norm; and ``train_head``: the output head,
    under its first name, which is the input embeddings' where they are tied), everything else frozen."""
    params: dict[str, nn.Parameter] = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLinear):
            module.trainable_centroids(column_norm=train_norms)
            params.update({f"{name}.{key}": p for key, p in module.trainable.items()})
    head = model.get_output_embeddings() if train_head and hasattr(model, "get_output_embeddings") else None
    if train_head and not isinstance(getattr(head, "weight", None), nn.Parameter):
        raise VPTQLabError(
            f"train_head=True, but {type(model).__name__} has no output head with a weight "
            "(get_output_embeddings()): train without it"
        )
    for name, param in model.named_parameters():  # a tied weight is listed once
        is_norm = name.rpartition(".")[0].endswith("norm") and name.endswith(".weight")
        param.requires_grad_((train_norms and is_norm) or (head is not None and param is head.weight))
        if param.requires_grad:
            params[name] = param
    if not any(isinstance(m, QuantizedLinear) for m in model.modules()):
        raise VPTQLabError("the student has no quantized layers: quantize it first (quantize_ or load_quantized)")
    return params


def end_training(model: nn.Module) -> None:
    """End training (what :func:`trainable_parameters` started): the trained codebooks stored back in their dtype,
    every parameter frozen, gradients dropped."""
    for module in model.modules():
        if isinstance(module, QuantizedLinear) and module.trainable:
            module.commit_centroids()
    for param in model.parameters():
        param.requires_grad_(False)
        param.grad = None


def _kl(
    student: nn.Module,
    teacher: nn.Module,
    ids: torch.Tensor,
    temperature: float,
    chunked: bool | None = None,
    hidden_weight: float = 0.0,
    parts: dict[str, float] | None = None,
) -> torch.Tensor:
    """Mean per-token KL(teacher || student) of the next-token distributions; the teacher's logits are
    recomputed here and dropped after the step.

    ``chunked`` (default: :func:`head_path` decides): the logits are made ``logprobs.CHUNK`` positions at a time from
    the last hidden states and the gradient w.r.t. those is formed as they go (:class:`_ChunkedKL`), so no
    [tokens, vocab] tensor outlives its chunk. Otherwise the full logits are made at once.
    ``hidden_weight`` > 0 adds that times :func:`_hidden_loss` (every block's output matched to the teacher's);
    ``parts``, when given, receives the two terms' values ("kl", "hidden")."""
    hidden = hidden_weight > 0
    if chunked if chunked is not None else head_path(student, teacher):
        with torch.no_grad():
            out_t = teacher.base_model(ids, output_hidden_states=hidden)
        out_s = student.base_model(ids, output_hidden_states=hidden)
        h_s, h_t = out_s.last_hidden_state.flatten(0, 1), out_t.last_hidden_state.flatten(0, 1)  # [b*seqlen, d]
        heads = (student.get_output_embeddings(), teacher.get_output_embeddings())
        kl = _ChunkedKL.apply(h_s, heads[0].weight, h_t, heads, temperature) / h_s.shape[0]
    else:
        with torch.no_grad():
            out_t = teacher(ids, output_hidden_states=hidden)
            target = F.log_softmax(out_t.logits.float() / temperature, dim=-1)  # [b, seqlen, vocab]
        out_s = student(ids, output_hidden_states=hidden)
        logp = F.log_softmax(out_s.logits.float() / temperature, dim=-1)  # [b, seqlen, vocab]
        kl = F.kl_div(logp.flatten(0, 1), target.flatten(0, 1), log_target=True, reduction="batchmean")
    term = _hidden_loss(out_s.hidden_states, out_t.hidden_states) if hidden else None
    if parts is not None:
        parts.update(kl=float(kl.detach()), hidden=float(term.detach()) if term is not None else 0.0)
    return kl if term is None else kl + hidden_weight * term


def distill_loss(
    student: nn.Module, teacher: nn.Module, ids: torch.Tensor, temperature: float = 1.0, hidden_weight: float = 0.0
) -> dict[str, float]:
    """The two terms of the distillation loss on ``ids`` [n, seqlen], without training: ``kl``, the mean per-token
    KL(teacher || student), and ``hidden``, the blocks' relative hidden-state error (0.0 unless ``hidden_weight`` >
    0), and ``loss``, ``kl + hidden_weight * hidden``: what one step of :func:`distill_` with that config minimises.
    Use it to choose ``DistillConfig.hidden_weight`` (the scale of the two terms) or to score a model."""
    _check_ids(ids, "ids")
    config = DistillConfig(temperature=temperature, hidden_weight=hidden_weight)  # their checks
    parts: dict[str, float] = {}
    with torch.no_grad():
        loss = _kl(student, teacher, ids, config.temperature, hidden_weight=config.hidden_weight, parts=parts)
    return {**parts, "loss": float(loss)}


def _hidden_loss(student_states: tuple, teacher_states: tuple) -> torch.Tensor:
    """Mean over the blocks of the squared error of the block's output to the teacher's, relative to the teacher's
    (``||h_s - h_t||^2 / ||h_t||^2`` over the batch's tokens). The states are a model's ``hidden_states``: the
    embeddings first (skipped: with a trained head, tied embeddings are trained), then each block's output (the
    last one after the final norm)."""
    terms = [
        (s.float() - t.float()).pow(2).sum() / t.float().pow(2).sum().clamp_min(1e-12)
        for s, t in zip(student_states[1:], teacher_states[1:])
    ]
    return torch.stack(terms).mean()


def head_path(student: nn.Module, teacher: nn.Module) -> bool:
    """Whether both models' logits can be made a chunk of positions at a time (:func:`logprobs.plain_head`), the
    student's with a trainable head weight: then :func:`_kl` never forms a whole window's logits."""
    return plain_head(student, train=True) and plain_head(teacher, train=False)


class _ChunkedKL(torch.autograd.Function):
    """Summed KL(teacher || student) over rows from the last hidden states ``h_s``, ``h_t`` [rows, d], the logits
    made ``logprobs.CHUNK`` rows at a time. ``weight`` is the student head's weight (``heads[0].weight``), an input so
    that autograd sees it. The gradients are formed in the forward pass (d KL / d student logits = (softmax_s -
    softmax_t) / temperature, then through the linear head: times the weight for ``h_s``, and, when the weight
    trains, transposed times ``h_s`` for the weight), so backward keeps only a [rows, d] tensor (and a [vocab, d]
    one for a trained weight)."""

    @staticmethod
    def forward(ctx, h_s, weight, h_t, heads, temperature):
        total = torch.zeros((), dtype=torch.float64, device=h_s.device)
        grad = torch.empty(h_s.shape, dtype=torch.float32, device=h_s.device)  # [rows, d]
        weight32 = weight.float()  # [vocab, d]
        grad_w = torch.zeros_like(weight32) if ctx.needs_input_grad[1] else None  # [vocab, d]
        head_t = heads[1]
        for rows, _, logp_s in chunk_log_probs(h_s, heads[0], temperature):
            logp_t = F.log_softmax(head_t(h_t[rows]).float() / temperature, dim=-1)  # [chunk, vocab]
            total += F.kl_div(logp_s, logp_t, log_target=True, reduction="sum").double()
            dlogits = (logp_s.exp() - logp_t.exp()) / temperature  # [chunk, vocab]
            grad[rows] = dlogits @ weight32  # [chunk, d]
            if grad_w is not None:
                grad_w.addmm_(dlogits.T, h_s[rows].float())  # [vocab, chunk] @ [chunk, d]
        ctx.save_for_backward(grad, grad_w)
        ctx.dtypes = (h_s.dtype, weight.dtype)
        return total.float()

    @staticmethod
    def backward(ctx, grad_out):
        grad, grad_w = ctx.saved_tensors
        grad_w = None if grad_w is None else (grad_out * grad_w).to(ctx.dtypes[1])
        return (grad_out * grad).to(ctx.dtypes[0]), grad_w, None, None, None


@torch.no_grad()
def _heldout(
    student: nn.Module,
    teacher: nn.Module,
    heldout: torch.Tensor,
    temperature: float,
    world: World | None = None,
    chunked: bool | None = None,
) -> dict[str, float]:
    """Held-out perplexity of the student and its mean per-token KL to the teacher, one window at a time (under
    torchrun the windows are split between the ranks and the per-window values summed in window order).
    ``chunked`` (default: :func:`head_path` decides): the logits a chunk of positions at a time."""
    world = world or World()
    chunked = head_path(student, teacher) if chunked is None else chunked
    with prefer_backend("torch"):  # whole windows: dense matmuls (cached dequantized weights) on every device
        values = _heldout_values(student, teacher, heldout, temperature, world, chunked)
    merged = {w: v for share in world.all_gather(values) for w, v in share.items()}
    nll = kl = 0.0
    for w in range(heldout.shape[0]):
        nll += merged[w][0]
        kl += merged[w][1]
    return {"ppl": math.exp(nll / heldout.shape[0]), "kl": kl / heldout.shape[0]}


def _heldout_values(student, teacher, heldout: torch.Tensor, temperature: float, world: World, chunked: bool) -> dict:
    """``{window: (nll, kl)}`` for this rank's share of the held-out windows (``chunked``: their logits a chunk of
    positions at a time)."""
    return {
        w: window_nll_kl(student, teacher, heldout[w], temperature, chunked)
        for w in range(world.rank, heldout.shape[0], world.size)
    }


def _average_gradients(params: list[nn.Parameter], world: World) -> None:
    """Data parallel: every rank's gradients replaced by their mean over the ranks (one flat all-reduce)."""
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    for p, piece in zip(params, flat.split([g.numel() for g in grads])):
        p.grad = piece.view_as(p).clone()


def _mean_loss(loss: float, world: World) -> float:
    return sum(world.all_gather(loss)) / world.size if world.distributed else loss


def distill_(
    student: nn.Module,
    teacher: nn.Module,
    train_ids: torch.Tensor,
    heldout_ids: torch.Tensor,
    config: DistillConfig = DistillConfig(),
    *,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    on_evaluate: Callable[[dict[str, float]], bool | None] | None = None,
) -> DistillReport:
    """Train ``student`` (quantized, in place) towards ``teacher`` on ``train_ids`` [n, seqlen]; keep the state
    with the lowest held-out perplexity (or KL, ``config.select``) on ``heldout_ids`` [m, seqlen] (see the module
    doc). Returns the report.
    ``device``: where to train (default: where the student is); both models move there for the run.
    ``on_evaluate``: called on every rank after each held-out evaluation with that evaluation's record (``step``,
    ``train_kl``, ``heldout_ppl``, ``heldout_kl``; a copy), for example to draw the curve as it grows. Returning
    True ends the run there, as if the steps were done: the kept state is restored and the report says
    ``stopped_early=False`` with the steps run. Under ``torchrun`` every rank must return the same."""
    _check_ids(train_ids, "train_ids")
    _check_ids(heldout_ids, "heldout_ids")
    if resume and checkpoint_dir is None:
        raise VPTQLabError("resume=True needs checkpoint_dir= (the folder a previous run wrote)")
    start = time.perf_counter()
    home = next(student.parameters()).device
    teacher_home = next(teacher.parameters()).device
    world = current_world(check_device(device) if device is not None else home)
    student.to(world.device).eval()
    teacher.to(world.device).eval()
    train_ids, heldout_ids = train_ids.to(world.device), heldout_ids.to(world.device)
    params = trainable_parameters(student, config.train_norms, config.train_head)
    layers = _code_layers(student, params) if config.code_every else {}
    targets = sorted(f"{n}.{TARGET}" for n in layers)
    kept = sorted(n for n in params if n not in targets)  # the kept state: not the displacements, which end here
    names = kept + targets  # the optimizer's order (see _commit)
    groups = [{"params": [params[n] for n in kept], "base_lr": config.lr}]
    if targets:  # the straight-through displacements: their own learning rate
        groups.append({"params": [params[n] for n in targets], "base_lr": config.code_lr})
    optimizer = torch.optim.Adam([{**g, "lr": g["base_lr"]} for g in groups])
    chunked = head_path(student, teacher)  # logits a chunk of positions at a time (see _kl)
    gen = torch.Generator().manual_seed(config.seed)
    state = _new_state()
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    try:
        if folder is not None:
            state = _open(folder, config, names, params, optimizer, gen, resume, layers, writer=world.main) or state
        if not state["history"]:
            state["initial"] = _heldout(student, teacher, heldout_ids, config.temperature, world, chunked)
            state["best"] = {"step": 0, **state["initial"]}
            state["best_tensors"] = {n: params[n].detach().clone() for n in kept}
            state["best_codes"] = _codes_of(layers)
        bar = tqdm(total=config.steps, initial=state["step"], desc="distilling", disable=not progress or not world.main)
        running = []
        stop = False
        while state["step"] < config.steps and state["bad_evals"] < config.patience and not stop:
            # every rank draws the whole step's windows from the same sampler and takes its own share
            rows = torch.randint(train_ids.shape[0], (config.batch * world.size,), generator=gen)  # [batch x ranks]
            rows = rows[world.rank * config.batch : (world.rank + 1) * config.batch].to(world.device)  # [batch]
            with torch.enable_grad():
                parts = {}
                loss = _kl(student, teacher, train_ids[rows], config.temperature, chunked, config.hidden_weight, parts)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            if world.distributed:
                _average_gradients([params[n] for n in names], world)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * config.lr_factor(state["step"])
            optimizer.step()
            running.append(_mean_loss(parts.get("kl", float(loss.detach())), world))  # the KL part alone
            state["step"] += 1
            if layers and state["step"] % config.code_every == 0:
                begun = time.perf_counter()
                found = _update_codes(layers, config.code_fraction)
                seconds = round(time.perf_counter() - begun, 2)
                state["code_updates"].append({"step": state["step"], **found, "seconds": seconds})
            bar.update(1)
            best = state["best"][config.select]  # the held-out figure that selects the kept state
            bar.set_postfix({"kl": f"{running[-1]:.4f}", f"best_{config.select}": f"{best:.4g}"})
            if state["step"] % config.eval_every == 0 or state["step"] == config.steps:
                mean_kl = sum(running) / len(running)
                _evaluate(student, teacher, heldout_ids, config, params, kept, state, mean_kl, world, chunked, layers)
                running = []
                if folder is not None and world.main:
                    _commit(folder, config, names, params, optimizer, gen, state, layers)
                if on_evaluate is not None:
                    stop = bool(on_evaluate(dict(state["history"][-1])))
        bar.close()
        with torch.no_grad():  # the best state, then the codebooks' own dtype
            for n in kept:
                params[n].copy_(state["best_tensors"][n])
        _set_codes(layers, state["best_codes"])
    finally:
        end_training(student)
    final = _heldout(student, teacher, heldout_ids, config.temperature, world, chunked)
    student.to(home)
    teacher.to(teacher_home)
    return DistillReport(
        config.to_dict(),
        state["initial"],
        state["best"],
        final,
        state["step"],
        state["bad_evals"] >= config.patience,
        state["history"],
        round(time.perf_counter() - start, 2),
        state["code_updates"],
    )


def _check_ids(ids: Any, what: str) -> None:
    if (
        not isinstance(ids, torch.Tensor)
        or ids.dim() != 2
        or ids.dtype not in (torch.int64, torch.int32)
        or not len(ids)
    ):
        raise VPTQLabError(
            f"{what} must be integer token ids [windows, seqlen] with at least one window, got "
            f"{tuple(getattr(ids, 'shape', ()))}; build them with vptq_lab.split_heldout"
        )


def _new_state() -> dict[str, Any]:
    return {
        "step": 0,
        "bad_evals": 0,
        "history": [],
        "code_updates": [],
        "initial": None,
        "best": None,
        "best_tensors": {},
        "best_codes": {},
    }


TARGET = "straight_through"  # the name suffix of a layer's straight-through displacement among the trained tensors


def _code_layers(student: nn.Module, params: dict[str, nn.Parameter]) -> dict[str, QuantizedLinear]:
    """Start code updates: every quantized layer gets its straight-through displacement, added to ``params`` (so that
    Adam, the checkpoints and the kept state carry it like any trained tensor). Returns name -> layer."""
    layers = {n: m for n, m in student.named_modules() if isinstance(m, QuantizedLinear)}
    for name, layer in layers.items():
        params[f"{name}.{TARGET}"] = layer.straight_through_target()
    return layers


def _update_codes(layers: dict[str, QuantizedLinear], fraction: float) -> dict[str, float]:
    """One code update of every layer; the fraction of all vectors that changed and the squared error to the
    targets (weights plus displacements) before and after, summed over the layers."""
    changed = vectors = 0
    before = after = 0.0
    with torch.no_grad():
        for layer in layers.values():
            found = layer.reencode_codes(fraction)
            changed, vectors = changed + found.changed, vectors + found.vectors
            before, after = before + found.error_before, after + found.error_after
    return {"changed": changed / max(vectors, 1), "error_before": before, "error_after": after}


def _codes_of(layers: dict[str, QuantizedLinear]) -> dict[str, torch.Tensor]:
    """The layers' packed codes, copied: ``{name.indices: ..., name.outlier_indices: ...}``."""
    out = {}
    for name, layer in layers.items():
        out[f"{name}.indices"] = layer.indices.detach().clone()
        if layer.outlier_indices is not None:
            out[f"{name}.outlier_indices"] = layer.outlier_indices.detach().clone()
    return out


def _set_codes(layers: dict[str, QuantizedLinear], codes: dict[str, torch.Tensor]) -> None:
    """Put packed codes from :func:`_codes_of` back into the layers (their unpacked copies too)."""
    for name, layer in layers.items():
        layer.set_packed_codes(codes[f"{name}.indices"], codes.get(f"{name}.outlier_indices"))


def _evaluate(
    student, teacher, heldout, config, params, names, state, train_kl: float, world: World, chunked: bool, layers
) -> None:
    found = _heldout(student, teacher, heldout, config.temperature, world, chunked)
    state["history"].append(
        {"step": state["step"], "train_kl": train_kl, "heldout_ppl": found["ppl"], "heldout_kl": found["kl"]}
    )
    if found[config.select] < state["best"][config.select]:
        state["best"] = {"step": state["step"], **found}
        state["best_tensors"] = {n: params[n].detach().clone() for n in names}
        state["best_codes"] = _codes_of(layers)
        state["bad_evals"] = 0
    else:
        state["bad_evals"] += 1
    log.info(
        "step %d: train KL %.4f, held-out perplexity %.4f, KL %.5f", state["step"], train_kl, found["ppl"], found["kl"]
    )


# Checkpoints: safetensors for tensors, JSON for the rest, committed atomically ---------------------------------


def _fingerprint(config: DistillConfig, names: list[str], params: dict[str, nn.Parameter]) -> dict[str, Any]:
    return {"config": json.loads(config.to_json()), "params": {n: list(params[n].shape) for n in names}}


def _same_run(saved: Any, current: dict[str, Any]) -> bool:
    """Whether a checkpoint's fingerprint is this run's. A checkpoint written before a DistillConfig field existed
    lacks it and ran with what is now its default (each added field defaults to the behaviour from before it), so
    its missing fields are read at their defaults; an unknown field (a newer version's) never matches."""
    if saved == current:
        return True
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        return False
    defaults = json.loads(DistillConfig().to_json())
    if not set(saved["config"]) <= set(defaults):
        return False
    return {**saved, "config": {**defaults, **saved["config"]}} == current


def _commit(folder: Path, config, names, params, optimizer, gen, state, layers) -> None:
    tensors = {f"param.{n}": params[n].detach() for n in names}
    tensors.update({f"best.{n}": t for n, t in state["best_tensors"].items()})
    tensors.update({f"codes.{n}": t for n, t in _codes_of(layers).items()})
    tensors.update({f"best_codes.{n}": t for n, t in state["best_codes"].items()})
    adam = optimizer.state_dict()["state"]
    for i, n in enumerate(names):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            if i in adam and key in adam[i]:
                tensors[f"adam.{key}.{n}"] = torch.as_tensor(adam[i][key]).detach()
    tensors["sampler"] = gen.get_state()
    digest = atomic_save_tensors(folder / TENSORS, tensors)  # straight to the file: no copy of it in memory
    meta = {k: v for k, v in state.items() if k not in ("best_tensors", "best_codes")}
    record = {
        "version": STATE_VERSION,
        "fingerprint": _fingerprint(config, names, params),
        "state": meta,
        "tensors_sha256": digest,
    }
    atomic_write_bytes(folder / STATE, json.dumps(record, indent=1).encode())  # the commit point


def _open(
    folder: Path, config, names, params, optimizer, gen, resume: bool, layers, writer: bool = True
) -> dict[str, Any] | None:
    """Start a new checkpoint folder, or restore the committed state of an earlier run (``resume``).
    ``writer=False``: another rank writes the folder; this one only reads it."""
    if folder.exists() and not folder.is_dir():
        raise VPTQLabError(f"checkpoint dir {folder} is a file: pass a folder (it is created if missing)")
    if not (folder / STATE).is_file():
        if writer:
            folder.mkdir(parents=True, exist_ok=True)
        return None
    if not resume:
        raise VPTQLabError(
            f"checkpoint dir {folder} already holds a distillation run: pass resume=True "
            "(--resume) to continue it, or choose an empty --checkpoint-dir"
        )
    from safetensors.torch import load

    try:
        record = json.loads((folder / STATE).read_text())
        data = (folder / TENSORS).read_bytes()
    except (OSError, ValueError) as exc:
        raise VPTQLabError(
            f"cannot read the distillation checkpoint in {folder} ({exc}): start again with a new --checkpoint-dir"
        ) from exc
    if record.get("version") != STATE_VERSION or hashlib.sha256(data).hexdigest() != record.get("tensors_sha256"):
        raise VPTQLabError(
            f"{folder / TENSORS} does not match {STATE} (another version, or a damaged file): start "
            "again with a new --checkpoint-dir"
        )
    if not _same_run(record.get("fingerprint"), _fingerprint(config, names, params)):
        raise VPTQLabError(
            f"cannot resume from {folder}: it was written for another config or model; resume with "
            "the same ones, or choose a new --checkpoint-dir"
        )
    tensors = load(data)
    with torch.no_grad():
        for n in names:
            params[n].copy_(tensors[f"param.{n}"])
    adam = {}
    for i, n in enumerate(names):
        if f"adam.step.{n}" in tensors:
            adam[i] = {k: tensors[f"adam.{k}.{n}"].clone() for k in ("step", "exp_avg", "exp_avg_sq")}
    saved = optimizer.state_dict()
    optimizer.load_state_dict({"state": adam, "param_groups": saved["param_groups"]})
    gen.set_state(tensors["sampler"])
    state = dict(record["state"])
    state.setdefault("code_updates", [])  # written before code updates existed
    state["best_tensors"] = {k.partition(".")[2]: t.clone() for k, t in tensors.items() if k.startswith("best.")}
    state["best_codes"] = {k.partition(".")[2]: t.clone() for k, t in tensors.items() if k.startswith("best_codes.")}
    _set_codes(layers, {k.partition(".")[2]: t for k, t in tensors.items() if k.startswith("codes.")})
    log.info("resumed distillation from %s at step %d", folder, state["step"])
    return state


def remove_distill_checkpoint(folder: str | Path) -> int:
    """Delete a finished distillation's checkpoint files (only ours), then the folder if it is left empty."""
    folder, freed = Path(folder), 0
    for name in (TENSORS, STATE):  # the state file last: an interrupted cleanup stays readable
        path = folder / name
        if path.is_file():
            freed += path.stat().st_size
            path.unlink()
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return freed
