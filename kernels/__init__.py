"""VQ matmul kernels: pure-torch references, Triton kernels, and the `vq_linear` dispatcher.

Importing this package does not import triton: the Triton modules
(``.dequant``, ``.gemv``, ``.gemm``) are loaded on first use of the "triton"
backend. Without a GPU set ``os.environ["TRITON_INTERPRET"] = "1"`` before that.
"""

from .dispatch import BACKENDS, clear_dense_cache, dense_weight, vq_linear
from .reference import dequant_ref, vq_linear_ref

__all__ = ["vq_linear", "dense_weight", "clear_dense_cache", "BACKENDS", "dequant_ref", "vq_linear_ref"]
