"""Crash safety and determinism.

- A run interrupted after any block and resumed from its checkpoint dir ends bit-identical to an
  uninterrupted run (in-process interruptions, and a real SIGKILL of a `vptq-lab quantize` process).
- The same seed and inputs give bit-identical tensors and perplexity in two separate processes.
- A checkpoint dir from another run, or a damaged one, is refused with a clear error (ids R1.. in
  docs/troubleshooting.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import vptq_lab.model.calibrate as calibrate
from vptq_lab.core.config import VPTQConfig
from vptq_lab.errors import VPTQLabError
from vptq_lab.io.checkpoint import compare_checkpoints
from vptq_lab.model.calibrate import quantize_
from vptq_lab.model.layers import QuantizedLinear
from vptq_lab.model.resume import PROGRESS
from vptq_lab.testing import tiny_llama

# Small but complete: residual codebook, fine-tuning (codebooks and norms change), 4 blocks.
CFG = VPTQConfig(
    vector_lens=(-1, 4),
    num_centroids=(-1, 16),
    num_res_centroids=(-1, 4),
    kmeans_iters=2,
    nsamples=4,
    seqlen=32,
    finetune=True,
    finetune_steps=3,
    finetune_lr=1e-3,
    seed=7,
)


def _model(layers=3):
    return tiny_llama(vocab_size=128, hidden=32, layers=layers, seed=1)


def _calib():
    return torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(3))


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_run(model_a, report_a, model_b, report_b):
    sa, sb = _state(model_a), _state(model_b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    strip = lambda rs: [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(report_a.records) == strip(report_b.records)
    assert report_a.finetune == report_b.finetune


class _Crash(BaseException):
    pass


def _crash_at(monkeypatch, block: int):
    real = calibrate._quantize_block

    def crashing(blk, inputs, ctx):
        if ctx.index == block:
            raise _Crash
        return real(blk, inputs, ctx)

    monkeypatch.setattr(calibrate, "_quantize_block", crashing)


@pytest.mark.parametrize(
    "propagation,finetune,crash_block",
    [("quantized", True, 1), ("quantized", True, 2), ("full_precision", False, 1), ("quantized", False, 0)],
)
def test_interrupted_then_resumed_equals_uninterrupted(propagation, finetune, crash_block, tmp_path, monkeypatch):
    cfg = CFG.replace(propagation=propagation, finetune=finetune)
    ref_model = _model()
    ref = quantize_(ref_model, cfg, _calib(), progress=False)

    ck = tmp_path / "ck"
    with monkeypatch.context() as m:
        _crash_at(m, crash_block)
        with pytest.raises(_Crash):
            quantize_(_model(), cfg, _calib(), progress=False, checkpoint_dir=ck)
    if crash_block:
        assert json.loads((ck / PROGRESS).read_text())["completed"] == crash_block
    else:  # nothing committed yet: resume starts from block 0
        assert not (ck / PROGRESS).exists()

    model = _model()  # fresh, as after a restart
    report = quantize_(model, cfg, _calib(), progress=False, checkpoint_dir=ck, resume=True)
    _assert_same_run(ref_model, ref, model, report)
    assert all(isinstance(m, QuantizedLinear) for n, m in model.named_modules() if n.endswith("_proj"))


def _killed_after(blocks: int, ck, monkeypatch) -> dict:
    """Run CFG into ``ck`` and crash in block ``blocks`` (blocks 0..blocks-1 committed); returns progress.json."""
    with monkeypatch.context() as m:
        _crash_at(m, blocks)
        with pytest.raises(_Crash):
            quantize_(_model(), CFG, _calib(), progress=False, checkpoint_dir=ck)
    return json.loads((ck / PROGRESS).read_text())


def test_a_resumed_run_reports_the_time_of_the_runs_before_it(tmp_path, monkeypatch):
    # progress.json carries the wall time up to each commit, so a resumed run can count the whole quantization
    ck = tmp_path / "ck"
    before = _killed_after(2, ck, monkeypatch)["seconds"]
    assert before > 0
    report = quantize_(_model(), CFG, _calib(), progress=False, checkpoint_dir=ck, resume=True)
    assert report.seconds_before_resume == before and report.to_dict()["seconds_before_resume"] == before
    assert json.loads((ck / PROGRESS).read_text())["seconds"] >= before + report.seconds * 0.5
    fresh = quantize_(_model(), CFG, _calib(), progress=False, checkpoint_dir=tmp_path / "new")
    assert fresh.seconds_before_resume == 0.0


def test_a_folder_without_the_time_record_resumes_with_the_time_unknown(tmp_path, monkeypatch):
    ck = tmp_path / "ck"
    progress = _killed_after(1, ck, monkeypatch)
    del progress["seconds"]  # as a folder written before the record existed
    (ck / PROGRESS).write_text(json.dumps(progress))
    report = quantize_(_model(), CFG, _calib(), progress=False, checkpoint_dir=ck, resume=True)
    assert report.seconds_before_resume is None
    assert json.loads((ck / PROGRESS).read_text())["seconds"] is None  # stays unknown, never a partial sum


def test_resume_of_a_finished_run_only_reapplies(tmp_path):
    ck = tmp_path / "ck"
    ref_model = _model()
    ref = quantize_(ref_model, CFG, _calib(), progress=False, checkpoint_dir=ck)
    model = _model()
    report = quantize_(model, CFG, _calib(), progress=False, checkpoint_dir=ck, resume=True)
    _assert_same_run(ref_model, ref, model, report)
    assert sorted(p.name for p in ck.iterdir()) == [
        *(f"block-{i:04d}.safetensors" for i in range(3)),
        "hidden-0002.safetensors",
        PROGRESS,
    ]


def test_leftovers_of_a_kill_mid_write_do_not_matter(tmp_path, monkeypatch):
    """A temp file and a half-written next block (what a kill during a write leaves) are ignored."""
    ck = tmp_path / "ck"
    with monkeypatch.context() as m:
        _crash_at(m, 1)
        with pytest.raises(_Crash):
            quantize_(_model(), CFG, _calib(), progress=False, checkpoint_dir=ck)
    (ck / ".block-0001.safetensors.x1y2.tmp").write_bytes(b"\0" * 100)
    (ck / "block-0001.safetensors").write_bytes(b"garbage")  # not yet listed in progress.json
    ref_model = _model()
    ref = quantize_(ref_model, CFG, _calib(), progress=False)
    model = _model()
    report = quantize_(model, CFG, _calib(), progress=False, checkpoint_dir=ck, resume=True)
    _assert_same_run(ref_model, ref, model, report)


def test_resume_with_an_empty_dir_starts_from_block_zero(tmp_path):
    (tmp_path / "new").mkdir()  # created, nothing committed yet (a run killed before its first block)
    report = quantize_(_model(layers=1), CFG, _calib(), progress=False, checkpoint_dir=tmp_path / "new", resume=True)
    assert len(report.records) == 7 and json.loads((tmp_path / "new" / PROGRESS).read_text())["completed"] == 1


# Refusals ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_block_done(tmp_path_factory) -> Path:
    """A checkpoint dir holding block 0 of a 3-block run (then a crash)."""
    ck = tmp_path_factory.mktemp("ck") / "ck"
    mp = pytest.MonkeyPatch()
    try:
        _crash_at(mp, 1)
        with pytest.raises(_Crash):
            quantize_(_model(), CFG, _calib(), progress=False, checkpoint_dir=ck)
    finally:
        mp.undo()
    return ck


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit_progress(change):
    def damage(ck: Path):
        progress = json.loads((ck / PROGRESS).read_text())
        change(progress)
        (ck / PROGRESS).write_text(json.dumps(progress))

    return damage


def _flip_block(ck: Path):
    f = ck / "block-0000.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))


def _poison(model):
    with torch.no_grad():
        model.model.norm.weight.mul_(2)
    return model


REFUSALS = [  # (id, damage to the dir, model, config, calibration, resume, [phrases])
    (
        "R1",
        None,
        _model,
        CFG.replace(seed=8),
        _calib,
        True,
        ["different config (seed: 7 -> 8)", "resume with the same model, config"],
    ),
    (
        "R2",
        None,
        lambda: _poison(_model()),
        CFG,
        _calib,
        True,
        ["a different model (its weights differ)", "choose a new --checkpoint-dir"],
    ),
    ("R3", None, _model, CFG, lambda: (_calib() + 1) % 128, True, ["different calibration data"]),
    ("R4", None, _model, CFG, _calib, False, ["already holds a run's progress", "pass resume=True (--resume)"]),
    (
        "R5",
        _flip_block,
        _model,
        CFG,
        _calib,
        True,
        ["block-0000.safetensors does not match its sha256", "start again with a new --checkpoint-dir"],
    ),
    (
        "R6",
        _edit_progress(lambda p: p["blocks"]["0"].update(file="../../etc/passwd")),
        _model,
        CFG,
        _calib,
        True,
        ["progress.json names '../../etc/passwd', outside the folder", "refusing to read it"],
    ),
    (
        "R7",
        lambda ck: (ck / PROGRESS).write_text('{"version": 1, '),
        _model,
        CFG,
        _calib,
        True,
        ["progress.json is not valid JSON", "start again with a new --checkpoint-dir"],
    ),
    (
        "R8",
        _edit_progress(lambda p: p.update(version=99)),
        _model,
        CFG,
        _calib,
        True,
        ["checkpoint version 99, newer than", "upgrade vptq_lab"],
    ),
    (
        "R9",
        lambda ck: (ck / "hidden-0000.safetensors").unlink(),
        _model,
        CFG,
        _calib,
        True,
        ["hidden-0000.safetensors", "the checkpoint dir is incomplete"],
    ),
    ("R10", None, lambda: _model(layers=4), CFG, _calib, True, ["a different model"]),
]


@pytest.mark.parametrize("cid,damage,build,cfg,calib,resume,phrases", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_bad_checkpoint_dirs_are_refused(cid, damage, build, cfg, calib, resume, phrases, one_block_done, tmp_path):
    ck = _copy(one_block_done, tmp_path / "ck")
    if damage:
        damage(ck)
    before = {p.name: p.read_bytes() for p in ck.iterdir()}
    model = build()
    with pytest.raises(VPTQLabError) as exc:
        quantize_(model, cfg, calib(), progress=False, checkpoint_dir=ck, resume=resume)
    for phrase in phrases:
        assert phrase in str(exc.value)
    assert {p.name: p.read_bytes() for p in ck.iterdir()} == before  # the dir is left as it was
    assert not any(isinstance(m, QuantizedLinear) for m in model.modules()) or cid == "R9"


def test_R11_resume_needs_a_checkpoint_dir():
    with pytest.raises(VPTQLabError, match=r"resume=True needs checkpoint_dir="):
        quantize_(_model(), CFG, _calib(), progress=False, resume=True)


def test_R12_checkpoint_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(VPTQLabError, match="is a file: pass a folder"):
        quantize_(_model(), CFG, _calib(), progress=False, checkpoint_dir=tmp_path / "f")


# Separate processes: determinism and a real SIGKILL ----------------------------------------------------

DRIVER = textwrap.dedent("""
    import os, sys, time
    import vptq_lab.model.calibrate as cal
    from vptq_lab.cli import main

    pause_at = int(os.environ.get("VPTQ_TEST_PAUSE_AT_BLOCK", "-1"))
    if pause_at >= 0:  # stop inside block k, after blocks 0..k-1 are committed, and wait there to be killed
        real = cal._quantize_block
        def paused(block, inputs, ctx):
            if ctx.index == pause_at:
                open(os.environ["VPTQ_TEST_MARK"], "w").write("paused")
                time.sleep(600)
            return real(block, inputs, ctx)
        cal._quantize_block = paused
    out = sys.argv[sys.argv.index("--out") + 1]
    rc = main(["quantize", *sys.argv[1:], "--json", "--no-progress"])
    if rc == 0:
        rc = main(["eval", "--model", out, "--seqlen", "32", "--max-windows", "4", "--json", "--no-progress"])
    sys.exit(rc)
