"""Which VPTQ config fits N bits per weight? A config finder that counts every bit.

``suggest(shapes, target_bits)`` searches a grid of VPTQ configs and returns a
ranked DataFrame of those whose *total* bits per weight (indices, codebooks,
outlier codebooks, perm, scale/bias: ``bits.py``'s paper accounting, docs/algorithm.md
§3) lie in ``[target - tolerance, target]``. It answers the official repo's
"which parameters give N bits" (#126, #119), and it shows why small models need
small codebooks: on a hidden-576 model a per-linear k=4096 codebook alone costs
~0.8 bit per weight.

Codebook scope (column ``codebook_scope``):

- ``"per-linear"``: every linear has its own codebooks (what ``vptq_quantize``
  does, and what the paper counts). The default.
- ``"per-block"``: one set of codebooks (per group) shared by all linears of a decoder block
  (``VPTQConfig(codebook_scope="per-block")``); the quantizer runs it without a residual codebook.
- ``"per-model"``: shared by every linear of the model. Accounting only, to show how much sharing would buy.

Column ``runnable`` says whether ``quantize_`` can run the row's config as it is.

Ranking (column ``rank``), most preferred first. Every row already fits the
budget; the question is which spends it best.

1. ``index_bits = (log2 k1 + log2 k2) / v`` (outliers weighted in), in steps
   of 0.25 bit, largest first: the bits that actually encode each weight.
   Codebook bits are overhead; a config that spends the budget on codebooks
   instead of indices (easy to do on a small model) ranks lower.
2. ``gap = target - bits`` in steps of 0.05 bit, smallest first: bits left
   unspent are quality thrown away.
3. Simplest first: count the extras (a residual codebook, more than one
   group, an outlier part). Each costs codebook bits, another k-means and
   another code path; among configs of about the same size, take the plain one.
4. Longer vectors first: at about the same index bits per weight a longer
   vector with a bigger codebook (``capacity = log2 k1 + log2 k2`` bits per
   vector) captures more of the correlation between rows (VQ's space-filling
   advantage); that is why the paper picks v6 k4096 over v4 k256 at 2 bits,
   and v8 k65536 at 2.19 bits for LLaMA-2-13B.
5. Then the exact gap, smallest first.

The steps are coarse on purpose: differences of a few hundredths of a bit
should not outrank the structural choices. The rank is a heuristic, not a
measurement; every column it uses is in the table, so re-sort as you like.

The grid is screened with the closed form of the paper accounting (vectorised,
milliseconds); the rows returned are then recounted with ``bits.py``
(:func:`vptq_model_bits`), and those numbers are what the table shows.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
from torch import nn

from vptq_lab.core.bits import BitBreakdown, Mode, bits_per_weight
from vptq_lab.core.config import MAX_INDEX_BITS, VPTQConfig

__all__ = [
    "SearchSpace",
    "suggest",
    "shapes_of",
    "vptq_model_bits",
    "linear_bits",
    "candidate_table",
    "row_config",
    "llama_block",
    "repeat_blocks",
    "SCOPES",
    "LLAMA2_7B_BLOCK",
    "LLAMA2_13B_BLOCK",
    "SMOLLM2_135M_SHAPES",
]

Shapes = dict[str, tuple[int, int]]
SCOPES = ("per-linear", "per-block", "per-model")


# Shapes ---------------------------------------------------------------------------
def llama_block(hidden: int, intermediate: int, kv_dim: int | None = None) -> Shapes:
    """The seven linears of one LLaMA block as ``{name: (out, in)}``; ``kv_dim`` for grouped-query attention."""
    kv = kv_dim or hidden
    return {
        "self_attn.q_proj": (hidden, hidden),
        "self_attn.k_proj": (kv, hidden),
        "self_attn.v_proj": (kv, hidden),
        "self_attn.o_proj": (hidden, hidden),
        "mlp.gate_proj": (intermediate, hidden),
        "mlp.up_proj": (intermediate, hidden),
        "mlp.down_proj": (hidden, intermediate),
    }


def repeat_blocks(block: Shapes, num_blocks: int, prefix: str = "model.layers") -> Shapes:
    """``num_blocks`` copies of ``block``, named ``{prefix}.{i}.{name}``."""
    return {f"{prefix}.{i}.{name}": shape for i in range(num_blocks) for name, shape in block.items()}


LLAMA2_7B_BLOCK: Shapes = llama_block(4096, 11008)
LLAMA2_13B_BLOCK: Shapes = llama_block(5120, 13824)
# SmolLM2-135M (the default model): hidden 576, intermediate 1536, 3 KV heads of 64, 30 blocks.
SMOLLM2_135M_SHAPES: Shapes = repeat_blocks(llama_block(576, 1536, kv_dim=192), 30)


def shapes_of(model: nn.Module) -> Shapes:
    """``{name: (out, in)}`` of the linears to quantize.

    Uses the architecture table (:mod:`vptq_lab.model.arch`) when the model's family
    is in it; otherwise every ``nn.Linear`` and GPT-2 ``Conv1D`` except ``lm_head``.
    """
    from vptq_lab.errors import VPTQLabError
    from vptq_lab.model.arch import arch_for, get_blocks, get_module

    try:
        spec = arch_for(model)
    except VPTQLabError:
        return _generic_shapes(model)
    shapes = {}
    for i, block in enumerate(get_blocks(model, spec)):
        for name in (n for stage in spec.stages for n in stage):
            w = get_module(block, name).weight
            shapes[f"{spec.blocks}.{i}.{name}"] = (w.shape[1], w.shape[0]) if spec.transposed else tuple(w.shape)
    return shapes


def _generic_shapes(model: nn.Module) -> Shapes:
    shapes = {}
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "lm_head":
            continue
        if isinstance(module, nn.Linear):
            shapes[name] = tuple(module.weight.shape)
        elif type(module).__name__ == "Conv1D":  # GPT-2 stores weight as [in, out]
            shapes[name] = (module.weight.shape[1], module.weight.shape[0])
    return shapes


def _as_shapes(model_or_shapes: nn.Module | Shapes) -> Shapes:
    shapes = shapes_of(model_or_shapes) if isinstance(model_or_shapes, nn.Module) else dict(model_or_shapes)
    if not shapes:
        raise ValueError("no linear layers found: pass an nn.Module with linears or a dict {name: (out, in)}")
    for name, shape in shapes.items():
        if len(shape) != 2 or any(not isinstance(x, int) or x < 1 for x in shape):
            raise ValueError(f"shape of {name!r} is {shape!r}; it must be a positive (out, in) pair of ints")
    return {name: (int(shape[0]), int(shape[1])) for name, shape in shapes.items()}


_BLOCK = re.compile(r"^(.*?\.\d+)\.")  # "model.layers.3.mlp.up_proj" -> "model.layers.3"


def _unit_of(name: str, scope: str) -> str:
    """Which codebook set a linear uses under ``scope``. Names without a block index form one block."""
    if scope == "per-linear":
        return name
    if scope == "per-block":
        m = _BLOCK.match(name)
        return m.group(1) if m else ""
    return ""


def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"codebook scope {scope!r} must be one of {SCOPES}")


# Exact counts (bits.py) -------------------------------------------------------------
def _codebook_bits(b: BitBreakdown) -> float:
    return b.codebook_bits + b.outlier_codebook_bits


def vptq_model_bits(
    config: VPTQConfig, shapes: Shapes, scope: str = "per-linear", mode: Mode = "paper"
) -> BitBreakdown:
    """Total bits of ``shapes`` under ``config``, with codebooks counted once per ``scope`` unit.

    Per-linear is exactly ``bits.model_bits``. A linear's codebook bits do not
    depend on its shape, so sharing replaces ``L`` copies by one per unit.
    """
    _check_scope(scope)
    total = BitBreakdown()
    for shape, count in Counter(shapes.values()).items():  # identical shapes: count once, scale
        b = bits_per_weight(config, shape, mode)
        total = total + BitBreakdown(**{f.name: getattr(b, f.name) * count for f in fields(b)})
    if scope == "per-linear":
        return total
    one = bits_per_weight(config, next(iter(shapes.values())), mode)
    units = len({_unit_of(n, scope) for n in shapes})
    return BitBreakdown(
        **{
            **{f.name: getattr(total, f.name) for f in fields(total)},
            "codebook_bits": one.codebook_bits * units,
            "outlier_codebook_bits": one.outlier_codebook_bits * units,
        }
    )


def linear_bits(
    config: VPTQConfig, shapes: Shapes, scope: str = "per-linear", mode: Mode = "paper"
) -> dict[str, float]:
    """Bits per weight of each linear; a shared codebook is split among its linears by weight count."""
    _check_scope(scope)
    unit_weights = Counter()
    for name, (o, i) in shapes.items():
        unit_weights[_unit_of(name, scope)] += o * i
    out = {}
    for name, shape in shapes.items():
        b = bits_per_weight(config, shape, mode)
        share = b.num_weights / unit_weights[_unit_of(name, scope)]
        out[name] = (b.total_bits - _codebook_bits(b) + _codebook_bits(b) * share) / b.num_weights
    return out


# Search space -------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchSpace:
    """The grid :func:`suggest` searches. Codebook sizes are powers of two given by their bits.

    Outliers (``npercent > 0``) get their own codebook with ``v0 = max(1, v // 2)``
    and ``k0 = k1``: twice the index bits of the main part, one choice to keep
    the grid small. Residual codebooks are never larger than the main one.
    """

    vector_lens: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 10, 12, 16)
    k1_bits: tuple[int, ...] = tuple(range(8, MAX_INDEX_BITS + 1))  # k1 = 256 .. 65536
    k2_bits: tuple[int, ...] = (0,) + tuple(range(4, MAX_INDEX_BITS + 1))  # 0: no residual
    npercents: tuple[float, ...] = (0.0, 1.0)
    group_nums: tuple[int, ...] = (1, 2, 4)
    enable_norm: bool = False
    enable_perm: bool = True

    def __post_init__(self) -> None:
        for name in ("vector_lens", "k1_bits", "k2_bits", "npercents", "group_nums"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
            if not getattr(self, name):
                raise ValueError(f"SearchSpace.{name} is empty; give at least one value")
        _check_values("vector_lens", self.vector_lens, lambda v: 1 <= v <= 16, "in 1..16")
        _check_values("k1_bits", self.k1_bits, lambda b: 1 <= b <= MAX_INDEX_BITS, f"in 1..{MAX_INDEX_BITS}")
        _check_values(
            "k2_bits", self.k2_bits, lambda b: 0 <= b <= MAX_INDEX_BITS, f"in 0..{MAX_INDEX_BITS} (0 = no residual)"
        )
        _check_values("npercents", self.npercents, lambda p: 0 <= p < 100, "in [0, 100)")
        _check_values("group_nums", self.group_nums, lambda g: g >= 1, ">= 1")


def _check_values(name: str, values: Iterable, ok, what: str) -> None:
    bad = [x for x in values if isinstance(x, bool) or not isinstance(x, (int, float)) or not ok(x)]
    if bad:
        raise ValueError(f"SearchSpace.{name} has {bad}; every value must be {what}")


def _grid(space: SearchSpace, scopes: Sequence[str]) -> pd.DataFrame:
    """Every combination, k2 <= k1. Columns v, b1, b2, npercent, group_num, scope."""
    mesh = (
        np.array(
            np.meshgrid(
                space.vector_lens,
                space.k1_bits,
                space.k2_bits,
                space.npercents,
                space.group_nums,
                np.arange(len(scopes)),
                indexing="ij",
            )
        )
        .reshape(6, -1)
        .T
    )
    df = pd.DataFrame(mesh, columns=["v", "b1", "b2", "npercent", "group_num", "scope_i"])
    df = df[df.b2 <= df.b1].astype({"v": int, "b1": int, "b2": int, "group_num": int, "scope_i": int})
    df["v0"] = np.where(df.npercent > 0, np.maximum(1, df.v // 2), 0)
    df["b0"] = np.where(df.npercent > 0, df.b1, 0)
    df["codebook_scope"] = np.asarray(scopes, dtype=object)[df.scope_i.to_numpy()]
    return df.drop(columns="scope_i").reset_index(drop=True)


def _units(shapes: Shapes, scope: str) -> list[list[tuple[int, int]]]:
    """Shapes of the linears sharing each codebook set (one list per unit)."""
    units: dict[str, list[tuple[int, int]]] = {}
    for name, shape in shapes.items():
        units.setdefault(_unit_of(name, scope), []).append(shape)
    return list(units.values())


def _distinct_units(shapes: Shapes, scope: str) -> list[list[tuple[int, int]]]:
    """:func:`_units` with identical units (same multiset of shapes) kept once: 30 equal blocks -> 1."""
    return list({tuple(sorted(u)): u for u in _units(shapes, scope)}.values())


def _feasible(df: pd.DataFrame, shapes: Shapes) -> np.ndarray:
    """Rows the quantizer's layer plan accepts and whose codebooks have at least k vectors to fit on.

    Mirrors ``config.layer_plan``: outliers ceil(npercent% * in), the remainder
    of the split into group_num groups joins them; without outliers the groups
    must divide ``in``. A codebook with more centroids than vectors can't be fitted.
    """
    f = df.npercent.to_numpy() / 100
    G, v, v0 = df.group_num.to_numpy(), df.v.to_numpy(), np.maximum(df.v0.to_numpy(), 1)
    ok = np.ones(len(df), dtype=bool)
    for scope in df.codebook_scope.unique():
        rows = df.codebook_scope.to_numpy() == scope
        for unit in _distinct_units(shapes, scope):
            main, outl = np.zeros(len(df)), np.zeros(len(df))
            for o, i in set(unit):
                n = unit.count((o, i))
                first = np.where(f > 0, np.ceil(f * i), 0)
                outlier = first + (i - first) % G
                ok &= ~rows | ((f > 0) | (i % G == 0)) & (i - outlier >= G)
                main += n * np.ceil(o / v) * ((i - outlier) // G)
                outl += n * np.ceil(o / v0) * outlier
            ok &= ~rows | ((main >= 2.0**df.b1) & ((f == 0) | (outl >= 2.0**df.b0)))
    return ok


def _screen_bits(df: pd.DataFrame, shapes: Shapes, space: SearchSpace) -> pd.DataFrame:
    """The paper accounting in closed form, vectorised over the grid (bits.py is the reference)."""
    N = sum(o * i for o, i in shapes.values())
    cols_in = sum(i for _, i in shapes.values())
    f = df.npercent / 100
    rate = (1 - f) * (df.b1 + df.b2) / df.v + np.where(f > 0, f * df.b0 / df.v0.clip(lower=1), 0)
    k2 = np.where(df.b2 > 0, 2.0**df.b2, 0)
    cb = 16 * df.v * (2.0**df.b1 + k2) * df.group_num + np.where(f > 0, 16 * df.v0 * 2.0**df.b0, 0)
    units = df.codebook_scope.map({s: len(_units(shapes, s)) for s in SCOPES})
    per_col = 16 * (2 * space.enable_norm + space.enable_perm)
    total = N * rate + units * cb + cols_in * per_col
    return df.assign(
        bits_per_weight=total / N, index_bits=rate, codebook_share=units * cb / total, capacity=df.b1 + df.b2
    )


def row_config(row: pd.Series, space: SearchSpace = SearchSpace()) -> VPTQConfig:
    """The VPTQConfig of one :func:`candidate_table` row (its codebook scope too where the quantizer runs it; a row
    it cannot run gets the per-linear config of the same sizes)."""
    outlier = row.npercent > 0
    scope = row.codebook_scope if _runnable(row.codebook_scope, int(row.b2)) else "per-linear"
    return VPTQConfig(
        vector_lens=(int(row.v0) if outlier else -1, int(row.v)),
        num_centroids=(2 ** int(row.b0) if outlier else -1, 2 ** int(row.b1)),
        num_res_centroids=(-1, 2 ** int(row.b2) if row.b2 else -1),
        npercent=float(row.npercent),
        group_num=int(row.group_num),
        enable_norm=space.enable_norm,
        enable_perm=space.enable_perm,
        codebook_scope=scope,
    )


def _describe(row: pd.Series) -> str:
    res = f"k2={2 ** int(row.b2)}" if row.b2 else "no residual"
    out = f", npercent={row.npercent:g}" if row.npercent else ""
    return (
        f"v={int(row.v)}, k1={2 ** int(row.b1)}, {res}, group_num={int(row.group_num)}{out}, "
        f"{row.codebook_scope} codebooks"
    )


def candidate_table(
    shapes: Shapes, space: SearchSpace = SearchSpace(), shared: bool | str | Sequence[str] = False
) -> pd.DataFrame:
    """Every feasible grid point with its screened bits (unranked). For notebooks and plots."""
    scopes = _scopes(shared)
    df = _grid(space, scopes)
    df = df[_feasible(df, shapes)]
    return _screen_bits(df, shapes, space).reset_index(drop=True)


def _scopes(shared: bool | str | Sequence[str]) -> tuple[str, ...]:
    if shared is False:
        return ("per-linear",)
    if shared is True:
        return SCOPES
    scopes = (shared,) if isinstance(shared, str) else tuple(shared)
    for s in scopes:
        _check_scope(s)
    return scopes


# suggest ---------------------------------------------------------------------------------
def _check_request(target_bits: float, tolerance: float, max_rows: int) -> None:
    if (
        isinstance(target_bits, bool)
        or not isinstance(target_bits, (int, float))
        or not math.isfinite(target_bits)
        or target_bits <= 0
    ):
        raise ValueError(f"target_bits={target_bits!r} must be a positive number of bits per weight (e.g. 2.0)")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance > 0:
        raise ValueError(f"tolerance={tolerance!r} must be > 0 (how far below the target a config may land, e.g. 0.25)")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows={max_rows!r} must be a positive int")


def _ranked(df: pd.DataFrame, target_bits: float) -> pd.DataFrame:
    """Order rows by the module docstring's ranking."""
    df = df.assign(gap=target_bits - df.bits_per_weight)
    key = df.assign(
        gap_step=np.round(df.gap / 0.05),
        extras=(df.b2 > 0).astype(int) + (df.group_num > 1).astype(int) + (df.npercent > 0).astype(int),
        scope_order=df.codebook_scope.map({s: i for i, s in enumerate(SCOPES)}),
    )
    key["rate_step"] = np.floor(key.index_bits / 0.25 + 1e-9)  # 1e-9: 2.0 is step 8, not 7.999...
    order = key.sort_values(
        ["rate_step", "gap_step", "extras", "v", "gap", "scope_order"],
        ascending=[False, True, True, False, True, True],
        kind="stable",
    ).index
    return df.loc[order]


def _exact_rows(top: pd.DataFrame, shapes: Shapes, space: SearchSpace, target_bits: float) -> pd.DataFrame:
    """Recount the chosen rows with bits.py and lay out the public columns."""
    records = []
    for _, row in top.iterrows():
        cfg = row_config(row, space)
        total = vptq_model_bits(cfg, shapes, row.codebook_scope)
        per_linear = linear_bits(cfg, shapes, row.codebook_scope).values()
        records.append(
            {
                "v": int(row.v),
                "k1": 2 ** int(row.b1),
                "k2": 2 ** int(row.b2) if row.b2 else 0,
                "npercent": float(row.npercent),
                "v0": int(row.v0),
                "k0": 2 ** int(row.b0) if row.npercent else 0,
                "group_num": int(row.group_num),
                "codebook_scope": row.codebook_scope,
                "runnable": _runnable(row.codebook_scope, int(row.b2)),
                "bits_per_weight": total.bits_per_weight,
                "gap": target_bits - total.bits_per_weight,
                "min_linear_bits": min(per_linear),
                "max_linear_bits": max(per_linear),
                "index_bits": (total.index_bits + total.outlier_index_bits) / total.num_weights,
                "codebook_share": _codebook_bits(total) / total.total_bits,
                "capacity": int(row.capacity),
                "config": cfg,
            }
        )
    out = pd.DataFrame.from_records(records)
    return out[out.bits_per_weight <= target_bits]


def _runnable(scope: str, residual_bits: int) -> bool:
    """Whether quantize_ runs a config of this codebook scope: per linear always, per block without a residual
    codebook (it is trained per linear), per model never."""
    return scope == "per-linear" or (scope == "per-block" and residual_bits == 0)


def suggest(
    model_or_shapes: nn.Module | Shapes,
    target_bits: float,
    *,
    tolerance: float = 0.25,
    max_rows: int = 20,
    shared: bool | str | Sequence[str] = False,
    space: SearchSpace = SearchSpace(),
) -> pd.DataFrame:
    """Ranked VPTQ configs whose total bits per weight lie in ``[target - tolerance, target]``.

    ``model_or_shapes``: an ``nn.Module`` (its linears, see :func:`shapes_of`) or
    ``{name: (out, in)}``. ``shared``: False (per-linear codebooks only), True
    (all scopes), or a scope name or names from :data:`SCOPES`. Columns: the
    config fields (``k2 = 0``: no residual), ``codebook_scope``, ``runnable``,
    ``bits_per_weight`` (model total, all overhead), ``gap``, ``min/max_linear_bits``,
    ``index_bits``, ``codebook_share``, ``capacity`` and the ``config`` itself,
    indexed by ``rank`` (module docstring). Raises ValueError, saying what is
    possible, for a non-positive target or one no grid point reaches.
    """
    _check_request(target_bits, tolerance, max_rows)
    shapes = _as_shapes(model_or_shapes)
    cands = candidate_table(shapes, space, shared)
    if cands.empty:
        raise ValueError("no config of the search space fits these shapes; widen the SearchSpace")
    below = cands[cands.bits_per_weight <= target_bits]
    if below.empty:
        low = cands.loc[cands.bits_per_weight.idxmin()]
        raise ValueError(
            f"target_bits={target_bits} is not achievable: the smallest achievable budget for these shapes is "
            f"{low.bits_per_weight:.4f} bits ({_describe(low)}); ask for at least that, or widen the SearchSpace"
        )
    window = below[below.bits_per_weight >= target_bits - tolerance]
    if window.empty:
        best = below.loc[below.bits_per_weight.idxmax()]
        raise ValueError(
            f"no config lands within tolerance={tolerance} below target_bits={target_bits}; the closest below is "
            f"{best.bits_per_weight:.4f} bits ({_describe(best)}); raise tolerance to at least "
            f"{target_bits - best.bits_per_weight:.3f}"
        )
    out = _exact_rows(_ranked(window, target_bits).head(max_rows), shapes, space, target_bits)
    out.index = pd.RangeIndex(1, len(out) + 1, name="rank")
    return out
