"""vptq_lab: a Jupyter-first workbench for VPTQ, vector post-training quantization of LLM weights.

The public API is this module's ``__all__``: everything a notebook or script needs to quantize a model,
evaluate it and save it in the official VPTQ layout::

    from vptq_lab import calibration_windows, load_model, load_wikitext2, perplexity, preset, quantize_

    model, tokenizer = load_model("default")
    calib = calibration_windows(tokenizer, load_wikitext2("validation"), nsamples=32, seqlen=512)
    report = quantize_(model, preset(2), calib)
    print(perplexity(model, tokenizer, max_windows=8).perplexity)

End-to-end distillation from the unquantized model (``distill_``, by ``distill_recipe(2)``, the recipe measured
best at the 2-bit preset) follows the same in-place style.

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
    "preset": "vptq_lab.core.config",
    "bits_per_weight": "vptq_lab.core.bits",
    "QuantizedWeight": "vptq_lab.core.qweight",
    "dequantize": "vptq_lab.core.qweight",
    "vptq_quantize": "vptq_lab.core.quantizer",
    "RTNConfig": "vptq_lab.core.scalar",
    "GPTQConfig": "vptq_lab.core.scalar",
    "METHODS": "vptq_lab.core.methods",
    "method_preset": "vptq_lab.core.methods",
    "quantize_": "vptq_lab.model.calibrate",
    "QuantizationReport": "vptq_lab.model.calibrate",
    "QuantizedLinear": "vptq_lab.model.layers",
    "DistillConfig": "vptq_lab.model.finetune",
    "distill_": "vptq_lab.model.finetune",
    "distill_recipe": "vptq_lab.model.finetune",
    "split_heldout": "vptq_lab.model.finetune",
    "save_quantized": "vptq_lab.io.checkpoint",
    "load_quantized": "vptq_lab.io.checkpoint",
    "load_model": "vptq_lab.io.models",
    "BASELINE_NOTE": "vptq_lab.io.models",
    "load_wikitext2": "vptq_lab.io.data",
    "calibration_windows": "vptq_lab.io.data",
    "perplexity": "vptq_lab.lab.eval",
    "compare": "vptq_lab.lab.compare",
    "CompareSettings": "vptq_lab.lab.compare",
    "suggest": "vptq_lab.lab.budget",
    "release_freed_memory": "vptq_lab.memory",
}

__all__ = [
    "BASELINE_NOTE",
    "METHODS",
    "CompareSettings",
    "DistillConfig",
    "GPTQConfig",
    "QuantizationReport",
    "QuantizedLinear",
    "QuantizedWeight",
    "RTNConfig",
    "VPTQConfig",
    "VPTQLabError",
    "bits_per_weight",
    "calibration_windows",
    "compare",
    "dequantize",
    "distill_",
    "distill_recipe",
    "load_model",
    "load_quantized",
    "load_wikitext2",
    "method_preset",
    "perplexity",
    "preset",
    "quantize_",
    "release_freed_memory",
    "save_quantized",
    "split_heldout",
    "suggest",
    "vptq_quantize",
]  # exactly the keys of _API (tests/test_architecture.py checks)

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time names load lazily through __getattr__
    from vptq_lab.core.bits import bits_per_weight
    from vptq_lab.core.config import VPTQConfig, preset
    from vptq_lab.core.methods import METHODS, method_preset
    from vptq_lab.core.quantizer import vptq_quantize
    from vptq_lab.core.qweight import QuantizedWeight, dequantize
    from vptq_lab.core.scalar import GPTQConfig, RTNConfig
    from vptq_lab.errors import VPTQLabError
    from vptq_lab.io.checkpoint import load_quantized, save_quantized
    from vptq_lab.io.data import calibration_windows, load_wikitext2
    from vptq_lab.io.models import BASELINE_NOTE, load_model
    from vptq_lab.lab.budget import suggest
    from vptq_lab.lab.compare import CompareSettings, compare
    from vptq_lab.lab.eval import perplexity
    from vptq_lab.memory import release_freed_memory
    from vptq_lab.model.calibrate import QuantizationReport, quantize_
    from vptq_lab.model.finetune import DistillConfig, distill_, distill_recipe, split_heldout
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
