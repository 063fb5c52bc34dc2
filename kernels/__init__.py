"""VQ matmul kernels: pure-torch references, Triton kernels, and the `vq_linear` dispatcher.

This folder installs as ``vptq_lab.kernels``. Importing the package does not import triton: the Triton modules
(``.dequant``, ``.gemv``, ``.gemm``) are loaded on first use of the "triton" backend. Without a GPU set
``os.environ["TRITON_INTERPRET"] = "1"`` before that.

PyPI has a package named ``kernels`` too, and transformers imports it while it loads. Whenever the checkout's root is
on ``sys.path`` (``python -m ...`` or ``torchrun -m ...`` from the root, a notebook started there), ``import kernels``
finds this folder first. Imported under that top-level name, the folder hands over to the package it shadows (or
raises the ``ModuleNotFoundError`` that would have been raised without it), so it never takes its place.
"""

if __name__ == "kernels":
    import importlib.machinery
    import importlib.util
    import os
    import sys

    def _hand_over() -> None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout's root
        elsewhere = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]
        spec = importlib.machinery.PathFinder.find_spec(__name__, elsewhere)
        if spec is None or spec.loader is None:
            raise ModuleNotFoundError(f"No module named {__name__!r}", name=__name__)
        module = importlib.util.module_from_spec(spec)
        sys.modules[__name__] = module  # the import statement returns what sys.modules holds once this runs
        spec.loader.exec_module(module)

    _hand_over()
else:
    from .dispatch import BACKENDS, clear_dense_cache, dense_weight, vq_linear
    from .reference import dequant_ref, vq_linear_ref

    __all__ = ["vq_linear", "dense_weight", "clear_dense_cache", "BACKENDS", "dequant_ref", "vq_linear_ref"]
