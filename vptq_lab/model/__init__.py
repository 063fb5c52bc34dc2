"""Model surgery and calibration, on top of :mod:`vptq_lab.core`: the architecture table, Hessian hooks,
``QuantizedLinear``, the block-by-block driver ``quantize_`` and its crash-safe resume.
"""
