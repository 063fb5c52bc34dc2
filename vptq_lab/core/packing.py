"""Bit packing of VQ indices in the official VPTQ layout.

A row of ``S`` codes, each ``B`` bits wide, is written LSB-first into a stream
of 32-bit words: code ``c`` occupies bits ``[c*B, (c+1)*B)`` of the stream, and
the row is zero-padded to a whole word. With a residual codebook the code is
the merged value ``idx | (res_idx << b1)``.

Worked example (B=3, codes [5, 1, 7]): the stream is 101 | 100 | 111 read from
bit 0 upwards, i.e. the word 0b111_001_101 = 461.
"""

from __future__ import annotations

import math

import torch

__all__ = ["packed_words", "pack_codes", "unpack_codes", "merge_codes", "split_codes", "index_bits", "as_int16_bits"]


def index_bits(num_centroids: int) -> int:
    """Bits of one index into a codebook of ``num_centroids`` entries (0 when there is none)."""
    if num_centroids <= 1:
        return 0
    return int(math.ceil(math.log2(num_centroids)))


def packed_words(num_codes: int, bits: int) -> int:
    """Number of int32 words that hold ``num_codes`` codes of ``bits`` bits."""
    return -(-num_codes * bits // 32)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack the last axis of ``codes`` into int32 words.

    codes: integer tensor ``[..., S]`` with values in ``[0, 2**bits)``.
    Returns int32 ``[..., ceil(S*bits/32)]`` (the uint32 bit pattern, wrapped).
    """
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in 1..32, got {bits}")
    codes = codes.to(torch.int64)
    if codes.numel() and (codes.min() < 0 or codes.max() >= 1 << bits):
        raise ValueError(f"codes out of range for {bits} bits: min {int(codes.min())}, max {int(codes.max())}")
    *lead, s = codes.shape
    nwords = packed_words(s, bits)
    shifts = torch.arange(bits, device=codes.device)
    stream = ((codes.unsqueeze(-1) >> shifts) & 1).to(torch.uint8)  # [..., S, B]
    stream = stream.reshape(*lead, s * bits)  # [..., S*B], bit 0 of code 0 first
    stream = torch.nn.functional.pad(stream, (0, nwords * 32 - s * bits))  # [..., W*32]
    stream = stream.reshape(*lead, nwords, 32).to(torch.int64)  # [..., W, 32]
    words = (stream << torch.arange(32, device=codes.device)).sum(-1)  # [..., W] in [0, 2**32)
    words = torch.where(words >= 1 << 31, words - (1 << 32), words)  # uint32 bits as int32
    return words.to(torch.int32)


def unpack_codes(words: torch.Tensor, bits: int, num_codes: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: int32 ``[..., W]`` -> int64 codes ``[..., num_codes]``."""
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in 1..32, got {bits}")
    *lead, nwords = words.shape
    if nwords != packed_words(num_codes, bits):
        raise ValueError(
            f"{nwords} words cannot hold {num_codes} codes of {bits} bits (expected {packed_words(num_codes, bits)})"
        )
    w = words.to(torch.int64) & 0xFFFFFFFF  # [..., W]
    stream = (w.unsqueeze(-1) >> torch.arange(32, device=words.device)) & 1  # [..., W, 32]
    stream = stream.reshape(*lead, nwords * 32)[..., : num_codes * bits]  # [..., S*B]
    stream = stream.reshape(*lead, num_codes, bits)  # [..., S, B]
    return (stream << torch.arange(bits, device=words.device)).sum(-1)  # [..., S]


def merge_codes(idx: torch.Tensor, res_idx: torch.Tensor | None, b1: int) -> torch.Tensor:
    """Official merged code: ``idx | (res_idx << b1)``; just ``idx`` without a residual."""
    idx = idx.to(torch.int64)
    if res_idx is None:
        return idx
    return idx | (res_idx.to(torch.int64) << b1)


def split_codes(merged: torch.Tensor, b1: int, b2: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inverse of :func:`merge_codes`: returns ``(idx, res_idx or None)``."""
    idx = merged & ((1 << b1) - 1)
    if b2 == 0:
        return idx, None
    return idx, (merged >> b1) & ((1 << b2) - 1)


def as_int16_bits(values: torch.Tensor) -> torch.Tensor:
    """Integers in [0, 65536) -> int16 holding the same uint16 bit pattern (the official outlier-index and perm
    convention: torch has no uint16 arithmetic, so 40000 is stored as 40000 - 65536)."""
    values = values.to(torch.int64)
    return torch.where(values >= 1 << 15, values - (1 << 16), values).to(torch.int16)
