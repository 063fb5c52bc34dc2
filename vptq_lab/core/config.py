"""`VPTQConfig`: the one typed, validated, JSON-round-trippable quantizer config.

Field names follow the official VPTQ ones (docs/algorithm.md, "The official checkpoint format"), so exporting a
layer config is a plain mapping. Pairs are ``(outlier part, main part)``; ``-1``
in the first entry means "no outlier part", and ``num_res_centroids[1] == -1``
means "no residual codebook".

    >>> cfg = VPTQConfig(vector_lens=(-1, 6), num_centroids=(-1, 1024))
    >>> VPTQConfig.from_json(cfg.to_json()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Self

__all__ = [
    "JsonConfig",
    "VPTQConfig",
    "MixedConfig",
    "preset",
    "layer_plan",
    "PRESETS",
    "MAX_INDEX_BITS",
    "MODEL_FIELDS",
    "config_for",
]

MAX_INDEX_BITS = 16  # one index (main, residual or outlier) is at most 16 bits: k <= 65536
_PAIR_FIELDS = ("vector_lens", "num_centroids", "num_res_centroids")
_CHOICES = {
    "kmeans_init": ("kmeans++", "random"),
    "propagation": ("quantized", "full_precision"),
    "codebook_scope": ("per-linear", "per-block"),
}


class JsonConfig:
    """to_dict / from_dict / to_json / from_json / replace for a frozen config dataclass.

    The one parser of every config class: ``from_dict`` takes a JSON object, refuses unknown keys with a
    "did you mean" hint, and the dataclass's ``__post_init__`` validates the values.
    """

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        if not isinstance(data, dict):
            raise ValueError(f"a {cls.__name__} must be a JSON object of field: value, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(map(str, set(data) - known))
        if unknown:
            close = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
            hints = "".join(f" ({k!r}: did you mean {m[0]!r}?)" for k, m in close.items() if m)
            raise ValueError(f"unknown {cls.__name__} keys {unknown}{hints}; known keys are {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Self:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class VPTQConfig(JsonConfig):
    """Hyper-parameters of VPTQ for one linear (or every linear of a model).

    The quantizer reads: vector_lens, num_centroids, num_res_centroids, npercent,
    group_num, enable_norm, enable_perm, percdamp, blocksize, kmeans_*, seed.
    The model-level driver reads: nsamples, seqlen, propagation, finetune*.
    """

    vector_lens: tuple[int, int] = (-1, 6)  # (v0, v)
    num_centroids: tuple[int, int] = (-1, 1024)  # (k0, k1)
    num_res_centroids: tuple[int, int] = (-1, -1)  # (-1, k2)
    npercent: float = 0.0  # percent of input columns that are outliers
    group_num: int = 1
    enable_norm: bool = False
    enable_perm: bool = True  # act-order
    percdamp: float = 0.01
    blocksize: int = 128
    kmeans_iters: int = 10
    kmeans_init: str = "kmeans++"
    seed: int = 0
    nsamples: int = 128
    seqlen: int = 2048
    propagation: str = "quantized"  # "quantized" (GPTQ-style sequential) | "full_precision" (official VPTQ)
    finetune: bool = False
    finetune_steps: int = 100
    finetune_lr: float = 1e-4
    finetune_batch: int = 0  # calibration sequences per Adam step; 0: a whole capture batch (quantize_'s batch_size)
    # "per-block": the linears of a decoder block share their main and outlier codebooks (one weighted k-means over
    # all their vectors); each layer still stores its own copy, so the official format loads it unchanged.
    codebook_scope: str = "per-linear"

    def __post_init__(self) -> None:
        for name in _PAIR_FIELDS:  # JSON gives lists: store tuples so equality and hashing work
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        _check_types(self)
        _check_pairs(self)
        _check_outliers(self)
        _check_ranges(self)

    # Derived values -------------------------------------------------------
    @property
    def v(self) -> int:
        return self.vector_lens[1]

    @property
    def k1(self) -> int:
        return self.num_centroids[1]

    @property
    def k2(self) -> int:
        """Residual codebook size; 0 when there is none."""
        return max(self.num_res_centroids[1], 0)

    @property
    def has_outliers(self) -> bool:
        return self.npercent > 0


def _type_ok(value: Any, expected: type) -> bool:
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:  # an int is a fine float (JSON writes 1.0 as 1.0, users write 1)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, expected)


def _check_types(cfg: VPTQConfig) -> None:
    hints = {"bool": bool, "int": int, "float": float, "str": str}
    names = {"bool": "a bool (true/false)", "int": "an int", "float": "a float", "str": "a string"}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in _PAIR_FIELDS:
            if not (isinstance(value, tuple) and len(value) == 2 and all(_type_ok(x, int) for x in value)):
                raise ValueError(f"{f.name}={value!r} must be a pair of ints like (-1, 8)")
        elif not _type_ok(value, hints[str(f.type)]):
            raise ValueError(f"{f.name}={value!r} must be {names[str(f.type)]}")
    for name, allowed in _CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"{name}={getattr(cfg, name)!r} must be one of {allowed}")


def _check_codebook(name: str, k: int) -> None:
    if k < 2 or k > 1 << MAX_INDEX_BITS:
        raise ValueError(f"{name}={k} must be in 2..{1 << MAX_INDEX_BITS} (an index is at most {MAX_INDEX_BITS} bits)")
    if k & (k - 1):
        lo = 1 << (k.bit_length() - 1)
        raise ValueError(f"{name}={k} must be a power of two (try {lo} or {lo * 2})")


def _check_vector_len(name: str, v: int) -> None:
    if not 1 <= v <= 16:
        raise ValueError(f"{name}={v} must be in 1..16 (a vector is v consecutive output rows)")


def _check_pairs(cfg: VPTQConfig) -> None:
    _check_vector_len("vector_lens v", cfg.vector_lens[1])
    _check_codebook("num_centroids k1", cfg.num_centroids[1])
    if cfg.num_res_centroids[0] != -1:
        raise ValueError(
            f"num_res_centroids={cfg.num_res_centroids}: the outlier part has no residual; set the first entry to -1"
        )
    if cfg.num_res_centroids[1] != -1:
        _check_codebook("num_res_centroids k2", cfg.num_res_centroids[1])


def _check_outliers(cfg: VPTQConfig) -> None:
    v0, k0 = cfg.vector_lens[0], cfg.num_centroids[0]
    if not 0 <= cfg.npercent < 100:
        raise ValueError(f"npercent={cfg.npercent} must be in [0, 100) (percent of input columns)")
    if cfg.npercent == 0:
        if (v0, k0) != (-1, -1):
            raise ValueError(f"npercent=0 but outlier part (v0, k0)=({v0}, {k0}); set both to -1 or make npercent > 0")
        return
    if v0 == -1 or k0 == -1:
        raise ValueError(f"npercent={cfg.npercent} needs an outlier codebook: set vector_lens[0] and num_centroids[0]")
    _check_vector_len("vector_lens v0", v0)
    _check_codebook("num_centroids k0", k0)


def _check_ranges(cfg: VPTQConfig) -> None:
    positive = ("group_num", "blocksize", "kmeans_iters", "nsamples", "seqlen", "finetune_steps")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name}={getattr(cfg, name)} must be >= 1")
    if not 0 <= cfg.percdamp < 10:
        raise ValueError(f"percdamp={cfg.percdamp} must be in [0, 10) (fraction of mean diag H, default 0.01)")
    if cfg.finetune_lr <= 0:
        raise ValueError(f"finetune_lr={cfg.finetune_lr} must be > 0 (try 1e-4)")
    if cfg.seed < 0:
        raise ValueError(f"seed={cfg.seed} must be >= 0")
    if cfg.codebook_scope != "per-linear" and cfg.k2:
        raise ValueError(
            f"codebook_scope={cfg.codebook_scope!r} shares the main and outlier codebooks, but a residual codebook "
            "is trained per linear: set num_res_centroids=(-1, -1), or codebook_scope='per-linear'"
        )
    if cfg.finetune_batch < 0:
        raise ValueError(
            f"finetune_batch={cfg.finetune_batch} must be >= 0 (0: a whole capture batch; "
            "n: n calibration sequences per fine-tuning step)"
        )


# One config per budget for a 135M model with hidden 576 (SmolLM2-135M), the bits of the default model's linears in
# the comments (all overhead). The codebooks are per linear, so k stays small; each is the candidate with the lowest
# proxy loss within its budget (docs/lab-notes/presets.md). Calibration: 32 windows x 512 tokens.
PRESETS: dict[int, dict[str, Any]] = {
    2: dict(
        vector_lens=(-1, 5),
        num_centroids=(-1, 512),
        num_res_centroids=(-1, -1),  # 1.985 bits
        group_num=2,
        nsamples=32,
        seqlen=512,
    ),
    3: dict(
        vector_lens=(2, 5),
        num_centroids=(512, 512),
        num_res_centroids=(-1, 32),  # 2.958 bits
        npercent=1.0,
        nsamples=32,
        seqlen=512,
    ),
    4: dict(
        vector_lens=(2, 4),
        num_centroids=(512, 512),
        num_res_centroids=(-1, 64),  # 3.958 bits
        npercent=1.0,
        group_num=2,
        nsamples=32,
        seqlen=512,
    ),
}


def preset(bits: int) -> VPTQConfig:
    """A starting config for ``bits`` in {2, 3, 4} (see :data:`PRESETS`)."""
    if bits not in PRESETS:
        raise ValueError(f"no preset for bits={bits}; available: {sorted(PRESETS)}")
    return VPTQConfig(**PRESETS[bits], enable_perm=True, enable_norm=False)


def layer_plan(config: VPTQConfig, in_features: int) -> tuple[int, int, int]:
    """Column split of one layer: ``(outlier_size, group_num, group_size)``.

    outlier_size = ceil(npercent/100 * in), rounded up so that the remaining
    columns divide evenly into ``group_num`` groups.
    """
    outlier = math.ceil(config.npercent / 100 * in_features) if config.npercent > 0 else 0
    rest = in_features - outlier
    outlier += rest % config.group_num  # round UP: the remainder joins the outliers
    if outlier > 0 and config.npercent == 0:
        raise ValueError(
            f"in_features={in_features} is not divisible by group_num={config.group_num} and there is no "
            f"outlier part to absorb the remainder; pick a group_num that divides {in_features}"
        )
    group_size = (in_features - outlier) // config.group_num
    if group_size < 1:
        raise ValueError(
            f"no columns left for the groups: in_features={in_features}, outlier_size={outlier}, "
            f"group_num={config.group_num}; lower npercent or group_num"
        )
    return outlier, config.group_num, group_size


# The fields a whole run shares (calibration, propagation, fine-tuning, codebook scope): a linear's own config in a
# MixedConfig cannot change them.
MODEL_FIELDS = (
    "nsamples",
    "seqlen",
    "propagation",
    "finetune",
    "finetune_steps",
    "finetune_lr",
    "finetune_batch",
    "codebook_scope",
)


@dataclass(frozen=True)
class MixedConfig:
    """A config per linear: ``default`` for every linear not in ``layers`` and for the whole run's settings
    (:data:`MODEL_FIELDS`), and ``layers``: full linear name (``model.layers.3.mlp.down_proj``) -> its config.

    As JSON, a layer gives only the fields that differ from ``default``::

        {"default": {"vector_lens": [-1, 5], ...},
         "layers": {"model.layers.0.mlp.down_proj": {"num_centroids": [-1, 1024]}}}

    The checkpoint stores each layer's config in ``config_for_layers`` (the official format is per layer anyway).
    """

    default: VPTQConfig
    layers: Mapping[str, VPTQConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", MappingProxyType(dict(sorted(self.layers.items()))))
        for name, cfg in self.layers.items():
            if not isinstance(cfg, VPTQConfig):
                raise ValueError(
                    f"layer {name!r}: a MixedConfig's layers must be VPTQConfigs, got {type(cfg).__name__}"
                )
            changed = [f for f in MODEL_FIELDS if getattr(cfg, f) != getattr(self.default, f)]
            if changed:
                raise ValueError(
                    f"layer {name!r} changes {changed}, which the whole run shares: set them in the default config"
                )
        if self.default.codebook_scope != "per-linear" and self.layers:
            raise ValueError("shared codebooks (codebook_scope='per-block') need one config for the block's linears")

    def for_layer(self, name: str) -> VPTQConfig:
        """The config of the linear with this full name."""
        return self.layers.get(name, self.default)

    def __getattr__(self, name: str) -> Any:  # the whole run's settings, and every field no layer changes
        if name.startswith("_") or name in ("default", "layers"):
            raise AttributeError(name)
        return getattr(self.default, name)

    def replace(self, **changes: Any) -> MixedConfig:
        """The same per-linear configs with ``changes`` made in every one (the run's settings, the seed, ...)."""
        return MixedConfig(self.default.replace(**changes), {n: c.replace(**changes) for n, c in self.layers.items()})

    def to_dict(self) -> dict[str, Any]:
        base = self.default.to_dict()
        return {
            "default": base,
            "layers": {n: {k: v for k, v in c.to_dict().items() if v != base[k]} for n, c in self.layers.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MixedConfig:
        if not isinstance(data, dict) or "default" not in data or not set(data) <= {"default", "layers"}:
            raise ValueError('a MixedConfig is a JSON object {"default": {...}, "layers": {name: {...}}}')
        default = VPTQConfig.from_dict(data["default"])
        layers = data.get("layers") or {}
        if not isinstance(layers, dict):
            raise ValueError('"layers" must map a linear\'s full name to the fields it changes')
        return cls(default, {n: VPTQConfig.from_dict({**default.to_dict(), **d}) for n, d in layers.items()})

    @classmethod
    def from_json(cls, text: str) -> MixedConfig:
        return cls.from_dict(json.loads(text))


def config_for(config: Any, name: str) -> Any:
    """The config of the linear ``name``: its own under a :class:`MixedConfig`, else ``config`` itself."""
    return config.for_layer(name) if isinstance(config, MixedConfig) else config
