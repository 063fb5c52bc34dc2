"""Projected time and memory per rank for LLaMA-2 7B/13B/70B, from the costs measured on the default model.

Reads ``benchmarks/results/scaling_costs.json`` (``benchmarks/scaling_costs.py``) and writes
``benchmarks/results/scaling_projection.md``, the tables of docs/scaling.md. The cost model (docs/scaling.md):

- k-means of one codebook part: ``c_km x weights x k x iterations``; the column loop and assignment of one linear:
  ``c_loop x weights x k``; the forward and Hessian passes of a block: ``c_fwd x tokens x block weights``.
  The three constants are fitted on the measured 2-bit preset (v5/k512, 10 iterations, 32 x 512 tokens).
- N ranks: the passes split by calibration batch (divide by N); per stage, the k-means parts and then the linears
  are packed onto ranks, so a stage takes at least its largest part and its largest linear.

    python benchmarks/scaling_projection.py
"""

from __future__ import annotations

import json

from _bench import RESULTS

MEASURED = json.loads((RESULTS / "scaling_costs.json").read_text())
K, ITERS, TOKENS, GROUPS = 512, 10, 32 * 512, 2  # the measured run's preset and calibration

# (hidden, intermediate, kv width, blocks) per model
MODELS = {
    "SmolLM2-135M": (576, 1536, 192, 30),
    "LLaMA-2-7B": (4096, 11008, 4096, 32),
    "LLaMA-2-13B": (5120, 13824, 5120, 40),
    "LLaMA-2-70B": (8192, 28672, 1024, 80),
}


def stages(hidden: int, inter: int, kv: int) -> list[list[tuple[int, int]]]:
    """(out, in) of each linear, per stage."""
    return [
        [(hidden, hidden), (kv, hidden), (kv, hidden)],
        [(hidden, hidden)],
        [(inter, hidden), (inter, hidden)],
        [(hidden, inter)],
    ]


def constants() -> tuple[float, float, float]:
    shapes, per = MEASURED["shapes"], MEASURED["per_linear_seconds"]
    weights = {role: out * n for role, (out, n) in shapes.items()}
    km = sum(per[r]["kmeans"] for r in per) / sum(weights[r] * K * ITERS for r in per)
    loop = sum(s for r in per for step, s in per[r].items() if step != "kmeans") / sum(weights[r] * K for r in per)
    block = sum(weights.values())
    passes = MEASURED["seconds_per_block_hessian_passes"] + MEASURED["seconds_per_block_forward"]
    return km, loop, passes / (TOKENS * block)


def block_seconds(model: str, ranks: int, k: int, iters: int, tokens: int, groups: int) -> float:
    """One block on ``ranks`` ranks (one core or device each, at the measured speed)."""
    c_km, c_loop, c_fwd = constants()
    total = 0.0
    for stage in stages(*MODELS[model][:3]):
        w = [out * n for out, n in stage]
        total += c_fwd * tokens * sum(w) / ranks
        parts = [c_km * x / groups * k * iters for x in w for _ in range(groups)]
        total += max(sum(parts) / ranks, max(parts))
        loops = [c_loop * x * k for x in w]
        total += max(sum(loops) / ranks, max(loops))
    return total


def memory_gb(model: str, tokens: int, ranks: int, batches: int) -> dict[str, float]:
    """Per-rank device memory while one block is worked on (fp32 compute, float64 Hessians)."""
    hidden, inter, kv, _ = MODELS[model]
    block = sum(out * n for stage in stages(hidden, inter, kv) for out, n in stage)
    depth = max(batches // ranks - 1, 0).bit_length() + 1  # partial sums the pairwise tree keeps
    return {
        "block weights fp32": 4 * block / 1e9,
        "activations (in + out, fp32)": 2 * 4 * tokens * hidden / ranks / 1e9,
        "largest Hessian + pairwise partial sums (f64)": 8 * inter**2 * (1 + depth) / 1e9,
    }


def main() -> None:
    c_km, c_loop, c_fwd = constants()
    lines = [
        f"Constants fitted on `scaling_costs.json` (commit {MEASURED['commit']}, {MEASURED['threads']} thread, "
        f"beside: {MEASURED['beside']}): c_km = {c_km:.3e} s, c_loop = {c_loop:.3e} s, c_fwd = {c_fwd:.3e} s.",
        "",
        "| model | recipe | calibration | 1 core | 8 cores (ranks) | 64 cores (ranks) |",
        "|---|---|---|---|---|---|",
    ]
    recipes = [("v5/k512, 2 groups, 10 it", 512, 10, 2), ("v6/k4096, 1 group, 10 it", 4096, 10, 1)]
    for model, (_, _, _, blocks) in MODELS.items():
        for name, k, iters, groups in recipes:
            for tokens, calib in ((32 * 512, "32 x 512"), (128 * 2048, "128 x 2048")):
                cells = [blocks * block_seconds(model, r, k, iters, tokens, groups) / 3600 for r in (1, 8, 64)]
                lines.append(f"| {model} | {name} | {calib} | " + " | ".join(f"{h:,.1f} h" for h in cells) + " |")
    lines += [
        "",
        "| model | ranks | block weights fp32 | activations | largest H + partial sums | total |",
        "|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        for ranks in (1, 4, 8):
            mem = memory_gb(model, 128 * 2048, ranks, 32)
            cells = [f"{v:.2f} GB" for v in mem.values()]
            lines.append(f"| {model} | {ranks} | " + " | ".join(cells) + f" | {sum(mem.values()):.2f} GB |")
    (RESULTS / "scaling_projection.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
