"""`QuantizedWeight`: one linear's VPTQ weight, in the official checkpoint layout.

The tensors are exactly those of an official VPTQ layer (docs/algorithm.md, section 4), so
saving is a plain mapping. :func:`dequantize` is the pure-torch reference that
every kernel is checked against.

Shapes (``G`` = group_num, ``S`` = group_size, ``R = ceil(out / v)``,
``R0 = ceil(out / v0)``, ``O`` = outlier_size, ``B = b1 + b2``):

- ``centroids``          fp16  [G, k1 * v]
- ``res_centroids``      fp16  [G, k2 * v]            (or None)
- ``indices``            int32 [G, R, ceil(S * B / 32)]  packed merged codes
- ``outlier_centroids``  fp16  [1, k0 * v0]           (or None)
- ``outlier_indices``    int16 [1, R0, O]             uint16 bits, not packed
- ``perm``               int16 [in]                   uint16 bits; stored col j = original col perm[j]
- ``weight_scale``, ``weight_bias``  fp16 [in]        original column order (or None)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from vptq_lab.core.packing import index_bits, split_codes, unpack_codes

__all__ = ["QuantizedWeight", "dequantize", "gather_columns"]


@dataclass
class QuantizedWeight:
    out_features: int
    in_features: int
    vector_len: int  # v
    num_centroids: int  # k1
    num_res_centroids: int  # k2; 0 means no residual codebook
    group_num: int
    group_size: int  # S: columns per group (outlier columns excluded)
    outlier_size: int  # O: 0 means no outlier part
    outlier_vector_len: int  # v0; 0 when O == 0
    outlier_num_centroids: int  # k0; 0 when O == 0
    centroids: torch.Tensor
    indices: torch.Tensor
    res_centroids: torch.Tensor | None = None
    outlier_centroids: torch.Tensor | None = None
    outlier_indices: torch.Tensor | None = None
    perm: torch.Tensor | None = None
    weight_scale: torch.Tensor | None = None
    weight_bias: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)  # proxy losses, timings: not part of the file format

    @property
    def index_bits(self) -> tuple[int, int]:
        """(b1, b2): bits of the main and residual index."""
        return index_bits(self.num_centroids), index_bits(self.num_res_centroids)

    @property
    def num_rows(self) -> int:
        """R: vector rows, ``ceil(out / v)``."""
        return -(-self.out_features // self.vector_len)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The format tensors that are present, by their official names (minus the layer prefix)."""
        names = {
            "centroids": "centroids.weight",
            "res_centroids": "res_centroids.weight",
            "indices": "indices",
            "outlier_centroids": "outlier_centroids.weight",
            "outlier_indices": "outlier_indices",
            "perm": "perm",
            "weight_scale": "weight_scale",
            "weight_bias": "weight_bias",
        }
        return {
            names[f.name]: getattr(self, f.name)
            for f in fields(self)
            if f.name in names and getattr(self, f.name) is not None
        }

    def to(self, device: torch.device | str) -> QuantizedWeight:
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)

    def codes(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Unpacked (idx, res_idx), each int64 [G, R, S]."""
        b1, b2 = self.index_bits
        merged = unpack_codes(self.indices, b1 + b2, self.group_size)  # [G, R, S]
        return split_codes(merged, b1, b2)


def gather_columns(codebook: torch.Tensor, codes: torch.Tensor, v: int, out_features: int) -> torch.Tensor:
    """Look codes up in per-group codebooks and lay the vectors out as weight columns.

    codebook: [G, k * v]; codes: [G, R, S] (int). Returns fp32 [out_features, G * S],
    where code (g, r, s) fills rows r*v .. r*v+v-1 of column g*S + s.
    """
    g, r, s = codes.shape
    cb = codebook.float().reshape(g, -1, v)  # [G, k, v]
    # widen before expanding: widening the expanded view would write a full int64 [G, R*S, v] index
    vecs = torch.gather(cb, 1, codes.reshape(g, r * s, 1).long().expand(-1, -1, v))  # [G, R*S, v]
    vecs = vecs.reshape(g, r, s, v).permute(1, 3, 0, 2)  # [R, v, G, S]
    return vecs.reshape(r * v, g * s)[:out_features]  # [out, G*S]


def dequantize(qw: QuantizedWeight, codes: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> torch.Tensor:
    """Reference dequantization (docs/algorithm.md, section 4): returns fp32 W [out, in].

    ``codes``: ``qw.codes()`` unpacked once by the caller (fine-tuning dequantizes the same indices every step)."""
    idx, res_idx = qw.codes() if codes is None else codes  # [G, R, S] each
    w = gather_columns(qw.centroids, idx, qw.vector_len, qw.out_features)  # [out, G*S]
    if res_idx is not None:
        w = w + gather_columns(qw.res_centroids, res_idx, qw.vector_len, qw.out_features)
    if qw.outlier_size:
        oidx = qw.outlier_indices.to(torch.int64) & 0xFFFF  # [1, R0, O]
        wo = gather_columns(qw.outlier_centroids, oidx, qw.outlier_vector_len, qw.out_features)  # [out, O]
        w = torch.cat([wo, w], dim=1)  # outlier columns first: [out, in]
    if qw.perm is not None:
        perm = qw.perm.to(torch.int64) & 0xFFFF  # [in]
        w = w[:, torch.argsort(perm)]  # back to the original column order
    if qw.weight_scale is not None:
        w = w * qw.weight_scale.float() + qw.weight_bias.float()  # per input column
    return w
