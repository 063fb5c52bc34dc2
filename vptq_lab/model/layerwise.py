"""Layer-wise fine-tuning (paper §4): after a block is quantized, its codebooks and norm weights train so that its
outputs match the full-precision block's (MSE, Adam) on the calibration inputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vptq_lab.model.arch import ArchSpec, get_module
from vptq_lab.model.layers import QuantizedLinear
from vptq_lab.model.passes import Captured, first_output, hidden_states, run_block

__all__ = ["finetune_block"]


def _take_rows(value: Any, rows: torch.Tensor, batch: int) -> Any:
    """``value`` restricted to batch ``rows``: tensors whose first dim is the batch (> 1) are indexed,
    broadcast ones (first dim 1, e.g. rotary cos/sin, position ids) and non-tensors pass through."""
    if isinstance(value, torch.Tensor):
        return value[rows] if value.dim() > 0 and value.shape[0] == batch > 1 else value
    if isinstance(value, (tuple, list)):
        return type(value)(_take_rows(v, rows, batch) for v in value)
    return value


def _sub_batch(args: tuple, kwargs: dict, target: torch.Tensor, size: int, gen: torch.Generator):
    """A random ``size``-sequence slice of one captured batch (the whole batch when ``size`` is 0 or larger)."""
    batch = target.shape[0]
    if size <= 0 or size >= batch:
        return args, kwargs, target
    rows = torch.randperm(batch, generator=gen)[:size]
    return (_take_rows(args, rows, batch), {k: _take_rows(v, rows, batch) for k, v in kwargs.items()}, target[rows])


def finetune_block(
    block: nn.Module,
    inputs: Captured,
    targets: list[torch.Tensor],
    spec: ArchSpec,
    steps: int,
    lr: float,
    seed: int,
    batch: int = 0,
) -> dict[str, float]:
    """Train the block's centroids and norm weights so its outputs match ``targets`` (MSE, Adam).

    Each step takes one captured batch at random; ``batch`` > 0 keeps that many of its sequences
    (cheaper steps: the cost of a step is linear in the tokens it sees).
    """
    qlinears = [m for m in block.modules() if isinstance(m, QuantizedLinear)]
    norms = [get_module(block, n) for n in spec.norms if _has(block, n)]
    params = [p for q in qlinears for p in q.trainable_centroids()]
    norm_params = [m.weight for m in norms if getattr(m, "weight", None) is not None]
    flags = [p.requires_grad for p in norm_params]
    for p in norm_params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params + norm_params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    before = _block_mse(block, inputs, targets)
    try:
        for _ in range(steps):
            i = int(torch.randint(len(inputs), (1,), generator=gen))
            args, kwargs, target = _sub_batch(*inputs[i], targets[i], batch, gen)
            with torch.enable_grad():
                loss = nn.functional.mse_loss(first_output(block(*args, **kwargs)), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
    finally:
        for q in qlinears:
            q.commit_centroids()
        for p, flag in zip(norm_params, flags):
            p.requires_grad_(flag)
            p.grad = None
    return {
        "mse_before": before,
        "mse_after": _block_mse(block, inputs, targets),
        "steps": steps,
        "sequences_per_step": batch or int(targets[0].shape[0]),
    }


def _has(root: nn.Module, dotted: str) -> bool:
    try:
        get_module(root, dotted)
    except AttributeError:
        return False
    return True


@torch.no_grad()
def _block_mse(block: nn.Module, inputs: Captured, targets: list[torch.Tensor]) -> float:
    outs = hidden_states(run_block(block, inputs))
    return float(sum(nn.functional.mse_loss(o, t) for o, t in zip(outs, targets)) / len(outs))
