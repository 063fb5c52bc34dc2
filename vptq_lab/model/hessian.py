"""Hessian collection: forward hooks that accumulate ``H = E[x xᵀ]`` per linear, in float64.

The hooks live only inside :func:`hessian_hooks`, so a failed or re-run notebook
cell can never leave a hook behind that counts twice.

The per-batch products ``xᵀx`` are summed as a *pairwise tree over the batch index* (leaves padded to a power of
two), not one after another. Float addition is not associative, so the order of the sum is part of the result;
a fixed tree makes it independent of how many processes share the batches: under ``torchrun`` each rank owns
whole aligned subtrees (:func:`subtree_layout`), sums them exactly as one process would, and the subtree sums are
folded by the same tree (:mod:`vptq_lab.model.distributed`). One process and N processes give the same bits.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["HessianAccumulator", "PairwiseSum", "gram", "hessian_hooks", "padded_leaves", "subtree_layout"]


class PairwiseSum:
    """The pairwise-tree sum of a sequence of tensors, kept as a binary counter (at most log2(n) + 1 partial sums).

    Adding leaves ``x0, x1, ...`` and reading :meth:`total` gives the root of the balanced binary tree over the
    leaves padded with empty ones to a power of two; an empty subtree adds nothing (``a + empty = a``, exactly).
    The same object folds subtree sums, so a sum split into aligned subtrees folds to the same bits.
    """

    def __init__(self) -> None:
        self._stack: list[tuple[int, torch.Tensor | None]] = []  # (leaves covered, partial sum or None if empty)

    def add(self, x: torch.Tensor | None, leaves: int = 1) -> None:
        """Add a leaf (or an aligned subtree of ``leaves`` leaves, a power of two; None: all empty)."""
        self._stack.append((leaves, x))
        while len(self._stack) > 1 and self._stack[-1][0] == self._stack[-2][0]:
            (n, b), (_, a) = self._stack.pop(), self._stack.pop()
            self._stack.append((2 * n, _plus(a, b)))

    def total(self) -> torch.Tensor | None:
        """The root: the partial sums folded right to left (the padded tree's upper levels). None if empty."""
        acc = None
        for _, x in reversed(self._stack):
            acc = _plus(x, acc)
        return acc


def _plus(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


def padded_leaves(n: int) -> int:
    """The leaves of the pairwise tree over ``n`` items: ``n`` padded to a power of two (1 for 0 or 1)."""
    return 1 << max(n - 1, 0).bit_length()


def subtree_layout(num_batches: int, world_size: int) -> list[tuple[int, int]]:
    """How ``num_batches`` batches split into aligned subtrees of the pairwise tree, one or more per rank.

    Returns ``(first_batch, stop_batch)`` per subtree, in order; subtree ``j`` belongs to rank ``j % world_size``.
    The leaves are padded to ``P = 2^ceil(log2 num_batches)`` and the tree is cut at the level with at least
    ``world_size`` nodes (or at the leaves), so every subtree is a node of the same tree whatever the world size.
    """
    padded = padded_leaves(num_batches)  # P
    parts = min(padded, padded_leaves(world_size))
    size = padded // parts
    return [(min(j * size, num_batches), min((j + 1) * size, num_batches)) for j in range(parts)]


GRAM_BLOCK = 512  # columns per block of the symmetric product


def gram(rows: torch.Tensor, block: int = GRAM_BLOCK) -> torch.Tensor:
    """``rowsᵀ rows`` [in, in] of rows [tokens, in], computing only the blocks on and below the diagonal and
    mirroring them: about 2/3 of the matmul work for 1536 columns. Each entry is the same dot product over the
    tokens that the whole matmul forms, so the result is bit-identical to ``rows.t() @ rows`` (checked in
    tests/test_calibrate.py)."""
    n = rows.shape[1]
    if n <= block:
        return rows.t() @ rows
    out = torch.empty(n, n, dtype=rows.dtype, device=rows.device)
    for i in range(0, n, block):
        for j in range(0, i + 1, block):
            piece = rows[:, i : i + block].t() @ rows[:, j : j + block]  # [b_i, b_j]
            out[i : i + block, j : j + block] = piece
            if i != j:
                out[j : j + block, i : i + block] = piece.t()
    return out


class HessianAccumulator:
    """``Σ xᵀx`` (float64) over the rows fed to one linear, and their count.

    Each call (one calibration batch) is a leaf: its product is formed in fp32 and summed in float64 by the
    pairwise tree. ``segments``: the leaf counts of the aligned subtrees this process owns, in the order its
    batches arrive (default: one subtree holding every batch, the single-process case).
    """

    def __init__(
        self, in_features: int, device: torch.device | str = "cpu", segments: Sequence[int] | None = None
    ) -> None:
        self.in_features, self.device = in_features, device
        self.segments = list(segments) if segments is not None else None
        self.tokens = 0
        self.subtrees: list[torch.Tensor | None] = []  # the sums of the finished subtrees
        self._open = PairwiseSum()
        self._in_open = 0
        if self.segments is not None:
            self._close_empty()

    def add(self, x: torch.Tensor) -> None:
        """x: [..., in], one batch."""
        rows = x.detach().reshape(-1, x.shape[-1]).float()  # [tokens, in]
        self._open.add(gram(rows).double())  # [in, in]
        self.tokens += rows.shape[0]
        self._in_open += 1
        if self.segments is not None:
            if not self.segments:
                raise RuntimeError("more calibration batches reached this linear than the subtree layout holds")
            if self._in_open == self.segments[0]:
                self._finish()

    def _finish(self) -> None:
        self.subtrees.append(self._open.total())
        self._open, self._in_open = PairwiseSum(), 0
        self.segments.pop(0)
        self._close_empty()

    def _close_empty(self) -> None:
        while self.segments and self.segments[0] == 0:
            self.subtrees.append(None)
            self.segments.pop(0)

    @property
    def sum(self) -> torch.Tensor:
        """The pairwise sum of every batch seen (single process), [in, in] float64; zeros when nothing was seen."""
        total = self._open.total()
        return (
            total
            if total is not None
            else torch.zeros(self.in_features, self.in_features, dtype=torch.float64, device=self.device)
        )

    def hessian(self) -> torch.Tensor:
        """``E[x xᵀ]`` [in, in], float64. All zeros when nothing was seen (the quantizer damps it)."""
        return self.sum / max(self.tokens, 1)


@contextmanager
def hessian_hooks(
    modules: Mapping[str, nn.Module], segments: Sequence[int] | None = None
) -> Iterator[dict[str, HessianAccumulator]]:
    """Accumulate the inputs of each named module while the context is open.

    Modules must have ``in_features`` or a Conv1D-style ``weight`` [in, out]. Yields name -> accumulator.
    ``segments``: see :class:`HessianAccumulator` (multi-process runs).
    """
    accs, handles = {}, []
    try:
        for name, module in modules.items():
            n_in = getattr(module, "in_features", None) or module.weight.shape[0]
            acc = accs[name] = HessianAccumulator(n_in, module.weight.device, segments)
            # a pre-hook: the input is all H needs, and a pass that stops at this linear then skips its matmul
            handles.append(module.register_forward_pre_hook(lambda _m, args, acc=acc: acc.add(args[0])))
        yield accs
    finally:
        for handle in handles:
            handle.remove()
