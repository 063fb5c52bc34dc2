"""Mixed bit allocation for a model: measure each linear's sensitivity on a ladder of configs, then give each linear
the config that minimises the predicted cost within an average budget (:mod:`vptq_lab.core.allocate`).

    from vptq_lab.lab.allocation import model_sensitivity, allocate_mixed

    table = model_sensitivity("default")                 # cached: about ten minutes the first time on 2 cores
    found = allocate_mixed(table, budget=1.985)          # a MixedConfig, each linear's rung, bits and cost
    quantize_(model, found.config, calibration)

The table holds, per linear and rung, the exact bits (all overhead) and the predicted KL
(:mod:`vptq_lab.model.sensitivity`); it is cached in the cache folder under a key made of the model, the ladder,
the calibration and the results version, and a killed measurement resumes from its last finished block.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vptq_lab.core.allocate import allocate
from vptq_lab.core.config import MixedConfig, VPTQConfig, preset
from vptq_lab.errors import VPTQLabError

__all__ = [
    "LADDER",
    "FISHER_WINDOWS",
    "ladder",
    "model_sensitivity",
    "sensitivity_cache_file",
    "allocate_mixed",
    "MixedAllocation",
    "uniform_bits",
    "uniform_bits_of_rung",
    "role_scale_from_check",
    "read_role_scale",
]

# The candidate configs, from about 1.4 to 4.5 bits per weight on the default model (all overhead): the presets
# and the same families one step apart. Every rung shares the presets' calibration and run-wide settings.
LADDER: dict[str, dict[str, Any]] = {
    "1.40 v6 k256": {"vector_lens": (-1, 6), "num_centroids": (-1, 256), "group_num": 1},
    "1.70 v5 k256": {"num_centroids": (-1, 256)},
    "1.99 v5 k512 (2-bit preset)": {},
    "2.40 v4 k512": {"vector_lens": (-1, 4)},
    "2.96 (3-bit preset)": "3",
    "3.38 v4 k512 + res 16": {"preset": 3, "vector_lens": (2, 4), "num_res_centroids": (-1, 16)},
    "3.96 (4-bit preset)": "4",
    "4.50 v4 k512 + res 256": {"preset": 4, "num_res_centroids": (-1, 256)},
}
FISHER_WINDOWS = 8  # calibration windows of 512 tokens the output gradients average over


def ladder() -> list[tuple[str, VPTQConfig]]:
    """The rungs of :data:`LADDER` as ``(name, VPTQConfig)``, cheapest first."""
    rungs = []
    for name, spec in LADDER.items():
        if isinstance(spec, str):
            rungs.append((name, preset(int(spec))))
            continue
        spec = dict(spec)
        base = preset(spec.pop("preset", 2))
        rungs.append((name, base.replace(**spec)))
    return rungs


def _key(model: str, nsamples: int, seqlen: int) -> str:
    from vptq_lab.io.checkpoint import FORMAT_VERSION
    from vptq_lab.lab.results import RESULTS_VERSION

    what = {
        "model": model,
        "ladder": [(n, c.to_dict()) for n, c in ladder()],
        "calibration": [nsamples, seqlen],
        "fisher_windows": FISHER_WINDOWS,
        "versions": [RESULTS_VERSION, FORMAT_VERSION],
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def sensitivity_cache_file(model: str = "default") -> Path:
    """Where :func:`model_sensitivity` caches the table of ``model``: when this file exists, the table is read, not
    computed."""
    from vptq_lab.io.models import cache_dir

    base = preset(2)
    return cache_dir() / "sensitivity" / f"{_key(model, base.nsamples, base.seqlen)}.json"


def model_sensitivity(model: str = "default", *, data_dir: str | None = None, progress: bool = True) -> pd.DataFrame:
    """The sensitivity table of ``model`` ("default", a folder or a hub id) on the :data:`LADDER`: one row per linear
    and rung with ``linear``, ``block``, ``role``, ``rung``, ``out``, ``in``, ``bits``, ``proxy_loss_rel``,
    ``proxy_loss`` and ``predicted_kl``. Calibration: the 2-bit preset's WikiText-2 validation windows; the output
    gradients average over the first :data:`FISHER_WINDOWS` of them. Cached (module docstring)."""
    from vptq_lab.io.data import calibration_windows, load_wikitext2
    from vptq_lab.io.models import load_model
    from vptq_lab.model.sensitivity import output_fisher, sensitivity_table

    done = sensitivity_cache_file(model)
    folder = done.parent
    base = preset(2)
    if done.is_file():
        return pd.DataFrame(json.loads(done.read_text()))
    net, tokenizer = load_model(model)
    text = load_wikitext2("validation", data_dir)
    calibration = calibration_windows(tokenizer, text, base.nsamples, base.seqlen, base.seed)
    fisher = output_fisher(net, calibration[:FISHER_WINDOWS], progress=progress)
    partial = done.with_suffix(".partial.jsonl")
    rows = sensitivity_table(net, calibration, fisher, ladder(), progress=progress, rows_file=partial)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows))
    tmp.replace(done)  # atomic: the table exists whole or not at all
    partial.unlink(missing_ok=True)
    return pd.DataFrame(rows)


def uniform_bits(table: pd.DataFrame, config: VPTQConfig) -> float:
    """The model's bits per weight with ``config`` on every linear of the table (size-weighted, all overhead)."""
    from vptq_lab.core.bits import bits_per_weight

    linears = table.drop_duplicates("linear")
    sizes = linears["out"] * linears["in"]
    bits = [
        bits_per_weight(config, (o, i), mode="paper").bits_per_weight for o, i in zip(linears["out"], linears["in"])
    ]
    return float((pd.Series(bits, index=linears.index) * sizes).sum() / sizes.sum())


