"""The pure algorithm: configs, bit accounting, packing, k-means, the column loop, VPTQ and the scalar baselines.

Nothing here touches a model, a file or the network; every function takes and returns tensors or dataclasses.
This layer imports only ``torch``, the standard library and :mod:`vptq_lab.errors`.
"""
