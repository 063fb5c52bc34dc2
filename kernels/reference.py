"""Pure-torch references for the VPTQ kernels.

Every Triton kernel in this package is tested against these functions. They
are slow (they unpack every index on each call) and exact: use them in
notebooks as the ground truth, and ``vq_linear(..., backend="torch")`` for speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vptq_lab.core.qweight import QuantizedWeight, dequantize

__all__ = ["dequant_ref", "vq_linear_ref"]


def dequant_ref(qw: QuantizedWeight) -> torch.Tensor:
    """Dense weight of ``qw``: fp32 ``[out, in]`` in the original column order."""
    return dequantize(qw)


def vq_linear_ref(x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T + bias`` with ``W = dequant_ref(qw)``.

    x: ``[..., in]``; bias: ``[out]`` or None. Computes in fp32 and returns
    ``[..., out]`` in ``x.dtype``.
    """
    w = dequant_ref(qw)  # [out, in]
    y = F.linear(x.float(), w, None if bias is None else bias.float())  # [..., out]
    return y.to(x.dtype)
