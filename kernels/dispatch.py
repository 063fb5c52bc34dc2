"""`vq_linear`: one entry point for every VQ matmul backend.

Backends (all take ``(x, QuantizedWeight)``, one contract for every backend):

- ``"reference"``: :func:`~.reference.vq_linear_ref`, unpacks on every call.
- ``"torch"``: dequantize once with the reference, cache the dense weight, then
  ``F.linear``. On CPU this makes a quantized model as fast as a dense one.
- ``"triton"``: the fused GEMV (few tokens) or the GEMM path (many tokens).
  Needs CUDA tensors, or ``TRITON_INTERPRET=1`` set before the first use.
- ``"auto"``: ``"triton"`` for CUDA tensors, ``"torch"`` otherwise.

``VPTQ_LAB_FORCE_REFERENCE=1`` in the environment makes every call use the
reference, whatever backend was asked for (useful to rule the kernels out).
``with prefer_backend("torch"):`` makes ``"auto"`` mean that backend inside the block
(quantization and distillation use it: many tokens per call, where a cached dense
weight is the fast path on every device).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import fields

import torch
import torch.nn.functional as F

from vptq_lab.core.qweight import QuantizedWeight

from .reference import dequant_ref, vq_linear_ref

__all__ = [
    "vq_linear", "dense_weight", "drop_dense_weight", "clear_dense_cache", "resolve_backend", "prefer_backend",
    "BACKENDS", "FORCE_REFERENCE_ENV",
]

BACKENDS = ("auto", "triton", "torch", "reference")
FORCE_REFERENCE_ENV = "VPTQ_LAB_FORCE_REFERENCE"

# id(qw) -> (fingerprint of qw's fields, {dtype: dense W [out, in]}); an entry is
# dropped when its QuantizedWeight is garbage-collected (weakref.finalize).
_DENSE_CACHE: dict[int, tuple[tuple, dict[torch.dtype, torch.Tensor]]] = {}


def _fingerprint(qw: QuantizedWeight) -> tuple:
    """Changes when a field is reassigned or a tensor is modified in place (``Tensor._version``)."""
    return tuple(
        (id(val), val.data_ptr(), val._version) if isinstance(val, torch.Tensor) else val
        for f in fields(qw) if f.name != "info" for val in [getattr(qw, f.name)]
    )


def dense_weight(qw: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Cached ``dequant_ref(qw)`` as ``[out, in]`` in ``dtype``, on qw's device.

    The cache is keyed on the object's identity and invalidated when any of its
    fields changes; it holds one dense copy per dtype until ``qw`` is deleted
    or :func:`clear_dense_cache` is called.
    """
    key, stamp = id(qw), _fingerprint(qw)
    entry = _DENSE_CACHE.get(key)
    if entry is None:
        weakref.finalize(qw, _DENSE_CACHE.pop, key, None)
    if entry is None or entry[0] != stamp:
        entry = _DENSE_CACHE[key] = (stamp, {})
    dense = entry[1]
    if dtype not in dense:
        with torch.no_grad():
            dense[dtype] = dequant_ref(qw).to(dtype)  # [out, in]
    return dense[dtype]


def drop_dense_weight(qw: QuantizedWeight) -> None:
    """Free ``qw``'s cached dense weights, if any (fine-tuning computes its own and never reads them)."""
    entry = _DENSE_CACHE.get(id(qw))
    if entry is not None:
        entry[1].clear()


def clear_dense_cache() -> None:
    """Free every cached dense weight."""
    for _, dense in _DENSE_CACHE.values():
        dense.clear()


_PREFERRED: ContextVar[str | None] = ContextVar("vptq_lab_preferred_backend", default=None)


@contextmanager
def prefer_backend(backend: str) -> Iterator[None]:
    """Inside the block, ``"auto"`` resolves to ``backend`` (the environment override still wins)."""
    if backend not in BACKENDS or backend == "auto":
        raise ValueError(f"backend must be one of {BACKENDS[1:]}, got {backend!r}")
    token = _PREFERRED.set(backend)
    try:
        yield
    finally:
        _PREFERRED.reset(token)


def resolve_backend(x: torch.Tensor, backend: str = "auto") -> str:
    """The backend ``vq_linear`` will use for ``x``: honours the env override, then "auto"."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if os.environ.get(FORCE_REFERENCE_ENV, "0").strip().lower() in {"1", "true", "on", "yes"}:
        return "reference"
    if backend == "auto":
        return _PREFERRED.get() or ("triton" if x.is_cuda else "torch")
    return backend


def _triton_linear(x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """Fused GEMV for up to ``gemv.MAX_TOKENS`` tokens, the GEMM path beyond."""
    from ._triton import check_device, require_triton

    require_triton()
    check_device(x.device)
    from .gemv import MAX_TOKENS, vq_gemv

    if x.numel() // x.shape[-1] <= MAX_TOKENS:
        return vq_gemv(x, qw, bias)
    from .gemm import vq_gemm

    return vq_gemm(x, qw, bias)


def vq_linear(x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None = None,
              backend: str = "auto") -> torch.Tensor:
    """``x @ W.T + bias`` for a VPTQ weight.

    x: ``[..., in]`` on qw's device; bias: ``[out]`` or None; backend: one of
    :data:`BACKENDS` (module docstring). Returns ``[..., out]`` in ``x.dtype``.
    """
    backend = resolve_backend(x, backend)
    if backend == "reference":
        return vq_linear_ref(x, qw, bias)
    if backend == "triton":
        return _triton_linear(x, qw, bias)
    # "torch": fp32 on CPU (half-precision CPU matmuls are slow), x's dtype on GPU.
    dtype = x.dtype if x.is_cuda else torch.float32
    y = F.linear(x.to(dtype), dense_weight(qw, dtype), None if bias is None else bias.to(dtype))  # [..., out]
    return y.to(x.dtype)
