"""How much quantizing each linear costs the model: a predicted KL per linear and candidate config, and its check.

A linear's quantization error ``ΔW`` changes its output by ``Δy = ΔW x``. To second order, the model's next-token
distribution moves (per token, KL to the unquantized model) by ``½ E[(gᵀ Δy)²]``, where ``g`` is the gradient of
the text's NLL with respect to the linear's output (the empirical Fisher). Keeping only its diagonal, and treating
``g`` and ``x`` as independent (the K-FAC approximation):

    predicted KL  ≈  ½ Σ_i G_i (ΔW H ΔWᵀ)_ii,    G_i = E[g_i²] per output channel,  H = E[x xᵀ].

So each linear is weighed by two statistics of the full-precision model on calibration text: ``H`` (as VPTQ
already collects it) and ``G`` (one backward pass per window, :func:`output_fisher`). :func:`sensitivity_table`
quantizes every linear with every candidate config (a ladder from about 1.4 to 4.5 bits) against its
full-precision ``H`` and records the prediction; :func:`measured_kl` quantizes one linear alone and measures the
held-out KL directly, to check the prediction's ranking.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from vptq_lab.core.bits import bits_per_weight
from vptq_lab.core.config import VPTQConfig
from vptq_lab.core.quantizer import vptq_quantize
from vptq_lab.core.qweight import dequantize
from vptq_lab.kernels.dispatch import prefer_backend
from vptq_lab.model.arch import arch_for, get_blocks, get_module, linear_role, linear_weight, set_module
from vptq_lab.model.layers import QuantizedLinear
from vptq_lab.model.logprobs import window_nll_kl
from vptq_lab.model.passes import capture_block_inputs, run_block, stage_hessians
from vptq_lab.model.threads import one_thread_workers

__all__ = ["linear_names", "output_fisher", "sensitivity_table", "measured_kl"]

log = logging.getLogger(__name__)


def linear_names(model: nn.Module) -> list[str]:
    """Every decoder-block linear's full name, in block and stage order."""
    spec = arch_for(model)
    blocks = get_blocks(model, spec)
    return [f"{spec.blocks}.{i}.{leaf}" for i in range(len(blocks)) for stage in spec.stages for leaf in stage]


def output_fisher(model: nn.Module, windows: torch.Tensor, progress: bool = True) -> dict[str, torch.Tensor]:
    """``G`` per linear: the mean over the windows' tokens of the squared gradient of the windows' summed
    next-token NLL with respect to the linear's output, float64 [out]. ``windows``: token ids [n, seqlen]."""
    names = linear_names(model)
    sums = {name: None for name in names}
    handles = []

    def watch(name: str):
        def hook(_module, _args, out):
            def collect(grad):
                g = grad.detach().double().pow(2).reshape(-1, grad.shape[-1]).sum(0)  # [out]
                sums[name] = g if sums[name] is None else sums[name] + g

            out.register_hook(collect)

        return hook

    for name in names:
        handles.append(get_module(model, name).register_forward_hook(watch(name)))
    embed = model.get_input_embeddings()
    handles.append(embed.register_forward_hook(lambda _m, _a, out: out.detach().requires_grad_()))
    was_training = model.training
    model.eval()
    tokens = 0
    try:
        with torch.enable_grad(), prefer_backend("torch"):
            for window in tqdm(windows, desc="output gradients", disable=not progress):
                logits = model(window[None]).logits[0]  # [seqlen, vocab]
                F.cross_entropy(logits[:-1].float(), window[1:], reduction="sum").backward()
                tokens += window.numel()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: s / tokens for name, s in sums.items()}


