"""Exact bit accounting for VPTQ layers (docs/algorithm.md, section 3).

Two modes:

- ``"paper"``: the formula of the paper's appendix C.2. Index bits are
  ``out * in_outlier * log2(k0) / v0 + out * in_rest * (log2 k1 + log2 k2) / v``
  with ``in_outlier = npercent% * in`` (fractional, no padding); codebooks
  ``16 * v0*k0 + 16 * v*(k1 + k2) * group_num`` (one outlier codebook per
  linear, a main and a residual one per group); plus 16 bits per input column
  for each of scale and bias (``enable_norm``) and perm (``enable_perm``).
- ``"stored"``: the bits of the official file: int32 index words with each
  row padded to a word, int16 unpacked outlier indices, fp16 codebooks, fp16
  scale/bias and an int16 perm (stored whenever act-order or outliers ask
  for one), with rows padded to a multiple of v.

Worked check (§2.2): 4096x4096, v=8, k=256 costs 4096*4096 index bits plus
16*8*256 codebook bits = 1.00195 bits/weight, a compression of 15.97x.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Literal

from vptq_lab.core.config import VPTQConfig, layer_plan
from vptq_lab.core.packing import index_bits, packed_words

__all__ = ["BitBreakdown", "BitCounts", "bits_per_weight", "model_bits", "size_weighted_mean"]

Mode = Literal["paper", "stored"]


class BitCounts:
    """Arithmetic shared by bit breakdowns (this one and ``scalar.ScalarBits``).

    Every dataclass field except ``num_weights`` counts bits; they are summed in field order.
    """

    @property
    def total_bits(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self) if f.name != "num_weights")

    @property
    def bits_per_weight(self) -> float:
        return self.total_bits / self.num_weights if self.num_weights else 0.0

    @property
    def compression(self) -> float:
        """Ratio to fp16."""
        return 16.0 / self.bits_per_weight if self.bits_per_weight else math.inf

    def __add__(self, other):
        return type(self)(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "total_bits": self.total_bits, "bits_per_weight": self.bits_per_weight}


@dataclass(frozen=True)
class BitBreakdown(BitCounts):
    """Bits of one layer (or a sum of layers), by where they go."""

    index_bits: float = 0.0
    codebook_bits: float = 0.0
    outlier_index_bits: float = 0.0
    outlier_codebook_bits: float = 0.0
    norm_bits: float = 0.0  # weight_scale + weight_bias
    perm_bits: float = 0.0
    num_weights: int = 0


def _overhead(config: VPTQConfig, n_in: int, perm_stored: bool) -> dict[str, float]:
    return {"norm_bits": 2 * 16 * n_in if config.enable_norm else 0, "perm_bits": 16 * n_in if perm_stored else 0}


def _paper_bits(config: VPTQConfig, n_out: int, n_in: int) -> BitBreakdown:
    v0, v = config.vector_lens
    k0, k1 = config.num_centroids
    k2 = config.k2
    frac = config.npercent / 100
    b_main = math.log2(k1) + (math.log2(k2) if k2 else 0.0)
    out = {
        "index_bits": n_out * n_in * (1 - frac) * b_main / v,
        "codebook_bits": 16 * v * (k1 + k2) * config.group_num,
        "outlier_index_bits": n_out * n_in * frac * math.log2(k0) / v0 if frac else 0.0,
        "outlier_codebook_bits": 16 * v0 * k0 if frac else 0.0,
    }
    return BitBreakdown(**out, **_overhead(config, n_in, config.enable_perm), num_weights=n_out * n_in)


def _stored_bits(config: VPTQConfig, n_out: int, n_in: int) -> BitBreakdown:
    outlier, groups, group_size = layer_plan(config, n_in)
    v0, v = config.vector_lens
    k0, k1 = config.num_centroids
    k2 = config.k2
    rows = -(-n_out // v)  # R = ceil(out / v)
    b = index_bits(k1) + index_bits(k2)
    out = {
        "index_bits": 32 * groups * rows * packed_words(group_size, b),
        "codebook_bits": 16 * groups * v * (k1 + k2),
        "outlier_index_bits": 16 * -(-n_out // v0) * outlier if outlier else 0,
        "outlier_codebook_bits": 16 * v0 * k0 if outlier else 0,
    }
    perm_stored = config.enable_perm or outlier > 0
    return BitBreakdown(**out, **_overhead(config, n_in, perm_stored), num_weights=n_out * n_in)


def bits_per_weight(config: VPTQConfig, shape: tuple[int, int], mode: Mode = "paper") -> BitBreakdown:
    """Bit breakdown of one ``(out, in)`` linear quantized with ``config``."""
    n_out, n_in = shape
    if n_out < 1 or n_in < 1:
        raise ValueError(f"shape={shape} must be a positive (out, in) pair")
    if mode == "paper":
        return _paper_bits(config, n_out, n_in)
    if mode == "stored":
        return _stored_bits(config, n_out, n_in)
    raise ValueError(f"mode={mode!r} must be 'paper' or 'stored'")


def model_bits(config: VPTQConfig, shapes: dict[str, tuple[int, int]], mode: Mode = "paper") -> BitBreakdown:
    """Total over named linears ``{name: (out, in)}``, each with its own codebooks."""
    total = BitBreakdown()
    for shape in shapes.values():
        total = total + bits_per_weight(config, shape, mode)
    return total


def size_weighted_mean(values: Iterable[tuple[float, tuple[int, int]]]) -> float:
    """The model average of a per-linear figure, each linear weighted by its size ``out * in``.

    ``values``: ``(figure, (out, in))`` pairs, e.g. each linear's bits per weight. This is how every
    model-level "bits per weight" in vptq_lab is formed. Returns 0.0 for no linears.
    """
    total = weights = 0
    for value, (out_features, in_features) in values:
        total += value * out_features * in_features
        weights += out_features * in_features
    return total / weights if weights else 0.0
