"""Several processes on one quantization: ``torch.distributed``, launched by ``torchrun``.

    torchrun --standalone --nproc-per-node 2 -m vptq_lab.cli quantize --model default --bits 2 --out q2

What is split, and how the result stays the one a single process gives (docs/scaling.md):

- **Calibration.** The batches of calibration windows are split into aligned subtrees of the pairwise tree that
  sums the Hessians (:func:`vptq_lab.model.hessian.subtree_layout`); each rank pushes only its own batches through
  the model. Each rank sums the raw ``Σ xᵀx`` of its subtrees in float64; rank 0 folds the subtree sums with the
  same tree and broadcasts the sum; the token counts are summed. Averaged Hessians are never reduced.
- **Linears.** The k-means of every codebook part, then the column loop of every linear, go to owner ranks by a
  deterministic longest-job-first bin packing on a cost model from the shapes (:func:`assign`). Owners broadcast
  the codebooks and the quantized weights, which every rank swaps in before pushing its windows forward.
- **Seeds** depend on the config and the codebook part only, never on the rank.

With one process none of this runs: ``World.size == 1`` is exactly the single-process code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from vptq_lab.errors import VPTQLabError
from vptq_lab.model.hessian import HessianAccumulator, PairwiseSum, padded_leaves, subtree_layout

__all__ = ["World", "Batches", "current_world", "init_distributed", "close_distributed", "assign", "DEFAULT_TIMEOUT_S"]

DEFAULT_TIMEOUT_S = 600.0  # a collective that waits longer than this fails instead of hanging


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size``, and the device its blocks run on."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    # Calibration batches --------------------------------------------------------------------------------
    def batches(self, num_batches: int) -> tuple[list[int], list[int]]:
        """(this rank's batch indices in order, the leaf counts of its subtrees) for ``num_batches`` batches."""
        mine, segments = [], []
        for j, (start, stop) in enumerate(subtree_layout(num_batches, self.size)):
            if j % self.size == self.rank:
                mine += range(start, stop)
                segments.append(stop - start)
        return mine, segments

    def reduce_hessian(self, acc: HessianAccumulator, num_batches: int) -> tuple[torch.Tensor, int]:
        """``(Σ xᵀx [in, in] float64 over every rank's batches, tokens)``: rank 0 folds the subtree sums in tree
        order and broadcasts the result, so every rank holds the bits one process would have summed."""
        if not self.distributed:
            return acc.sum, acc.tokens
        layout = subtree_layout(num_batches, self.size)
        leaves = padded_leaves(num_batches) // len(layout)  # per subtree
        shape = (acc.in_features, acc.in_features)
        own = iter(acc.subtrees)
        if self.main:
            total = PairwiseSum()
            for j in range(len(layout)):
                owner = j % self.size
                total.add(next(own) if owner == 0 else _recv_optional(shape, owner, acc.device), leaves)
            result = total.total()
            result = result if result is not None else torch.zeros(shape, dtype=torch.float64, device=acc.device)
        else:
            for _ in range(sum(1 for j in range(len(layout)) if j % self.size == self.rank)):
                _send_optional(next(own), 0, acc.device)
            result = torch.empty(shape, dtype=torch.float64, device=acc.device)
        dist.broadcast(result, src=0)
        tokens = torch.tensor([acc.tokens], dtype=torch.int64, device=acc.device)
        dist.all_reduce(tokens)
        return result, int(tokens.item())

    # Objects ---------------------------------------------------------------------------------------------
    def share(self, obj: Any, src: int) -> Any:
        """``obj`` as rank ``src`` holds it, on every rank (pickled: tensors should be on the CPU)."""
        if not self.distributed:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, device=self._comm_device)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on rank 0 (None elsewhere)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.size if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @property
    def _comm_device(self) -> torch.device | None:
        return self.device if dist.get_backend() == "nccl" else None


def _send_optional(x: torch.Tensor | None, dst: int, device: torch.device | str) -> None:
    flag = torch.tensor([0 if x is None else 1], dtype=torch.int64, device=device)
    dist.send(flag, dst)
    if x is not None:
        dist.send(x.contiguous(), dst)


def _recv_optional(shape: tuple[int, int], src: int, device: torch.device | str) -> torch.Tensor | None:
    flag = torch.empty(1, dtype=torch.int64, device=device)
    dist.recv(flag, src)
    if not int(flag.item()):
        return None
    x = torch.empty(shape, dtype=torch.float64, device=device)
    dist.recv(x, src)
    return x


def assign(costs: list[float], size: int) -> list[int]:
    """Owner rank per job: longest job first to the least-loaded rank (ties: lower job index, lower rank).
    Deterministic: every rank computes the same owners from the same costs."""
    load = [0.0] * size
    owner = [0] * len(costs)
    for job in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        rank = min(range(size), key=lambda r: (load[r], r))
        owner[job] = rank
        load[rank] += costs[job]
    return owner


def current_world(device: str | torch.device = "cpu") -> World:
    """The running job (or a one-process world) with ``device``: the device this rank's blocks run on."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), device)
    return World(0, 1, device)


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, or a clear error when it is not usable here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise VPTQLabError(f"--device {device!r} is not a device torch knows: use cpu or cuda") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VPTQLabError(
            f"--device {device}: this torch has no CUDA device ({torch.__version__}); "
            "use --device cpu, or install a CUDA build of torch on a machine with a GPU"
        )
    if dev.type not in ("cpu", "cuda"):
        raise VPTQLabError(f"--device {device}: only cpu and cuda are supported")
    return dev


def init_distributed(device: str | torch.device = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """Join the job ``torchrun`` describes in the environment (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``, ...):
    gloo on CPU, NCCL on CUDA (each rank on GPU ``LOCAL_RANK``). Without ``torchrun`` (or with one process) it
    returns the one-process world and initialises nothing. Every collective fails after ``timeout_s``."""
    dev = check_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return current_world(dev)
    if not dist.is_available():
        raise VPTQLabError("this torch build has no torch.distributed: run one process, or install a full torch")
    if dev.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dev = torch.device("cuda", torch.cuda.current_device())
    # The store torchrun describes, under a prefix per restart attempt: a restarted job must never read the
    # addresses its dead predecessors left there (seen with --max-restarts: connections refused for minutes).
    timeout = timedelta(seconds=timeout_s)
    store, rank, size = next(dist.rendezvous("env://", timeout=timeout))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.PrefixStore(f"vptq_lab/attempt_{attempt}/", store)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout)
    return current_world(dev)


def close_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class Batches:
    """The calibration batches of a (possibly multi-process) run: how many in all, and which this rank holds."""

    world: World
    total: int
    mine: tuple[int, ...]
    segments: tuple[int, ...]  # leaf counts of this rank's subtrees of the Hessian sum

    @classmethod
    def of(cls, world: World, num_batches: int) -> Batches:
        mine, segments = world.batches(num_batches)
        return cls(world, num_batches, tuple(mine), tuple(segments))
