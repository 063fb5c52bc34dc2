"""The official VPTQ layer format as pure data: a QuantizedWeight <-> its ``config_for_layers`` entry and tensors.

No model and no files here: :mod:`vptq_lab.io.checkpoint` writes and reads folders with these, and
:mod:`vptq_lab.model.resume` stores blocks with them. The layout is described in ``docs/algorithm.md``.
"""

from __future__ import annotations

from typing import Any

import torch

from vptq_lab.core.qweight import QuantizedWeight
from vptq_lab.errors import VPTQLabError

__all__ = ["layer_config", "qweight_from_tensors", "LAYER_KEYS"]


def layer_config(qw: QuantizedWeight, bias: bool) -> dict[str, Any]:
    """One entry of ``config_for_layers`` in the official schema."""
    outliers = qw.outlier_size > 0
    return {
        "in_features": qw.in_features,
        "out_features": qw.out_features,
        "bias": bias,
        "vector_lens": [qw.outlier_vector_len if outliers else -1, qw.vector_len],
        "num_centroids": [qw.outlier_num_centroids if outliers else -1, qw.num_centroids],
        "num_res_centroids": [-1, qw.num_res_centroids if qw.num_res_centroids > 0 else -1],
        "group_num": qw.group_num,
        "group_size": qw.group_size,
        "outlier_size": qw.outlier_size,
        "enable_norm": qw.weight_scale is not None,
        "enable_perm": qw.perm is not None,
        "is_indice_packed": True,
        "indices_as_float": False,
    }


LAYER_KEYS = (
    "in_features",
    "out_features",
    "vector_lens",
    "num_centroids",
    "num_res_centroids",
    "group_num",
    "group_size",
    "outlier_size",
    "enable_norm",
    "enable_perm",
)


def _check_layer_config(cfg: Any, name: str) -> None:
    if not isinstance(cfg, dict):
        raise VPTQLabError(
            f"config_for_layers[{name!r}] is {type(cfg).__name__}, not an object: config.json is "
            "damaged; re-save the model"
        )
    missing = [k for k in LAYER_KEYS if k not in cfg]
    if missing:
        raise VPTQLabError(
            f"config_for_layers[{name!r}] lacks {missing}: config.json is damaged or from another "
            "tool; re-save the model"
        )
    pairs_ok = all(
        isinstance(cfg[k], (list, tuple)) and len(cfg[k]) == 2 and all(isinstance(x, int) for x in cfg[k])
        for k in ("vector_lens", "num_centroids", "num_res_centroids")
    )
    ints_ok = all(isinstance(cfg[k], int) and cfg[k] >= 0 for k in LAYER_KEYS[:2] + LAYER_KEYS[5:8])
    if (
        not (pairs_ok and ints_ok)
        or cfg["vector_lens"][1] < 1
        or cfg["group_num"] < 1
        or (cfg["outlier_size"] > 0 and cfg["vector_lens"][0] < 1)
    ):
        raise VPTQLabError(f"config_for_layers[{name!r}] has invalid values: config.json is damaged; re-save the model")


def qweight_from_tensors(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], name: str) -> QuantizedWeight:
    """The QuantizedWeight of layer ``name`` from its config entry and the tensors under ``name.*``.

    Every mismatch between the entry and the tensors (a missing tensor, a wrong shape or dtype) is an error
    that says the checkpoint is damaged.
    """
    _check_layer_config(cfg, name)
    outliers = cfg["outlier_size"] > 0

    def get(key: str, needed: bool) -> torch.Tensor | None:
        full = f"{name}.{key}"
        if needed and full not in tensors:
            raise VPTQLabError(f"checkpoint is missing tensor {full!r}: the file is incomplete; re-save the model")
        return tensors.get(full) if needed else None

    qw = QuantizedWeight(
        out_features=cfg["out_features"],
        in_features=cfg["in_features"],
        vector_len=cfg["vector_lens"][1],
        num_centroids=cfg["num_centroids"][1],
        num_res_centroids=max(cfg["num_res_centroids"][1], 0),
        group_num=cfg["group_num"],
        group_size=cfg["group_size"],
        outlier_size=cfg["outlier_size"],
        outlier_vector_len=cfg["vector_lens"][0] if outliers else 0,
        outlier_num_centroids=cfg["num_centroids"][0] if outliers else 0,
        centroids=get("centroids.weight", True),
        indices=get("indices", True),
        res_centroids=get("res_centroids.weight", cfg["num_res_centroids"][1] > 0),
        outlier_centroids=get("outlier_centroids.weight", outliers),
        outlier_indices=get("outlier_indices", outliers),
        perm=get("perm", cfg["enable_perm"]),
        weight_scale=get("weight_scale", cfg["enable_norm"]),
        weight_bias=get("weight_bias", cfg["enable_norm"]),
    )
    _check_shapes(qw, name)
    return qw


def _check_shapes(qw: QuantizedWeight, name: str) -> None:
    b1, b2 = qw.index_bits
    words = -(-qw.group_size * (b1 + b2) // 32)
    expected = {
        "centroids.weight": (qw.centroids, (qw.group_num, qw.num_centroids * qw.vector_len)),
        "indices": (qw.indices, (qw.group_num, qw.num_rows, words)),
    }
    if qw.res_centroids is not None:
        expected["res_centroids.weight"] = (qw.res_centroids, (qw.group_num, qw.num_res_centroids * qw.vector_len))
    if qw.perm is not None:
        expected["perm"] = (qw.perm, (qw.in_features,))
    if qw.outlier_size:
        rows0 = -(-qw.out_features // qw.outlier_vector_len)
        expected["outlier_indices"] = (qw.outlier_indices, (1, rows0, qw.outlier_size))
    for key, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise VPTQLabError(
                f"{name}.{key} has shape {tuple(tensor.shape)}, but its layer config implies {shape}: "
                "the checkpoint's config.json and tensors do not match; re-save the model"
            )
    if qw.in_features != qw.outlier_size + qw.group_num * qw.group_size:
        raise VPTQLabError(
            f"{name}: in_features {qw.in_features} != outlier_size + group_num * group_size: "
            "the checkpoint's config.json is damaged; re-save the model"
        )
    if qw.indices.dtype != torch.int32:
        raise VPTQLabError(f"{name}.indices is {qw.indices.dtype}, not int32 (packed indices): re-save the model")
