"""Triton plumbing shared by the kernel files: lazy import, interpreter, autotune timing.

Nothing here imports triton at module import time. On a machine without a GPU
the kernels run only under Triton's interpreter, which is chosen when a
``@triton.jit`` function is *defined*: ``TRITON_INTERPRET=1`` must be in
``os.environ`` before the first import of ``vptq_lab.kernels.dequant``,
``.gemv`` or ``.gemm`` (in a notebook: before the cell that first uses them).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import torch

__all__ = ["require_triton", "interpreter_enabled", "check_device", "autotune_do_bench", "interpreter_prune"]

_FIX_INTERPRET = (
    "set os.environ['TRITON_INTERPRET'] = '1' before vptq_lab.kernels' Triton modules are first imported "
    "(restart the Python kernel if they already were), or use backend='torch' / 'reference' on CPU"
)


def require_triton() -> ModuleType:
    """Import and return ``triton``, or raise an ImportError that says how to get it."""
    try:
        return importlib.import_module("triton")
    except ImportError as err:
        raise ImportError(
            "the Triton kernels need the `triton` package: pip install 'vptq-lab[triton]' "
            "(or use backend='torch' / 'reference')"
        ) from err


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET`` is set to a true value right now."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in {"1", "true", "on", "yes", "y"}


def _is_interpreted(kernel: Any) -> bool:
    """Whether a (possibly autotuned) jitted kernel was defined under the interpreter."""
    while hasattr(kernel, "fn") and not type(kernel).__name__.startswith("Interpreted"):
        kernel = kernel.fn
    return type(kernel).__name__.startswith("Interpreted")


def check_device(device: torch.device, kernel: Any | None = None) -> None:
    """Raise a RuntimeError naming the fix when Triton cannot run on ``device``.

    CUDA tensors always work (compiled, or slowly interpreted); anything else
    needs the interpreter. ``kernel`` (a jitted or autotuned function) is
    checked too when given, since the mode is fixed when it was defined.
    """
    if device.type == "cuda":
        return
    if not interpreter_enabled():
        raise RuntimeError(f"Triton kernels cannot run on {device.type} tensors without a GPU: {_FIX_INTERPRET}")
    if kernel is not None and not _is_interpreted(kernel):
        raise RuntimeError(f"the Triton kernels were compiled for the GPU, not interpreted: {_FIX_INTERPRET}")


def autotune_do_bench(kernel_call: Callable[[], Any], quantiles: Sequence[float]) -> list[float]:
    """``do_bench`` for ``@triton.autotune``: real timings on GPU, none under the interpreter.

    ``triton.testing.do_bench`` cannot time on CPU, and timing interpreted
    kernels would be meaningless, so under the interpreter every config scores 0
    and the first one (see :func:`interpreter_prune`) is used without running.
    """
    if interpreter_enabled():
        return [0.0] * len(quantiles)
    import triton.testing

    return triton.testing.do_bench(kernel_call, quantiles=list(quantiles), warmup=5, rep=20)


def interpreter_prune(configs: list, named_args: dict, **kwargs: Any) -> list:
    """``early_config_prune``: keep only the first config under the interpreter."""
    return configs[:1] if interpreter_enabled() else configs
