"""Running one decoder block on captured calibration inputs: the passes that quantization makes.

``capture_block_inputs`` records block 0's inputs for every calibration batch; ``run_block`` feeds them through a
block to get the next block's inputs; ``stage_hessians`` runs a block until the first linear of each stage has seen
its input, collecting each one's ``H``; ``ReplayQuantized`` spares the later passes of a block the linears that
earlier stages quantized.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from vptq_lab.errors import VPTQLabError
from vptq_lab.model.arch import arch_for, get_blocks, get_module, linear_weight
from vptq_lab.model.distributed import Batches
from vptq_lab.model.hessian import hessian_hooks
from vptq_lab.model.layers import QuantizedLinear

__all__ = [
    "Captured",
    "capture_block_inputs",
    "run_block",
    "first_output",
    "hidden_states",
    "to_device",
    "ReplayQuantized",
    "stage_hessians",
    "block_hessians",
    "input_energies",
]


class _StopForward(Exception):
    """Raised by the capture hook once block 0's inputs are recorded."""


Captured = list[tuple[tuple, dict]]  # per calibration batch: (args, kwargs) of block 0's forward


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, block: nn.Module, calibration: torch.Tensor, batch_size: int = 4
) -> Captured:
    """Run the model on ``calibration`` [n, seqlen] until block 0, and keep that block's inputs."""
    captured: Captured = []

    def hook(_module, args, kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value", "layer_past")}
        captured.append((args, kwargs))
        raise _StopForward

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for start in range(0, calibration.shape[0], batch_size):
            try:
                model(calibration[start : start + batch_size].to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` (tensors, nested in tuples, lists and dicts) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def first_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def run_block(block: nn.Module, inputs: Captured) -> Captured:
    """Feed every captured batch through ``block``; returns the next block's inputs."""
    return [((first_output(block(*args, **kwargs)),) + tuple(args[1:]), kwargs) for args, kwargs in inputs]


def hidden_states(captured: Captured) -> list[torch.Tensor]:
    return [args[0] if args else kwargs["hidden_states"] for args, kwargs in captured]


class ReplayQuantized:
    """Within one block's quantization (quantized propagation), every stage's pass re-runs the block from its
    inputs, and a final pass makes the next block's inputs. A linear quantized in an earlier stage sees the same
    input in each later pass (its input depends only on the stages before it, quantized before it), so its output is
    recorded the first time it runs quantized and replayed after: q/k/v/o are computed once instead of four times,
    gate/up twice instead of three. Each replay is checked against the input it came from (``torch.equal``; a
    mismatch recomputes), so what a pass computes never depends on this. Close it before the block trains.

    ``batches``: the captured batches each pass runs, in order (a linear is reached in every batch of a pass or in
    none, so its call count modulo ``batches`` is the batch).
    """

    def __init__(self, block: nn.Module, batches: int):
        self.block, self.batches = block, batches
        self.seen: dict[QuantizedLinear, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # (input, output) per batch
        self.calls: dict[QuantizedLinear, int] = {}
        self.handle = block.register_forward_pre_hook(self._wrap_new)

    def _wrap_new(self, *_: Any) -> None:
        for module in self.block.modules():
            if isinstance(module, QuantizedLinear) and module not in self.seen:
                self.seen[module], self.calls[module] = [], 0
                module.forward = functools.partial(self._forward, module)  # the instance's, until close()

    def _forward(self, module: QuantizedLinear, x: torch.Tensor) -> torch.Tensor:
        batch = self.calls[module] % self.batches
        self.calls[module] += 1
        seen = self.seen[module]
        if batch < len(seen) and torch.equal(seen[batch][0], x):
            return seen[batch][1]
        out = QuantizedLinear.forward(module, x)
        if batch < len(seen):
            seen[batch] = (x, out)
        else:
            seen.append((x, out))
        return out

    def close(self) -> None:
        self.handle.remove()
        for module in self.seen:
            module.__dict__.pop("forward", None)
        self.seen.clear()


def stage_hessians(
    block: nn.Module, stages: Iterable[tuple[str, ...]], inputs: Captured, batches: Batches | None = None
) -> dict[str, tuple]:
    """Hessians of the first linear of each stage (shared by the stage), in one pass over the inputs.

    The pass stops as soon as the last of those linears has seen its input (before its matmul): the rest of the
    block would only be thrown away. ``batches``: in a multi-process run, this rank's share; the sums are
    reduced over the ranks (:meth:`World.reduce_hessian`).
    """
    firsts = {stage[0]: get_module(block, stage[0]) for stage in stages}
    split = batches is not None and batches.world.distributed
    with hessian_hooks(firsts, batches.segments if split else None) as accs, torch.no_grad():
        stop = list(firsts.values())[-1].register_forward_pre_hook(_raise_stop)  # after H's hook: it sees the input
        try:
            for args, kwargs in inputs:
                try:
                    block(*args, **kwargs)
                except _StopForward:
                    pass
        finally:
            stop.remove()
    if not split:
        return {name: (acc.hessian(), acc.tokens) for name, acc in accs.items()}
    out = {}
    for name, acc in accs.items():
        total, tokens = batches.world.reduce_hessian(acc, batches.total)
        out[name] = (total / max(tokens, 1), tokens)
    return out


def _raise_stop(*_: Any) -> None:
    raise _StopForward


@torch.no_grad()
def block_hessians(
    model: nn.Module, calibration: torch.Tensor, block_index: int, batch_size: int = 4
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{linear: (W [out, in] fp32, H [in, in] fp32)}`` for every linear of one decoder block.

    H comes from the full-precision model's activations on ``calibration`` [n, seqlen] (the official
    VPTQ way), so one layer can be studied without quantizing the blocks before it.
    """
    spec = arch_for(model)
    blocks = get_blocks(model, spec)
    if not 0 <= block_index < len(blocks):
        raise VPTQLabError(f"block_index {block_index} is out of range: the model has {len(blocks)} blocks")
    inputs = capture_block_inputs(model, blocks[0], calibration, batch_size)
    for block in blocks[:block_index]:
        inputs = run_block(block, inputs)
    block = blocks[block_index]
    hessians = stage_hessians(block, spec.stages, inputs)
    return {
        name: (linear_weight(get_module(block, name), spec.transposed), hessians[stage[0]][0].float())
        for stage in spec.stages
        for name in stage
    }


@torch.no_grad()
def input_energies(
    blocks: list[nn.Module], inputs: Captured, names: Iterable[str], keep: Iterable[int] = ()
) -> tuple[dict[tuple[int, str], torch.Tensor], dict[int, Captured]]:
    """diag(H) = E[x_j²] of the input of each linear in ``names`` (paths within a block, e.g. ``self_attn.q_proj``)
    in every block, without forming any H: a cheap survey of where the input energy concentrates. The blocks run
    as they are, from block 0's captured ``inputs`` (:func:`capture_block_inputs`). Returns ``{(block, name): [in]
    float64}`` and the captured inputs of the blocks in ``keep`` (``{block: Captured}``), for a closer look."""
    names, keep = list(names), set(keep)
    sums: dict[tuple[int, str], tuple[torch.Tensor, int]] = {}
    kept: dict[int, Captured] = {}

    def watch(key: tuple[int, str]):
        def add(_module: nn.Module, args: tuple) -> None:
            xs = args[0].reshape(-1, args[0].shape[-1]).double()  # [tokens, in]
            total, tokens = sums.get(key, (torch.zeros(xs.shape[1], dtype=torch.float64), 0))
            sums[key] = (total + (xs * xs).sum(0), tokens + xs.shape[0])

        return add

    handles = []
    try:
        for b, block in enumerate(blocks):
            handles += [get_module(block, name).register_forward_pre_hook(watch((b, name))) for name in names]
        for b, block in enumerate(blocks):
            if b in keep:
                kept[b] = inputs
            inputs = run_block(block, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {key: total / tokens for key, (total, tokens) in sums.items()}, kept
