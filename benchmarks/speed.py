"""How long the default model's quantization takes, by phase, against an earlier commit, on this machine.

    python benchmarks/speed.py --base f7b097b          # two threads each; nothing else should run

Each run is a child process on one checkout, the same thread count for all, one after the other:

1. the base commit (checked out in a git worktree under artifacts/), the 2-bit preset;
2. this checkout, the 2-bit preset (its ``report.timings`` give the phases);
3. this checkout at one thread (``--one-thread``): its tensors must be byte-identical to run 2's;
4. this checkout, GPTQ's 2-bit preset on the same calibration windows: the VPTQ / GPTQ time ratio.

Runs 1 and 2 save their models; the parent compares the tensors' bytes and the per-linear relative proxy losses,
and each run measures its model's perplexity on the first ``--windows`` WikiText-2 test windows. The phases of run
2 are printed with their share of the time and their GFLOP/s, estimated from the shapes (see ``phase_flops``),
against a GEMM peak measured here at the same thread count. Writes ``benchmarks/results/speed.json`` and
``speed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from _bench import RESULTS, markdown_table

ROOT = Path(__file__).resolve().parents[1]

# One quantization in a child process. It uses only API that every commit since the speed work's base has.
RUNNER = r"""
import hashlib, json, sys, time
import torch
from safetensors.torch import load_file
from vptq_lab import calibration_windows, load_model, load_wikitext2, perplexity, quantize_, save_quantized
from vptq_lab.core.config import preset
from vptq_lab.core.methods import method_preset

job = json.loads(sys.argv[1])
model, tokenizer = load_model("default")
vptq = preset(job["bits"])
config = vptq if job["method"] == "vptq" else method_preset(job["method"], job["bits"])
text = load_wikitext2("validation", job["data_dir"])
calibration = calibration_windows(tokenizer, text, vptq.nsamples, vptq.seqlen, vptq.seed)
start = time.perf_counter()
report = quantize_(model, config, calibration, method=job["method"], progress=False)
out = {"seconds": time.perf_counter() - start, "timings": getattr(report, "timings", {})}
out["threads"] = torch.get_num_threads()
out["losses"] = {r.name: r.proxy_loss_rel for r in report.records}
if job.get("save"):
    start = time.perf_counter()
    save_quantized(model, tokenizer, job["save"], report.to_dict())
    out["save_seconds"] = time.perf_counter() - start
    tensors = load_file(f"{job['save']}/model.safetensors")
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    out["tensors_sha256"] = digest.hexdigest()
if job.get("windows"):
    out["perplexity"] = perplexity(model, tokenizer, max_windows=job["windows"], data_dir=job["data_dir"],
                                   progress=False).perplexity
print("RESULT " + json.dumps(out))
"""


def run_child(checkout: Path, threads: int, job: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": str(checkout)}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(job)], cwd=checkout, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"the run in {checkout} failed:\n{proc.stderr[-4000:]}")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return {**json.loads(line[len("RESULT ") :]), "wall_seconds": time.perf_counter() - start}


def worktree(commit: str) -> Path:
    """A detached worktree of ``commit`` under artifacts/ (made once, reused)."""
    folder = ROOT / "artifacts" / f"speed-base-{commit}"
    if not folder.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), commit], check=True)
    return folder


def gemm_peak(threads: int, n: int = 2048) -> float:
    """fp32 GFLOP/s of an n x n matmul at ``threads`` threads, best of 5."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    torch.set_num_threads(before)
    return 2 * n**3 / best / 1e9


