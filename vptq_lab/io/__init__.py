"""Files and sources, on top of :mod:`vptq_lab.model`: checkpoints in the official VPTQ layout, WikiText-2 and
the models (the embedded default, local folders, hub ids).
"""