def _row_errors(W: torch.Tensor, Wq: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``diag(ΔW H ΔWᵀ)`` [out], float64."""
    dW = W.double() - Wq.double()  # [out, in]
    return ((dW @ H.double()) * dW).sum(1)


def _quantize_one(W: torch.Tensor, H: torch.Tensor, config: VPTQConfig, G: torch.Tensor) -> dict[str, float]:
    qw = vptq_quantize(W, H, config)
    errors = _row_errors(W, dequantize(qw), H)  # [out]
    return {
        "out": W.shape[0],
        "in": W.shape[1],
        "bits": bits_per_weight(config, tuple(W.shape), mode="paper").bits_per_weight,
        "proxy_loss_rel": qw.info["proxy_loss_rel"],
        "proxy_loss": float(errors.sum()),
        "predicted_kl": float(0.5 * (G.double() * errors).sum()),
    }


def sensitivity_table(
    model: nn.Module,
    calibration: torch.Tensor,
    fisher: dict[str, torch.Tensor],
    ladder: Sequence[tuple[str, VPTQConfig]],
    *,
    progress: bool = True,
    batch_size: int = 4,
    rows_file: str | Path | None = None,
) -> list[dict[str, Any]]:
    """One row per linear and rung of ``ladder`` (``(name, config)`` pairs): ``bits`` (all overhead), the relative
    and absolute proxy loss, and ``predicted_kl`` (module docstring), each linear quantized against the
    full-precision model's ``H`` on ``calibration`` [n, seqlen]. The model is not changed.

    ``rows_file``: a JSON-lines file the rows are appended to block by block; a rerun resumes after the last
    finished block (the file must come from the same model, calibration and ladder)."""
    spec = arch_for(model)
    blocks = get_blocks(model, spec)
    rows, done = _resume_rows(rows_file)
    inputs = capture_block_inputs(model, blocks[0], calibration, batch_size)
    bar = tqdm(total=len(blocks), desc="sensitivity", disable=not progress)
    with torch.no_grad(), prefer_backend("torch"):
        for i, block in enumerate(blocks):
            if i not in done:
                new = _block_rows(block, i, inputs, fisher, ladder, spec)
                _append_rows(rows_file, new)
                rows += new
            inputs = run_block(block, inputs) if i + 1 < len(blocks) else inputs
            bar.update()
    bar.close()
    return rows


def _block_rows(block, i, inputs, fisher, ladder, spec) -> list[dict[str, Any]]:
    hessians = stage_hessians(block, spec.stages, inputs)
    jobs = []
    for stage in spec.stages:
        H = hessians[stage[0]][0].float()
        for leaf in stage:
            full = f"{spec.blocks}.{i}.{leaf}"
            W = linear_weight(get_module(block, leaf), spec.transposed)
            jobs += [(full, leaf, rung, config, W, H) for rung, config in ladder]
    with one_thread_workers(torch.get_num_threads()) as pool:
        found = list(pool.map(lambda job: _quantize_one(job[4], job[5], job[3], fisher[job[0]]), jobs))
    return [
        {"linear": full, "block": i, "role": linear_role(leaf), "rung": rung, **values}
        for (full, leaf, rung, _, _, _), values in zip(jobs, found)
    ]


def _resume_rows(rows_file: str | Path | None) -> tuple[list[dict[str, Any]], set[int]]:
    if rows_file is None or not Path(rows_file).is_file():
        return [], set()
    rows = [json.loads(line) for line in Path(rows_file).read_text().splitlines() if line.strip()]
    return rows, {r["block"] for r in rows}


def _append_rows(rows_file: str | Path | None, rows: list[dict[str, Any]]) -> None:
    if rows_file is None:
        return
    Path(rows_file).parent.mkdir(parents=True, exist_ok=True)
    with Path(rows_file).open("a") as fh:  # a whole block's rows at once: a crash loses at most the block in flight
        fh.write("".join(json.dumps(r) + "\n" for r in rows))


@torch.no_grad()
def measured_kl(
    model: nn.Module,
    teacher: nn.Module,
    name: str,
    config: VPTQConfig,
    H: torch.Tensor,
    windows: torch.Tensor,
    quantize: Callable[..., Any] = vptq_quantize,
) -> float:
    """The mean per-token KL(teacher || model) on ``windows`` [n, seqlen] with only the linear ``name`` quantized
    by ``config`` against ``H``. ``model`` is restored before returning."""
    module = get_module(model, name)
    spec = arch_for(model)
    W = linear_weight(module, spec.transposed)
    quantized = QuantizedLinear(quantize(W, H.float(), config), getattr(module, "bias", None))
    set_module(model, name, quantized)
    try:
        with prefer_backend("torch"):
            kl = [window_nll_kl(model, teacher, w)[1] for w in windows]
    finally:
        set_module(model, name, module)
    return sum(kl) / len(kl)
