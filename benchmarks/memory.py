"""Peak memory and wall time of quantizing a model with ``quantize_``.

    python benchmarks/memory.py          # the default model at the 2-bit preset (long on CPU)
    python benchmarks/memory.py --tiny   # a tiny random model: checks the script in seconds

Peak RSS is measured two ways: ``resource.getrusage(...).ru_maxrss`` (the kernel's
high-water mark for the whole process, imports included) and a psutil thread that
samples RSS every 20 ms (its per-phase peaks show *where* memory goes: loading,
calibration, block capture, quantization). Results, with the exact command and
the config, go to ``benchmarks/results/memory_2bit.json`` (``memory_2bit_cpu-smoke.json``
with ``--tiny``, which git ignores).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

RESULTS = Path(__file__).resolve().parent / "results"
MB = 2**20


class RssSampler:
    """Samples this process's RSS in a thread; ``phase(name)`` starts a new per-phase peak."""

    def __init__(self, interval: float = 0.02):
        self.proc, self.interval = psutil.Process(), interval
        self.peaks: dict[str, int] = {}
        self.current = "start"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss = self.proc.memory_info().rss
        self.peaks[self.current] = max(self.peaks.get(self.current, 0), rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def phase(self, name: str) -> None:
        self._sample()
        self.current = name
        self._sample()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def ru_maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="a tiny random model and config: checks the script only")
    p.add_argument("--model", default="default", help="'default' (SmolLM2-135M), a model folder or a hub id")
    p.add_argument("--bits", type=int, choices=(2, 3, 4), default=2, help="preset (default 2)")
    p.add_argument("--nsamples", type=int, default=None, help="override the preset's calibration nsamples (32)")
    p.add_argument("--seqlen", type=int, default=None, help="override the preset's calibration seqlen (512)")
    p.add_argument(
        "--save",
        type=Path,
        default=None,
        help="also save the quantized model here (after the measurement; a new folder)",
    )
    p.add_argument("--data-dir", default=None, help="wikitext-2-raw folder (default $VPTQ_LAB_DATA, then fallbacks)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    return p.parse_args()


def _setup(args: argparse.Namespace, scratch: Path):
    from vptq_lab.core.config import VPTQConfig, preset

    if args.tiny:
        from vptq_lab.testing import save_tiny_model, tiny_llama, tiny_tokenizer

        tok = tiny_tokenizer()
        folder = save_tiny_model(scratch / "tiny", tiny_llama(vocab_size=len(tok), hidden=64, layers=2), tok)
        config = VPTQConfig(
            **{
                **preset(args.bits).to_dict(),
                "num_centroids": (-1, 64),
                "num_res_centroids": (-1, -1),
                "nsamples": 8,
                "seqlen": 64,
                "kmeans_iters": 3,
            }
        )
        return str(folder), config
    config = preset(args.bits)
    changes = {k: v for k, v in (("nsamples", args.nsamples), ("seqlen", args.seqlen)) if v is not None}
    return args.model, config.replace(**changes) if changes else config


def main() -> None:
    args = parse_args()
    if args.save is not None and args.save.exists():
        sys.exit(f"memory.py: --save {args.save} already exists: choose a new folder (nothing was run)")
    from vptq_lab.io.data import calibration_windows, load_wikitext2
    from vptq_lab.io.models import load_model
    from vptq_lab.model.calibrate import quantize_

    wall: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch, RssSampler() as rss:
        model_name, config = _setup(args, Path(scratch))
        rss.phase("after_imports")
        t0 = time.perf_counter()
        rss.phase("load_model")
        model, tokenizer = load_model(model_name)
        wall["load_model"] = time.perf_counter() - t0
        rss.phase("calibration")
        t1 = time.perf_counter()
        data = load_wikitext2("validation", args.data_dir)
        calib = calibration_windows(tokenizer, data, config.nsamples, config.seqlen, config.seed)
        wall["calibration"] = time.perf_counter() - t1
        rss.phase("quantize")
        t2 = time.perf_counter()
        report = quantize_(model, config, calib, progress=True)
        wall["quantize"] = time.perf_counter() - t2
        if args.save is not None:
            from vptq_lab.io.checkpoint import save_quantized

            rss.phase("save")
            t3 = time.perf_counter()
            save_quantized(model, tokenizer, args.save, report.to_dict())
            wall["save"] = time.perf_counter() - t3
        rss.phase("end")
    wall = {k: round(v, 2) for k, v in wall.items()}
    result = {
        "command": shlex.join(["python", *sys.argv]),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "VPTQ_LAB_DATA")},
        "model": model_name if not args.tiny else "tiny random llama (hidden 64, 2 blocks)",
        "tiny": args.tiny,
        "config": config.to_dict(),
        "calibration": {"source": data.source, "comparable": data.comparable, "shape": list(calib.shape)},
        "peak_rss_mb": {
            "ru_maxrss": round(ru_maxrss_bytes() / MB, 1),
            "sampled_max": round(max(rss.peaks.values()) / MB, 1),
            "sampled_per_phase": {k: round(v / MB, 1) for k, v in rss.peaks.items()},
        },
        "wall_s": {**wall, "total": round(sum(wall.values()), 2)},
        "quantize_report_seconds": report.seconds,
        "saved_to": str(args.save) if args.save is not None else None,
        "bits_per_weight": round(report.total_bits_per_weight(), 4),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "total_ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        },
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"memory_{args.bits}bit{'_cpu-smoke' if args.tiny else ''}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps({"written": str(path), "peak_rss_mb": result["peak_rss_mb"], "wall_s": result["wall_s"]}, indent=2)
    )


if __name__ == "__main__":
    main()
