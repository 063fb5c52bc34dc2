"""Reliability checks run once on the default model (issues 3 and 8), each as separate processes.

Three 2-bit quantizations of SmolLM2-135M with the same preset and seed:

* ``reload``  (process C): quantize in this process, evaluate the model in memory, save it, load the folder
  back and evaluate again on the same windows. In-memory and reloaded perplexity must be equal.
* ``resume``  (process B, then B'): ``vptq-lab quantize --checkpoint-dir`` killed with SIGKILL after a random
  block, then ``--resume``; the folder is evaluated from disk.
* run A is ``benchmarks/memory.py --save FOLDER`` (it also records peak RSS).
* ``reload-distilled``: the 2-bit preset (quantized here, or its block checkpoints from ``--from-checkpoints``, copied
  first), then end-to-end distillation (``--steps``, cosine from lr 5e-4 with the head trained: the best 2-bit recipe
  with fewer steps), then
  perplexity in memory, after a float32 save and reload, and after the default 16-bit save and reload.
* ``verify``: A, B and C must hold bit-identical tensors (A vs C: two uninterrupted processes; A vs B: an
  interrupted and resumed run against an uninterrupted one), and equal perplexity from disk.

    OMP_NUM_THREADS=1 python benchmarks/memory.py --save work/A
    OMP_NUM_THREADS=1 python experiments/default_model_checks.py reload --work work
    OMP_NUM_THREADS=1 python experiments/default_model_checks.py resume --work work
    OMP_NUM_THREADS=1 python experiments/default_model_checks.py verify --work work
    OMP_NUM_THREADS=1 python experiments/default_model_checks.py reload-distilled --work work \
        --from-checkpoints artifacts/accuracy-checkpoints/vptq2-e2e-cos240-lr5e-4

Results go to ``benchmarks/results/default_model_checks.json`` (one key per step, merged).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import _bench_path  # noqa: F401  (puts benchmarks/ on sys.path, for _bench)
from _bench import RESULTS

OUT = RESULTS / "default_model_checks.json"
EVAL_WINDOWS = 8  # WikiText-2 test windows of 2048 tokens for every perplexity here


def _record(step: str, data: dict) -> None:
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    data = {
        **data,
        "command": shlex.join(["python", *sys.argv]),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "VPTQ_LAB_DATA")},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    results[step] = data
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({step: data}, indent=2))


def _eval_folder(folder: Path) -> dict:
    """Perplexity of a saved folder, in a fresh process (the CLI)."""
    cmd = [
        sys.executable,
        "-m",
        "vptq_lab.cli",
        "eval",
        "--model",
        str(folder),
        "--max-windows",
        str(EVAL_WINDOWS),
        "--json",
        "--no-progress",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"eval of {folder} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _from_disk(folder: Path, test, window, logits_mem) -> tuple[float, float]:
    """``folder`` loaded back with ``load_model``: its perplexity on the check's windows of ``test``, and the largest
    absolute difference between its logits on ``window`` and ``logits_mem`` (the in-memory model's)."""
    import torch

    from vptq_lab.io.models import load_model
    from vptq_lab.lab.eval import perplexity

    reloaded, tokenizer = load_model(str(folder))
    found = perplexity(reloaded, tokenizer, test, max_windows=EVAL_WINDOWS, progress=False)
    with torch.no_grad():
        diff = float((logits_mem - reloaded(window).logits).abs().max())
    return found.perplexity, diff


def cmd_reload(work: Path) -> None:
    import torch

    from vptq_lab.core.config import preset
    from vptq_lab.io.checkpoint import save_quantized
    from vptq_lab.io.data import calibration_windows, load_wikitext2, tokenize
    from vptq_lab.io.models import load_model
    from vptq_lab.lab.eval import perplexity, window_nll
    from vptq_lab.model.calibrate import quantize_

    config = preset(2)
    model, tokenizer = load_model("default")
    calib = calibration_windows(tokenizer, load_wikitext2("validation"), config.nsamples, config.seqlen, config.seed)
    t0 = time.perf_counter()
    report = quantize_(model, config, calib, progress=False)
    quant_s = time.perf_counter() - t0
    test = load_wikitext2("test")
    window = tokenize(tokenizer, test)[:, :2048]
    in_memory = perplexity(model, tokenizer, test, max_windows=EVAL_WINDOWS, progress=False)
    nll_mem = window_nll(model, window)
    with torch.no_grad():
        logits_mem = model(window).logits
    # float32: this check is about an exact copy (the 16-bit default is measured by experiments/storage_dtype.py)
    folder = save_quantized(model, tokenizer, work / "C", report=report.to_dict(), dtype=torch.float32)
    del model
    from_disk, diff = _from_disk(folder, test, window, logits_mem)
    _record(
        "reload",
        {
            "what": "2-bit preset quantized in this process; perplexity in memory, then after save -> load_model",
            "bits_per_weight": round(report.total_bits_per_weight(), 4),
            "quantize_seconds": round(quant_s, 1),
            "windows": EVAL_WINDOWS,
            "seqlen": 2048,
            "perplexity_in_memory": in_memory.perplexity,
            "perplexity_reloaded": from_disk,
            "equal": in_memory.perplexity == from_disk,
            "first_window_nll_in_memory": float(nll_mem),
            "first_window_max_abs_logit_diff": diff,
            "folder": str(folder),
        },
    )


def cmd_reload_distilled(work: Path, steps: int, source: Path | None) -> None:
    import shutil

    import torch

    from vptq_lab.core.config import preset
    from vptq_lab.io.checkpoint import save_quantized
    from vptq_lab.io.data import calibration_windows, load_wikitext2, split_heldout, tokenize
    from vptq_lab.io.models import load_model
    from vptq_lab.lab.eval import perplexity
    from vptq_lab.lab.recipes import DISTILL_WINDOWS
    from vptq_lab.model.calibrate import quantize_
    from vptq_lab.model.distill import DistillConfig, distill_

    config = preset(2).replace(finetune_batch=1)  # as benchmarks/accuracy.py quantizes (its checkpoints resume here)
    ck = work / "D-checkpoints"
    if source is not None and not ck.exists():
        if not (source / "progress.json").is_file():
            raise SystemExit(f"{source} holds no block checkpoints (progress.json): pass a --checkpoint-dir folder")
        shutil.copytree(source, ck)  # a copy: the source folder is left as it is
    model, tokenizer = load_model("default")
    valid = load_wikitext2("validation")
    calib = calibration_windows(tokenizer, valid, config.nsamples, config.seqlen, config.seed)
    t0 = time.perf_counter()
    quantize_(model, config, calib, progress=False, checkpoint_dir=ck, resume=ck.exists())
    quant_s = time.perf_counter() - t0
    teacher, _ = load_model("default")
    train, held = split_heldout(tokenize(tokenizer, valid), **DISTILL_WINDOWS, seed=config.seed)
    distill = DistillConfig(steps=steps, lr=5e-4, schedule="cosine", eval_every=max(1, steps // 2), train_head=True)
    report = distill_(model, teacher, train, held, distill, progress=False)
    del teacher
    test = load_wikitext2("test")
    window = tokenize(tokenizer, test)[:, :2048]
    in_memory = perplexity(model, tokenizer, test, max_windows=EVAL_WINDOWS, progress=False)
    with torch.no_grad():
        logits_mem = model(window).logits
    found = {}
    for name, dtype in (("float32", torch.float32), ("default", None)):
        folder = save_quantized(model, tokenizer, work / f"D-{name}", overwrite=True, dtype=dtype)
        again, diff = _from_disk(folder, test, window, logits_mem)
        found[name] = {
            "perplexity_reloaded": again,
            "first_window_max_abs_logit_diff": diff,
            "stored_dtype": json.loads((folder / "config.json").read_text())["dtype"],
            "folder": str(folder),
        }
    _record(
        "reload-distilled",
        {
            "what": "2-bit preset + end-to-end distillation in this process; perplexity in memory, then after "
            "save -> load_model with float32 storage (an exact copy) and with the default 16-bit storage",
            "quantize_seconds": round(quant_s, 1),
            "quantization_from": str(source) if source is not None else None,
            "distill": {"config": distill.to_dict(), "best": report.best, "seconds": report.seconds},
            "windows": EVAL_WINDOWS,
            "seqlen": 2048,
            "perplexity_in_memory": in_memory.perplexity,
            "reloaded": found,
            "float32_equal": found["float32"]["perplexity_reloaded"] == in_memory.perplexity,
        },
    )


def _progress(ck: Path) -> int:
    from vptq_lab.model.resume import PROGRESS

    try:
        return int(json.loads((ck / PROGRESS).read_text())["completed"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def cmd_resume(work: Path, seed: int | None) -> None:
    rng = random.Random(seed)
    kill_after, extra_wait = rng.randint(1, 28), rng.uniform(0.0, 20.0)
    out, ck = work / "B", work / "B-checkpoints"
    cmd = [
        sys.executable,
        "-m",
        "vptq_lab.cli",
        "quantize",
        "--model",
        "default",
        "--bits",
        "2",
        "--out",
        str(out),
        "--checkpoint-dir",
        str(ck),
        "--json",
        "--no-progress",
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while _progress(ck) < kill_after:
        if proc.poll() is not None:
            raise SystemExit(f"the run ended before the kill: {proc.communicate()[1][-3000:]}")
        time.sleep(0.2)
    time.sleep(extra_wait)  # land somewhere inside the next block
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    killed_s = time.perf_counter() - t0
    done_at_kill = _progress(ck)
    out_exists_after_kill = out.exists()
    t1 = time.perf_counter()
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, check=False)
    if resumed.returncode != 0:
        raise SystemExit(f"resume failed:\n{resumed.stderr[-3000:]}")
    resume_s = time.perf_counter() - t1
    _record(
        "resume",
        {
            "what": "vptq-lab quantize --bits 2 --checkpoint-dir, SIGKILL after a random block, then --resume",
            "returncode_of_killed_run": proc.returncode,
            "killed_after_blocks_completed": kill_after,
            "extra_wait_s": round(extra_wait, 2),
            "blocks_completed_at_kill": done_at_kill,
            "out_folder_existed_after_kill": out_exists_after_kill,
            "seconds_before_kill": round(killed_s, 1),
            "resume_seconds": round(resume_s, 1),
            "folder": str(out),
        },
    )


def cmd_verify(work: Path) -> None:
    from vptq_lab.io.checkpoint import compare_checkpoints

    folders = {name: work / name for name in ("A", "B", "C")}
    missing = [str(f) for f in folders.values() if not (f / "model.safetensors").is_file()]
    if missing:
        raise SystemExit(f"missing runs: {missing}; run memory.py --save, reload and resume first (see --help)")
    evals = {name: _eval_folder(f) for name, f in folders.items()}
    a_vs_c, a_vs_b = compare_checkpoints(folders["A"], folders["C"]), compare_checkpoints(folders["A"], folders["B"])
    ppl = {name: e["perplexity"] for name, e in evals.items()}
    _record(
        "verify",
        {
            "what": "A = memory.py --save (uninterrupted), B = killed + resumed CLI run, C = in-process run (reload)",
            "determinism_two_processes_A_vs_C": a_vs_c,
            "kill_resume_A_vs_B": a_vs_b,
            "perplexity_from_disk": ppl,
            "windows": EVAL_WINDOWS,
            "all_perplexities_equal": len(set(ppl.values())) == 1,
            "passed": a_vs_c["identical"] and a_vs_b["identical"] and len(set(ppl.values())) == 1,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("reload", "resume", "verify", "reload-distilled"))
    parser.add_argument("--work", type=Path, required=True, help="scratch folder holding A, B and C (kept)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the kill point (default: random)")
    parser.add_argument("--steps", type=int, default=20, help="reload-distilled: distillation steps")
    parser.add_argument(
        "--from-checkpoints", type=Path, default=None, help="reload-distilled: block checkpoints of the 2-bit preset"
    )
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps {args.steps} must be >= 1")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.step == "reload":
        cmd_reload(args.work)
    elif args.step == "reload-distilled":
        cmd_reload_distilled(args.work, args.steps, args.from_checkpoints)
    elif args.step == "resume":
        cmd_resume(args.work, args.seed)
    else:
        cmd_verify(args.work)


if __name__ == "__main__":
    main()
