"""Random `QuantizedWeight`s for kernel tests and benchmarks.

Kernel speed and correctness do not depend on how the codes were found, so
tests build weights from uniformly random codes and Gaussian codebooks, packed
with the official layout (:mod:`vptq_lab.core.packing`).
"""

from __future__ import annotations

import torch

from vptq_lab.core.packing import as_int16_bits, index_bits, merge_codes, pack_codes
from vptq_lab.core.qweight import QuantizedWeight

__all__ = ["random_qweight"]


def random_qweight(
    out_features: int,
    in_features: int,
    v: int,
    k1: int,
    k2: int = 0,
    outlier_size: int = 0,
    v0: int | None = None,
    k0: int | None = None,
    group_num: int = 1,
    perm: bool = False,
    norm: bool = False,
    codebook_dtype: torch.dtype = torch.float16,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> QuantizedWeight:
    """A `QuantizedWeight` with random codes in the official packed layout.

    The ``in_features - outlier_size`` regular columns are split into
    ``group_num`` equal groups (it must divide them). ``v0``/``k0`` default to
    ``v``/``k1``. Codebooks are ``N(0, 1/in)`` so outputs stay O(1); with
    ``norm`` the per-column scale is in [0.5, 1.5) and the bias ``N(0, 0.01)``.
    Random numbers come from a CPU generator, so a seed gives the same weight
    on every device.
    """
    regular = in_features - outlier_size
    if regular <= 0 or regular % group_num:
        raise ValueError(f"{regular} regular columns cannot be split into {group_num} equal groups")
    gen = torch.Generator().manual_seed(seed)
    std = in_features ** -0.5
    rows = -(-out_features // v)  # R
    group_size = regular // group_num  # S
    b1 = index_bits(k1)
    idx = torch.randint(k1, (group_num, rows, group_size), generator=gen)  # [G, R, S]
    res_idx = torch.randint(k2, (group_num, rows, group_size), generator=gen) if k2 else None  # [G, R, S]
    merged = merge_codes(idx, res_idx, b1).to(device)  # packing is memory-hungry: do it where the weight goes
    packed = pack_codes(merged, b1 + index_bits(k2))  # [G, R, W]

    def codebook(n: int, k: int, dim: int) -> torch.Tensor:
        return (torch.randn(n, k * dim, generator=gen) * std).to(codebook_dtype)  # [n, k*dim]

    fields = dict(centroids=codebook(group_num, k1, v), indices=packed)
    if k2:
        fields["res_centroids"] = codebook(group_num, k2, v) * 0.25
    v0, k0 = (v0 or v, k0 or k1) if outlier_size else (0, 0)
    if outlier_size:
        rows0 = -(-out_features // v0)  # R0
        fields["outlier_centroids"] = codebook(1, k0, v0)
        fields["outlier_indices"] = as_int16_bits(torch.randint(k0, (1, rows0, outlier_size), generator=gen))
    if perm:
        fields["perm"] = as_int16_bits(torch.randperm(in_features, generator=gen))
    if norm:
        fields["weight_scale"] = (torch.rand(in_features, generator=gen) + 0.5).to(codebook_dtype)
        fields["weight_bias"] = (torch.randn(in_features, generator=gen) * 0.01).to(codebook_dtype)
    qw = QuantizedWeight(
        out_features=out_features, in_features=in_features, vector_len=v, num_centroids=k1,
        num_res_centroids=k2, group_num=group_num, group_size=group_size, outlier_size=outlier_size,
        outlier_vector_len=v0, outlier_num_centroids=k0, **fields,
    )
    return qw.to(device)