""")


@pytest.fixture(scope="module")
def proc_env(tmp_path_factory, four_block_model_dir, subprocess_env):
    root = tmp_path_factory.mktemp("procs")
    (root / "cfg.json").write_text(CFG.replace(nsamples=4, seqlen=32).to_json())
    (root / "driver.py").write_text(DRIVER)
    return root, four_block_model_dir, subprocess_env


def _start(proc_env, out: Path, *extra: str, pause_at: int = -1) -> subprocess.Popen:
    root, model_dir, env = proc_env
    cmd = [
        sys.executable,
        str(root / "driver.py"),
        "--model",
        str(model_dir),
        "--config",
        str(root / "cfg.json"),
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.Popen(
        cmd,
        env={**env, "VPTQ_TEST_PAUSE_AT_BLOCK": str(pause_at), "VPTQ_TEST_MARK": str(out) + ".paused"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])  # the eval record


@pytest.fixture(scope="module")
def two_runs(proc_env):
    """Two uninterrupted runs with the same seed, in two processes at once."""
    root = proc_env[0]
    procs = [_start(proc_env, root / f"run{i}") for i in (1, 2)]
    return [(root / f"run{i}", _finish(p)) for i, p in zip((1, 2), procs)]


def _assert_same_folder(a: Path, b: Path):
    diff = compare_checkpoints(a, b)
    assert diff["identical"], json.dumps(diff)
    assert diff["tensors"] > 0


def test_same_seed_same_model_and_perplexity_in_two_processes(two_runs):
    (a, eval_a), (b, eval_b) = two_runs
    _assert_same_folder(a, b)
    assert eval_a["perplexity"] == eval_b["perplexity"]  # exact float equality


@pytest.mark.parametrize("k", [1, 3])
def test_sigkill_inside_block_k_then_resume_is_bit_identical(k, proc_env, two_runs):
    # Deterministic: the driver stops inside block k (blocks 0..k-1 committed) and waits; only then is it killed.
    # (A random wait raced the run: with a small k the tiny model could finish before the kill.)
    root = proc_env[0]
    out, ck = root / f"killed-{k}", root / f"ck-{k}"
    mark = Path(str(out) + ".paused")
    proc = _start(proc_env, out, "--checkpoint-dir", str(ck), pause_at=k)
    deadline = time.monotonic() + 180
    while not mark.exists():
        assert proc.poll() is None, f"exited before block {k}: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # the output folder is only ever written whole
    assert json.loads((ck / PROGRESS).read_text())["completed"] == k

    record = _finish(_start(proc_env, out, "--checkpoint-dir", str(ck), "--resume"))
    assert not ck.exists()  # the CLI deletes the block checkpoints once --out is saved
    (ref, ref_eval) = two_runs[0]
    _assert_same_folder(ref, out)
    assert record["perplexity"] == ref_eval["perplexity"]


def test_cli_removes_only_its_own_checkpoint_files_unless_asked_to_keep(proc_env, tmp_path, monkeypatch):
    from vptq_lab.cli import main

    monkeypatch.delenv("VPTQ_LAB_DATA", raising=False)  # the same text source as the subprocess runs

    root, model_dir, _ = proc_env
    base = ["quantize", "--model", str(model_dir), "--config", str(root / "cfg.json"), "--no-progress"]
    kept = tmp_path / "kept"
    assert main([*base, "--out", str(tmp_path / "m1"), "--checkpoint-dir", str(kept), "--keep-checkpoints"]) == 0
    assert json.loads((kept / PROGRESS).read_text())["completed"] == 4  # whole, resumable-from evidence
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's file")
    assert main([*base, "--out", str(tmp_path / "m2"), "--checkpoint-dir", str(mine), "--json"]) == 0
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]  # ours gone, theirs kept


def test_resume_from_a_folder_that_does_not_exist_is_refused_before_any_work(tmp_path, capsys):
    """A mistyped --checkpoint-dir with --resume would start a whole new run: refused before the model is touched."""
    from vptq_lab.cli import main
    from vptq_lab.model.layers import QuantizedLinear

    model = _model()
    with pytest.raises(VPTQLabError, match=r"does not exist, so there is no run to continue"):
        quantize_(model, CFG, _calib(), progress=False, checkpoint_dir=tmp_path / "typo", resume=True)
    assert not any(isinstance(m, QuantizedLinear) for m in model.modules()) and not (tmp_path / "typo").exists()
    argv = [
        "quantize",
        "--bits",
        "2",
        "--out",
        str(tmp_path / "o"),
        "--checkpoint-dir",
        str(tmp_path / "typo"),
        "--resume",
    ]
    assert main(argv) == 2
    assert "--checkpoint-dir" in capsys.readouterr().err and not (tmp_path / "o").exists()
    (tmp_path / "empty").mkdir()  # an existing folder with nothing committed yet resumes from block 0
    report = quantize_(_model(), CFG, _calib(), progress=False, checkpoint_dir=tmp_path / "empty", resume=True)
    assert len(report.records) > 0
