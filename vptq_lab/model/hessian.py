"""Hessian collection: forward hooks that accumulate ``H = E[x xᵀ]`` per linear, in float64.

The hooks live only inside :func:`hessian_hooks`, so a failed or re-run notebook
cell can never leave a hook behind that counts twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["HessianAccumulator", "hessian_hooks"]


class HessianAccumulator:
    """Running ``Σ xᵀx`` (float64) over the rows fed to one linear, and their count."""

    def __init__(self, in_features: int, device: torch.device | str = "cpu"):
        self.sum = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)  # [in, in]
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        """x: [..., in]. Each batch's product is formed in fp32 and added in float64."""
        rows = x.detach().reshape(-1, x.shape[-1]).float()  # [tokens, in]
        self.sum += (rows.t() @ rows).double()  # [in, in]
        self.tokens += rows.shape[0]

    def hessian(self) -> torch.Tensor:
        """``E[x xᵀ]`` [in, in], float64. All zeros when nothing was seen (the quantizer damps it)."""
        return self.sum / max(self.tokens, 1)


@contextmanager
def hessian_hooks(modules: Mapping[str, nn.Module]) -> Iterator[dict[str, HessianAccumulator]]:
    """Accumulate the inputs of each named module while the context is open.

    Modules must have ``in_features`` or a Conv1D-style ``weight`` [in, out]. Yields name -> accumulator.
    """
    accs, handles = {}, []
    try:
        for name, module in modules.items():
            n_in = getattr(module, "in_features", None) or module.weight.shape[0]
            acc = accs[name] = HessianAccumulator(n_in, module.weight.device)
            handles.append(module.register_forward_hook(lambda _m, args, _out, acc=acc: acc.add(args[0])))
        yield accs
    finally:
        for handle in handles:
            handle.remove()