def uniform_bits_of_rung(table: pd.DataFrame, rung: str) -> float:
    """The model's bits per weight with every linear on ``rung`` of the table (size-weighted, all overhead)."""
    rows = table[table["rung"] == rung]
    sizes = rows["out"] * rows["in"]
    return float((rows["bits"] * sizes).sum() / sizes.sum())


@dataclass(frozen=True)
class MixedAllocation:
    """:func:`allocate_mixed`'s answer: the config per linear, the rung each linear got, the mean bits per weight
    (all overhead) and the summed predicted cost."""

    config: MixedConfig
    rungs: dict[str, str]
    bits: float
    cost: float

    def counts(self) -> dict[str, int]:
        """How many linears each rung got, cheapest rung first."""
        return {r: sum(1 for x in self.rungs.values() if x == r) for r in LADDER if r in self.rungs.values()}


def role_scale_from_check(check: pd.DataFrame) -> dict[str, float]:
    """Per role, how far the measured KL of a linear quantized alone is from its prediction: the geometric mean of
    ``measured_kl / predicted_kl`` over a check's rows (``benchmarks/sensitivity.py`` measures one). Multiplying a
    role's predicted KL by it (``allocate_mixed(..., role_scale=)``) corrects the prediction's scale per role."""
    need = {"role", "measured_kl", "predicted_kl"}
    if not need <= set(check.columns):
        raise VPTQLabError(f"a sensitivity check needs the columns {sorted(need)}; this one has {list(check.columns)}")
    usable = check[(check.measured_kl > 0) & (check.predicted_kl > 0)]
    if usable.empty:
        raise VPTQLabError("the sensitivity check has no row with a positive measured and predicted KL")
    logs = (usable.measured_kl / usable.predicted_kl).map(math.log)
    return {role: round(math.exp(v), 4) for role, v in logs.groupby(usable.role).mean().items()}


def read_role_scale(path: str | Path) -> dict[str, float]:
    """A role-scale JSON file, ``{"v": 0.25, "k": 0.46, ...}`` (role -> factor on its predicted KL), checked."""
    path = Path(path)
    if not path.is_file():
        raise VPTQLabError(f'role-scale file {path} does not exist: give a JSON file such as {{"v": 0.5}}')
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise VPTQLabError(f'role-scale file {path} is not JSON ({exc}): write it as {{"v": 0.5}}') from exc
    if not isinstance(data, dict):
        raise VPTQLabError(f'role-scale file {path} must hold one JSON object, role -> factor, e.g. {{"v": 0.5}}')
    scale = {str(k): v for k, v in data.items()}
    _check_factors(scale)
    return scale


def _check_factors(role_scale: Mapping[str, Any]) -> None:
    for role, factor in role_scale.items():
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < math.inf:
            raise VPTQLabError(f"role_scale[{role!r}] = {factor!r}: a factor must be a positive finite number")


def _scaled_costs(table: pd.DataFrame, cost: str, role_scale: Mapping[str, float] | None) -> pd.Series:
    """``table[cost]``, each row multiplied by its role's factor in ``role_scale`` (1 for a role it does not name)."""
    if not role_scale:
        return table[cost]
    roles = set(table.role)
    unknown = sorted(set(role_scale) - roles)
    if unknown:
        raise VPTQLabError(f"role_scale names {unknown}, which this model lacks: its roles are {sorted(roles)}")
    _check_factors(role_scale)
    return table[cost] * table.role.map(lambda r: float(role_scale.get(r, 1.0)))


def allocate_mixed(
    table: pd.DataFrame, budget: float, cost: str = "predicted_kl", role_scale: Mapping[str, float] | None = None
) -> MixedAllocation:
    """Each linear gets the rung of least summed ``cost`` within ``budget`` average bits per weight (all overhead,
    size-weighted). The config's default is the rung most linears get; the others are listed per linear.
    ``role_scale``: role (``q``, ``v``, ``down``, ...) -> a factor on that role's cost, for example
    :func:`role_scale_from_check` of a measured check; the reported cost is then the scaled one."""
    rungs = dict(ladder())
    table = table.assign(**{cost: _scaled_costs(table, cost, role_scale)})
    names = list(dict.fromkeys(table.linear))
    order = list(rungs)
    by = table.set_index(["linear", "rung"])
    missing = [(n, r) for n in names for r in order if (n, r) not in by.index]
    if missing:
        raise VPTQLabError(f"the sensitivity table lacks {len(missing)} rows, e.g. {missing[0]}: measure it again")
    costs = {n: [float(by.loc[(n, r), cost]) for r in order] for n in names}
    bits = {n: [float(by.loc[(n, r), "bits"]) for r in order] for n in names}
    sizes = {n: int(by.loc[(n, order[0]), "out"] * by.loc[(n, order[0]), "in"]) for n in names}
    try:
        found = allocate(costs, bits, sizes, budget)
    except ValueError as exc:
        raise VPTQLabError(str(exc)) from exc
    chosen = {n: order[j] for n, j in found.choice.items()}
    common = max(order, key=lambda r: sum(1 for c in chosen.values() if c == r))
    mixed = MixedConfig(rungs[common], {n: rungs[r] for n, r in chosen.items() if r != common})
    return MixedAllocation(mixed, chosen, found.bits, found.cost)