def phase_flops(bits: int) -> dict[str, float]:
    """Floating-point operations of each phase of the ``bits`` preset on the default model, counted from the shapes
    (SmolLM2-135M: 30 blocks, hidden 576, MLP 1536, 3 KV heads of 64, calibration nsamples x seqlen tokens).

    - hessian: the stage passes, as quantized propagation runs them (a pass stops before its stage's first linear;
      linears quantized in an earlier stage are replayed): q/k/v once, attention three times, o once, gate/up once,
      plus each stage's ``XᵀX`` over the blocks on and below the diagonal (``gram``);
    - forward: the last pass (attention, down_proj);
    - codebooks: per codebook part, kmeans++ (k draws over at most max(16 k, 16384) points) and iters + 1 distance
      searches (``n k (2 v + 2)``);
    - linears: each column loop's searches and updates (``out in (in + blocksize)``), the no-feedback search, the
      residual pass, and the three proxy losses (``2 out in^2`` each, float64).
    """
    from vptq_lab.core.config import layer_plan, preset
    from vptq_lab.core.quantizer import part_shapes
    from vptq_lab.lab.budget import SMOLLM2_135M_SHAPES
    from vptq_lab.model.hessian import GRAM_BLOCK

    cfg = preset(bits)
    tokens, seqlen = cfg.nsamples * cfg.seqlen, cfg.seqlen
    shapes = {name.split(".", 3)[-1]: shape for name, shape in SMOLLM2_135M_SHAPES.items() if ".layers.0." in name}
    blocks = len(SMOLLM2_135M_SHAPES) // len(shapes)
    h, f = shapes["self_attn.q_proj"]
    linear = {name: 2.0 * out * inp * tokens for name, (out, inp) in shapes.items()}
    core = 2 * 2.0 * seqlen * h * tokens  # QKᵀ and AV over the whole window

    def gram(n: int) -> float:
        edges = list(range(0, n, GRAM_BLOCK)) + [n]
        sizes = [b - a for a, b in zip(edges, edges[1:])]
        return sum(2.0 * tokens * sizes[i] * sizes[j] for i in range(len(sizes)) for j in range(i + 1))

    qkv = sum(linear[f"self_attn.{p}_proj"] for p in "qkv")
    hessian = qkv + 3 * core + linear["self_attn.o_proj"] + linear["mlp.gate_proj"] + linear["mlp.up_proj"]
    hessian += 3 * gram(h) + gram(f)
    forward = core + linear["mlp.down_proj"]
    kmeans = linears = 0.0
    for out, inp in shapes.values():
        outlier_size, _, _ = layer_plan(cfg, inp)
        for cols, v, k in part_shapes(cfg, inp):
            n = cols * -(-out // v)
            kmeans += k * min(n, max(16 * k, 16384)) * 2 * v + (cfg.kmeans_iters + 1) * n * k * (2 * v + 2)
            searches = 3 if (cfg.k2 and cols != outlier_size) else 2  # no feedback, loop, (residual loop)
            linears += searches * n * k * (2 * v + 2)
            if cfg.k2 and cols != outlier_size:
                linears += (cfg.kmeans_iters + 2) * n * cfg.k2 * (2 * v + 2) + n * cfg.k2 * (2 * v + 2)
        loops = 2 if cfg.k2 else 1
        linears += loops * 2.0 * out * inp * (inp + cfg.blocksize) + 4 * 2.0 * out * inp * inp
    return {
        k: blocks * v
        for k, v in {"hessian": hessian, "forward": forward, "codebooks": kmeans, "linears": linears}.items()
    }


def compare_losses(base: dict[str, float], new: dict[str, float]) -> dict[str, float]:
    ratios = [new[name] / base[name] - 1 for name in base if base[name] > 0]
    return {
        "linears": len(ratios),
        "mean_relative_change": sum(ratios) / len(ratios),
        "worst_relative_change": max(ratios, key=abs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare against (checked out in a worktree)")
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=8, help="test windows of 2048 tokens for the perplexity")
    parser.add_argument("--data-dir", default=os.environ.get("VPTQ_LAB_DATA"), help="WikiText-2 raw folder")
    parser.add_argument("--one-thread", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--gptq", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not args.data_dir:
        parser.error("pass --data-dir (or set VPTQ_LAB_DATA): the runs calibrate and evaluate on WikiText-2")
    from vptq_lab.lab.results import code_commit

    scratch = ROOT / "artifacts" / "speed"
    scratch.mkdir(parents=True, exist_ok=True)
    base_tree = worktree(args.base)
    job = {"method": "vptq", "bits": args.bits, "data_dir": args.data_dir, "windows": args.windows}
    runs = {}
    print(f"GEMM peak at {args.threads} threads ...", flush=True)
    peak = gemm_peak(args.threads)
    for name, checkout, threads, extra in (
        ("base", base_tree, args.threads, {"save": str(scratch / "base")}),
        ("new", ROOT, args.threads, {"save": str(scratch / "new")}),
        ("new_one_thread", ROOT, 1, {"save": str(scratch / "new-1t"), "windows": 0}),
        ("gptq", ROOT, args.threads, {"method": "gptq", "windows": 0}),
    ):
        if (name == "new_one_thread" and not args.one_thread) or (name == "gptq" and not args.gptq):
            continue
        for folder in [extra.get("save")]:
            if folder and Path(folder).exists():
                subprocess.run(["rm", "-rf", folder], check=True)
        print(f"{name}: {checkout} at {threads} thread(s) ...", flush=True)
        runs[name] = run_child(checkout, threads, {**job, **extra})
        print(f"  {runs[name]['seconds']:.1f} s", flush=True)
    base, new = runs["base"], runs["new"]
    flops = phase_flops(args.bits)
    phases = []
    for phase, seconds in sorted(new["timings"].items(), key=lambda kv: -kv[1]):
        gflops = flops.get(phase, 0.0) / 1e9 / seconds if seconds and phase in flops else None
        phases.append(
            {
                "phase": phase,
                "seconds": round(seconds, 1),
                "share": round(seconds / new["seconds"], 3),
                "gflop": round(flops[phase] / 1e9, 1) if phase in flops else None,
                "gflop_per_s": round(gflops, 1) if gflops else None,
                "of_peak": round(gflops / peak, 3) if gflops else None,
            }
        )
    if "save_seconds" in new:
        phases.append({"phase": "save (I/O)", "seconds": round(new["save_seconds"], 1)})
    result = {
        "commit": code_commit(),
        "base_commit": args.base,
        "date": time.strftime("%Y-%m-%d"),
        "threads": args.threads,
        "bits": args.bits,
        "gemm_peak_gflop_per_s": round(peak, 1),
        "base_seconds": round(base["seconds"], 1),
        "new_seconds": round(new["seconds"], 1),
        "speedup": round(base["seconds"] / new["seconds"], 3),
        "identical_tensors": base["tensors_sha256"] == new["tensors_sha256"],
        "identical_across_threads": (
            new["tensors_sha256"] == runs["new_one_thread"]["tensors_sha256"] if "new_one_thread" in runs else None
        ),
        "new_one_thread_seconds": round(runs["new_one_thread"]["seconds"], 1) if "new_one_thread" in runs else None,
        "proxy_loss": compare_losses(base["losses"], new["losses"]),
        "perplexity": {"base": base.get("perplexity"), "new": new.get("perplexity"), "windows": args.windows},
        "gptq_seconds": round(runs["gptq"]["seconds"], 1) if "gptq" in runs else None,
        "vptq_over_gptq": round(new["seconds"] / runs["gptq"]["seconds"], 3) if "gptq" in runs else None,
        "phases": phases,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "speed.md").write_text(render(result))
    print(render(result))


def render(r: dict) -> str:
    ppl = r["perplexity"]
    lines = [
        f"# Quantization speed: the {r['bits']}-bit preset on the default model, {r['threads']} threads",
        "",
        f"Made by `python benchmarks/speed.py --base {r['base_commit']}` at {r['commit']} on {r['date']}, "
        "both runs on this machine one after the other, nothing else running.",
        "",
        "| | base | new |",
        "|---|---|---|",
        f"| commit | {r['base_commit']} | {r['commit']} |",
        f"| quantization (s) | {r['base_seconds']} | {r['new_seconds']} |",
        f"| perplexity, first {ppl['windows']} test windows | {ppl['base']:.4f} | {ppl['new']:.4f} |",
        "",
        f"- Speedup: **{r['speedup']}x**. Tensors byte-identical to the base's: {r['identical_tensors']}.",
        f"- Per-linear relative proxy loss, new against base over {r['proxy_loss']['linears']} linears: mean change "
        f"{r['proxy_loss']['mean_relative_change']:+.3%}, worst {r['proxy_loss']['worst_relative_change']:+.3%}.",
    ]
    if r["identical_across_threads"] is not None:
        lines.append(
            f"- At one thread the new code took {r['new_one_thread_seconds']} s; its tensors are byte-identical to "
            f"the {r['threads']}-thread run's: {r['identical_across_threads']}."
        )
    if r["gptq_seconds"] is not None:
        lines.append(
            f"- GPTQ's 2-bit preset, same calibration, new code: {r['gptq_seconds']} s; VPTQ / GPTQ = "
            f"{r['vptq_over_gptq']}."
        )
    lines += [
        "",
        f"Phases of the new run (wall clock; GFLOP estimated from the shapes; GEMM peak here: "
        f"{r['gemm_peak_gflop_per_s']} GFLOP/s at {r['threads']} threads):",
        "",
        markdown_table(pd.DataFrame(r["phases"]).astype(object).fillna("")),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
