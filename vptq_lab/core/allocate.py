"""Spend an average bit budget where it matters: one candidate config per linear, least predicted cost.

Given, for every linear, a few candidates (a ladder of configs) with their exact bits per weight (all overhead)
and a predicted cost (how much quantizing the linear that way hurts the model), :func:`allocate` picks one
candidate per linear so that the size-weighted mean bits stay within the budget and the summed cost is least:
a multiple-choice knapsack, solved by dynamic programming over the budget cut into ``resolution`` steps,
each linear's bits rounded up to a step; its mean bits are then checked exactly against the budget, and the problem
solved again on a smaller capacity whenever that rounding let a choice over the budget: the choice is the best
within the budget up to that rounding (``resolution`` = 20,000 steps: a 50th of a percent of the budget).

    >>> pick = allocate({"a": [4.0, 1.0], "b": [9.0, 2.0]}, {"a": [2.0, 3.0], "b": [2.0, 3.0]}, {"a": 1, "b": 1}, 2.5)
    >>> pick.choice                      # the extra bit goes to b, whose cost it cuts most
    {'a': 0, 'b': 1}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Allocation", "allocate"]


@dataclass(frozen=True)
class Allocation:
    """``choice``: linear -> index of its candidate; ``bits``: the size-weighted mean bits per weight of the choice;
    ``cost``: its summed predicted cost."""

    choice: dict[str, int]
    bits: float
    cost: float


def allocate(
    costs: Mapping[str, Sequence[float]],
    bits: Mapping[str, Sequence[float]],
    sizes: Mapping[str, int],
    budget: float,
    resolution: int = 20_000,
) -> Allocation:
    """One candidate per linear minimising the summed ``costs`` with mean ``bits`` (weighted by ``sizes``, the
    linears' weight counts) at most ``budget``. Raises ValueError when even the cheapest candidates exceed it."""
    names = list(costs)
    if set(names) != set(bits) or set(names) != set(sizes):
        raise ValueError("costs, bits and sizes must name the same linears")
    total = float(sum(sizes[n] for n in names))
    cheapest = sum(min(bits[n]) * sizes[n] for n in names) / total
    if cheapest > budget + 1e-12:
        raise ValueError(
            f"budget {budget:.4f} bits per weight is below the cheapest candidates' {cheapest:.4f}: raise the "
            "budget to at least that, or add a cheaper config to the ladder"
        )
    step = budget * total / resolution  # bits per step of the budget
    weights = {n: [int(np.ceil(b * sizes[n] / step - 1e-9)) for b in bits[n]] for n in names}
    # Rounding up costs each linear at most one step, so a capacity of resolution + (one step per linear) admits
    # every choice within the budget; a solution the rounding let over it is solved again on less capacity.
    capacity = resolution + len(names)
    while True:
        choice, cost = _solve(names, costs, weights, capacity)
        mean = sum(bits[n][choice[n]] * sizes[n] for n in names) / total
        if mean <= budget + 1e-12:
            return Allocation(choice, mean, cost)
        capacity -= max(1, int(np.ceil((mean - budget) * total / step)))


def _solve(
    names: list[str], costs: Mapping[str, Sequence[float]], weights: dict[str, list[int]], capacity: int
) -> tuple[dict[str, int], float]:
    """The exact multiple-choice knapsack on integer weights: the least summed cost within ``capacity``."""
    best = np.full(capacity + 1, np.inf)  # least cost of the linears so far in exactly c steps
    best[0] = 0.0
    picks = []
    for n in names:
        options = np.full((len(costs[n]), capacity + 1), np.inf)
        for j, (w, c) in enumerate(zip(weights[n], costs[n])):
            if w <= capacity:
                options[j, w:] = best[: capacity + 1 - w] + c
        picks.append(options.argmin(0))
        best = options.min(0)
    if not np.isfinite(best).any():
        raise ValueError("no choice fits: the budget is below the cheapest candidates")
    c = int(np.argmin(best))
    choice = {}
    for n, pick in zip(reversed(names), reversed(picks)):
        choice[n] = int(pick[c])
        c -= weights[n][choice[n]]
    return {n: choice[n] for n in names}, float(sum(costs[n][choice[n]] for n in names))
