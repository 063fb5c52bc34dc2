"""vptq_lab: a Jupyter-first workbench for VPTQ, vector post-training quantization of LLM weights.

The public API is this module's ``__all__``: everything a notebook or script needs to quantize a model,
evaluate it and save it in the official VPTQ layout::

    from vptq_lab import calibration_windows, load_model, load_wikitext2, perplexity, quantize_, recipe

    model, tokenizer = load_model("default")
    calib = calibration_windows(tokenizer, load_wikitext2("validation"), nsamples=32, seqlen=512)
    report = quantize_(model, recipe(2).quantize, calib)
    print(perplexity(model, tokenizer, max_windows=8).perplexity)

``recipe(bits)`` is the one place for tuned settings: the quantizer's config and the fine-tuning measured best at a
budget. ``run_recipe`` runs one whole (quantize, then distil from the unquantized model), as ``vptq-lab quantize``
does.

The package is layered, each layer importing only from the ones before it (``tests/test_architecture.py``
enforces this):

1. ``vptq_lab.errors``, ``vptq_lab.files``, ``vptq_lab.memory``: the error type, small file helpers, and the
   allocator setting that returns freed memory to the OS;
2. ``vptq_lab.core``: the pure algorithm (configs, bits, packing, k-means, the column loop, baselines);
3. ``vptq_lab.kernels``: Triton kernels with pure-torch references;
4. ``vptq_lab.model``: model surgery and calibration (``quantize_``, resume);
5. ``vptq_lab.io``: checkpoints, data, model loading;
6. ``vptq_lab.lab``: evaluation, comparison, bit budgets, plots and widgets;
7. ``vptq_lab.cli`` and ``vptq_lab.testing`` on top.

Names are imported on first use, so ``import vptq_lab`` stays cheap and does nothing else.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_API: dict[str, str] = {
    "VPTQLabError": "vptq_lab.errors",
    "VPTQConfig": "vptq_lab.core.config",
    "bits_per_weight": "vptq_lab.core.bits",
    "QuantizedWeight": "vptq_lab.core.qweight",
    "dequantize": "vptq_lab.core.qweight",
    "vptq_quantize": "vptq_lab.core.quantizer",
    "RTNConfig": "vptq_lab.core.scalar",
    "GPTQConfig": "vptq_lab.core.scalar",
    "METHODS": "vptq_lab.core.methods",
    "quantize_": "vptq_lab.model.calibrate",
    "QuantizationReport": "vptq_lab.model.calibrate",
    "QuantizedLinear": "vptq_lab.model.layers",
    "DistillConfig": "vptq_lab.model.distill",
    "distill_": "vptq_lab.model.distill",
    "split_heldout": "vptq_lab.io.data",
    "save_quantized": "vptq_lab.io.checkpoint",
    "load_quantized": "vptq_lab.io.checkpoint",
    "load_model": "vptq_lab.io.models",
    "load_wikitext2": "vptq_lab.io.data",
    "calibration_windows": "vptq_lab.io.data",
    "tokenize": "vptq_lab.io.data",
    "perplexity": "vptq_lab.lab.eval",
    "compare": "vptq_lab.lab.compare",
    "CompareSettings": "vptq_lab.lab.compare",
    "suggest": "vptq_lab.lab.budget",
    "Recipe": "vptq_lab.lab.recipes",
    "recipe": "vptq_lab.lab.recipes",
    "run_recipe": "vptq_lab.lab.recipes",
}

__all__ = [
    "CompareSettings",
    "DistillConfig",
    "GPTQConfig",
    "METHODS",
    "QuantizationReport",
    "QuantizedLinear",
    "QuantizedWeight",
    "RTNConfig",
    "Recipe",
    "VPTQConfig",
    "VPTQLabError",
    "bits_per_weight",
    "calibration_windows",
    "compare",
    "dequantize",
    "distill_",
    "load_model",
    "load_quantized",
    "load_wikitext2",
    "perplexity",
    "quantize_",
    "recipe",
    "run_recipe",
    "save_quantized",
    "split_heldout",
    "suggest",
    "tokenize",
    "vptq_quantize",
]  # exactly the keys of _API (tests/test_architecture.py checks)

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time names load lazily through __getattr__
    from vptq_lab.core.bits import bits_per_weight
    from vptq_lab.core.config import VPTQConfig
    from vptq_lab.core.methods import METHODS
    from vptq_lab.core.quantizer import vptq_quantize
    from vptq_lab.core.qweight import QuantizedWeight, dequantize
    from vptq_lab.core.scalar import GPTQConfig, RTNConfig
    from vptq_lab.errors import VPTQLabError
    from vptq_lab.io.checkpoint import load_quantized, save_quantized
    from vptq_lab.io.data import calibration_windows, load_wikitext2, split_heldout, tokenize
    from vptq_lab.io.models import load_model
    from vptq_lab.lab.budget import suggest
    from vptq_lab.lab.compare import CompareSettings, compare
    from vptq_lab.lab.eval import perplexity
    from vptq_lab.lab.recipes import Recipe, recipe, run_recipe
    from vptq_lab.model.calibrate import QuantizationReport, quantize_
    from vptq_lab.model.distill import DistillConfig, distill_
    from vptq_lab.model.layers import QuantizedLinear


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'vptq_lab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
