"""Several processes (torchrun, gloo on 127.0.0.1) and devices, on a tiny model.

- The Hessian sum is a pairwise tree over the calibration batches, so the reduced H of N ranks is bit-identical to
  the single-process H, whatever the world size.
- A 2-process run writes the same checkpoint bytes as a 1-process run (also with 3 ranks, full-precision
  propagation and shared codebooks); a run that loses a rank and restarts (``--max-restarts``) ends identical.
- A rank that raises, or hangs, makes the whole job exit non-zero within the timeout.
- End-to-end distillation runs data-parallel, and 2 ranks step as 1 process with the same global batch does;
  ``--device`` is checked, and a CUDA run is tested where there is one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from vptq_lab.core.config import MixedConfig, VPTQConfig
from vptq_lab.errors import VPTQLabError
from vptq_lab.io.checkpoint import compare_checkpoints, load_quantized
from vptq_lab.model.distributed import assign, check_device
from vptq_lab.model.hessian import HessianAccumulator, PairwiseSum, padded_leaves, subtree_layout
from vptq_lab.testing import tiny_llama

# In-process: the pairwise tree ------------------------------------------------------------------------------


def _tree(leaves: list[torch.Tensor | None]) -> torch.Tensor | None:
    """The reference: a balanced binary tree over the leaves padded with empty ones to a power of two."""
    size = 1 << max(len(leaves) - 1, 0).bit_length()
    nodes = leaves + [None] * (size - len(leaves))
    while len(nodes) > 1:
        pairs = zip(nodes[::2], nodes[1::2])
        nodes = [a if b is None else b if a is None else a + b for a, b in pairs]
    return nodes[0]


def _leaves(n: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(n)
    # magnitudes over many decades: any change of summation order shows in the low bits
    return [torch.randn(6, 6, generator=gen, dtype=torch.float64) * 10.0 ** (i % 3) for i in range(n)]


@pytest.mark.parametrize("n", range(1, 12))
def test_pairwise_sum_is_the_padded_tree(n):
    leaves = _leaves(n)
    acc = PairwiseSum()
    for x in leaves:
        acc.add(x)
    assert torch.equal(acc.total(), _tree(leaves))


def test_summation_order_matters_here():
    """The leaves above do expose the order: a plain running sum differs from the tree."""
    leaves = _leaves(7)
    running = leaves[0].clone()
    for x in leaves[1:]:
        running += x
    assert not torch.equal(running, _tree(leaves))


@pytest.mark.parametrize("batches", [1, 2, 3, 5, 8, 9])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 5])
def test_any_world_size_folds_to_the_single_process_bits(batches, world):
    """Each rank accumulates its subtrees (HessianAccumulator with segments); folding them as rank 0 does gives
    the single-process sum bit for bit, and every batch belongs to exactly one rank."""
    xs = [torch.randn(7, 4, generator=torch.Generator().manual_seed(b)) * 10.0 ** (b % 4) for b in range(batches)]
    single = HessianAccumulator(4)
    for x in xs:
        single.add(x)
    layout = subtree_layout(batches, world)
    owned = sorted(b for start, stop in layout for b in range(start, stop))
    assert owned == list(range(batches))
    subtree_sums = []
    for rank in range(world):
        mine = [(start, stop) for j, (start, stop) in enumerate(layout) if j % world == rank]
        acc = HessianAccumulator(4, segments=[stop - start for start, stop in mine])
        for start, stop in mine:
            for b in range(start, stop):
                acc.add(xs[b])
        assert len(acc.subtrees) == len(mine)
        subtree_sums.append(iter(acc.subtrees))
    leaves = padded_leaves(batches) // len(layout)
    total = PairwiseSum()
    for j in range(len(layout)):
        total.add(next(subtree_sums[j % world]), leaves)
    assert torch.equal(total.total(), single.sum)


def test_the_proxy_loss_does_not_depend_on_the_thread_count():
    """report.json's proxy losses: row sums, then an exactly rounded sum, whatever splits the reduction. The input
    exposes the hazard: one full ``.sum()`` (what proxy_loss did before) gives other last digits with 2 threads."""
    from vptq_lab.core.hessian_ops import proxy_loss

    gen = torch.Generator().manual_seed(0)
    W, X = torch.randn(1536, 576, generator=gen), torch.randn(2048, 576, generator=gen)
    Wq, H = W + 0.01 * torch.randn(1536, 576, generator=gen), X.T @ X / 2048
    dW = W.double() - Wq.double()
    threads = torch.get_num_threads()
    try:
        new, old = [], []
        for n in (1, 2):
            torch.set_num_threads(n)
            new.append((proxy_loss(W, Wq, H), proxy_loss(W, Wq, H, relative=False)))
            old.append(float(((dW @ H.double()) * dW).sum()))
    finally:
        torch.set_num_threads(threads)
    assert new[0] == new[1]
    assert old[0] != old[1]


def test_owners_by_cost_are_deterministic_and_balanced():
    costs = [5.0, 3.0, 3.0, 2.0, 1.0, 1.0]
    owners = assign(costs, 2)
    assert owners == assign(costs, 2)
    loads = [sum(c for c, o in zip(costs, owners) if o == r) for r in range(2)]
    assert loads == [8.0, 7.0]
    assert assign(costs, 1) == [0] * 6
    assert sorted(assign([1.0, 1.0, 1.0], 3)) == [0, 1, 2]


def test_a_device_that_is_not_there_is_refused_with_the_fix():
    with pytest.raises(VPTQLabError, match="cpu or cuda"):
        check_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(VPTQLabError, match="no CUDA device.*--device cpu"):
            check_device("cuda")


# torchrun ---------------------------------------------------------------------------------------------------

DRIVER = textwrap.dedent('''
    """`vptq-lab` under torchrun, able to make one rank fail inside block k on the first attempt only."""
    import os, sys, time
    import vptq_lab.model.calibrate as cal
    from vptq_lab.cli import main

    rank = int(os.environ.get("RANK", "0"))
    trace = os.environ.get("VPTQ_TEST_TRACE")  # a folder: one file per (block, rank) that quantized it
    if trace:
        traced = cal._quantize_block

        def tracing(block, inputs, ctx, *rest):
            open(os.path.join(trace, f"block-{ctx.index}-rank-{rank}"), "w").close()
            return traced(block, inputs, ctx, *rest)

        cal._quantize_block = tracing
        helped = cal.kmeans_only_loss

        def helping(*args, **kwargs):  # this rank computed a linear's k-means-only pass for its owner
            open(os.path.join(trace, f"helper-{rank}"), "w").close()
            return helped(*args, **kwargs)

        cal.kmeans_only_loss = helping
    fail_at = int(os.environ.get("VPTQ_TEST_FAIL_AT_BLOCK", "-1"))
    if fail_at >= 0 and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        real = cal._quantize_block
        mode = os.environ.get("VPTQ_TEST_FAIL_MODE", "raise")

        def failing(block, inputs, ctx, *rest):
            if ctx.index == fail_at and rank == 1:
                if os.environ.get("VPTQ_TEST_FAIL_MARK"):  # proof that the failure happened
                    open(os.environ["VPTQ_TEST_FAIL_MARK"], "w").write(mode)
                if mode == "raise":
                    raise RuntimeError("injected failure")
                if mode == "kill":
                    os.kill(os.getpid(), 9)
                time.sleep(3600)  # hang
            return real(block, inputs, ctx, *rest)

        cal._quantize_block = failing
    sys.exit(main(sys.argv[1:]))
''')

HESSIANS = textwrap.dedent('''
    """Quantize with keep=True on every rank; rank 0 saves every linear's H (float64) as the run saw it."""
    import sys
    import torch
    from safetensors.torch import save_file
    from vptq_lab import load_model, quantize_
    from vptq_lab.core.config import MixedConfig, VPTQConfig
    from vptq_lab.model.distributed import close_distributed, init_distributed

    world = init_distributed("cpu", 60)
    model, _ = load_model(sys.argv[1])
    config = VPTQConfig.from_json(open(sys.argv[2]).read())
    ids = torch.randint(0, 384, (config.nsamples, config.seqlen), generator=torch.Generator().manual_seed(5))
    report = quantize_(model, config, ids, keep=True, progress=False)
    if world.main:
        save_file({name: s.H.contiguous() for name, s in report.store.items()}, sys.argv[3])
    close_distributed()
''')

DISTILL = textwrap.dedent('''
    """distill_ of a quantized checkpoint towards its full-precision model, 6 steps of 2 windows each: one process
    with batch 2, or each of 2 ranks with batch 1. Rank 0 saves the report, the gradients each step was taken with
    (after the ranks' average: torch's optimizer step pre-hook) and the trained student."""
    import json, sys
    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    from vptq_lab import DistillConfig, distill_, load_model, load_quantized
    from vptq_lab.model.distributed import close_distributed, init_distributed

    world = init_distributed("cpu", 60)
    teacher, _ = load_model(sys.argv[1])
    student, _ = load_quantized(sys.argv[2])
    gen = torch.Generator().manual_seed(7)
    train, heldout = torch.randint(0, 384, (8, 32), generator=gen), torch.randint(0, 384, (4, 32), generator=gen)
    grads = []

    def keep_gradients(optimizer, args, kwargs):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grads.append(torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in params]))

    register_optimizer_step_pre_hook(keep_gradients)
    config = DistillConfig(steps=6, eval_every=2, patience=6, lr=1e-4, select="kl", batch=2 // world.size)
    report = distill_(student, teacher, train, heldout, config, progress=False)
    if world.main:
        torch.save({"grads": torch.stack(grads), "state": student.state_dict()}, sys.argv[3] + ".pt")
        with open(sys.argv[3] + ".json", "w") as f:
            json.dump({k: v for k, v in report.to_dict().items() if k not in ("config", "seconds")}, f)
    close_distributed()
''')

BASE = VPTQConfig(
    vector_lens=(-1, 4),
    num_centroids=(-1, 16),
    num_res_centroids=(-1, 4),
    nsamples=16,
    seqlen=32,
    kmeans_iters=3,
    group_num=2,
)
CONFIGS = {
    "quantized": BASE,
    # 3 batches (an odd tree), outliers, full-precision propagation, one codebook per block
    "fp-shared": BASE.replace(
        nsamples=12,
        propagation="full_precision",
        codebook_scope="per-block",
        num_res_centroids=(-1, -1),
        npercent=5.0,
        vector_lens=(2, 4),
        num_centroids=(8, 16),
        group_num=1,
    ),
    # a config per linear (mixed allocation): the down_proj of two blocks with larger codebooks
    "mixed": MixedConfig(
        BASE, {f"model.layers.{b}.mlp.down_proj": BASE.replace(num_centroids=(-1, 32)) for b in (0, 2)}
    ),
}


@pytest.fixture(scope="module")
def job(tmp_path_factory, four_block_model_dir, subprocess_env):
    root = tmp_path_factory.mktemp("torchrun")
    for name, cfg in CONFIGS.items():
        (root / f"{name}.json").write_text(cfg.to_json())
    (root / "driver.py").write_text(DRIVER)
    (root / "hessians.py").write_text(HESSIANS)
    (root / "distill.py").write_text(DISTILL)
    return root, four_block_model_dir, subprocess_env


def _run(job, script: str, *args: str, nproc: int = 1, extra_env=None, launcher=(), timeout=300):
    """``script`` (in the job folder) alone (nproc 1) or under torchrun; returns (CompletedProcess, seconds)."""
    root, _, env = job
    launch = [] if nproc == 1 and not launcher else ["-m", "torch.distributed.run", "--standalone"]
    if launch:
        launch += ["--nproc-per-node", str(nproc), *launcher]
    cmd = [sys.executable, *launch, str(root / script), *args]
    start = time.monotonic()
    proc = subprocess.run(cmd, env={**env, **(extra_env or {})}, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


def _quantize(job, config: str, out: Path, *extra: str, nproc: int = 1, **kwargs):
    root, model_dir, _ = job
    args = ["quantize", "--model", str(model_dir), "--config", str(root / f"{config}.json"), "--out", str(out)]
    return _run(job, "driver.py", *args, "--json", "--no-progress", *extra, nproc=nproc, **kwargs)


@pytest.fixture(scope="module")
def single(job):
    """The 1-process reference checkpoint of each config."""
    out = {}
    for name in CONFIGS:
        proc, _ = _quantize(job, name, job[0] / f"single-{name}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[name] = job[0] / f"single-{name}"
    return out


def _assert_identical(a: Path, b: Path) -> None:
    diff = compare_checkpoints(a, b)
    assert diff["identical"], json.dumps(diff)
    assert diff["tensors"] > 0


@pytest.mark.slow
def test_reduced_hessians_equal_the_single_process_ones(job):
    from safetensors.torch import load_file

    root, model_dir, _ = job
    for n in (1, 2):
        proc, _ = _run(
            job, "hessians.py", str(model_dir), str(root / "quantized.json"), str(root / f"H{n}.st"), nproc=n
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = load_file(root / "H1.st"), load_file(root / "H2.st")
    assert one.keys() == two.keys() and len(one) == 28  # 7 linears x 4 blocks
    for name in one:
        assert one[name].dtype == torch.float64 and torch.equal(one[name], two[name]), name


@pytest.mark.slow
@pytest.mark.parametrize(
    "config,nproc", [("quantized", 2), ("quantized", 3), ("fp-shared", 2), ("fp-shared", 3), ("mixed", 2)]
)
def test_checkpoint_bytes_do_not_depend_on_the_world_size(job, single, config, nproc):
    out, trace = job[0] / f"{config}-{nproc}", job[0] / f"trace-{config}-{nproc}"
    trace.mkdir()
    proc, _ = _quantize(job, config, out, nproc=nproc, extra_env={"VPTQ_TEST_TRACE": str(trace)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["ranks"] == nproc and proc.stdout.count('"ranks"') == 1  # rank 0 alone prints (and saves)
    _assert_identical(single[config], out)
    assert _layer_records(out) == _layer_records(single[config])  # the proxy losses too, to the last bit
    # quantized propagation: every rank works on every block (its share of the batches and linears);
    # full-precision propagation: whole blocks go to ranks, block i of each group of nproc to rank i mod nproc
    if config != "fp-shared":  # quantized propagation
        expected = {f"block-{i}-rank-{r}" for i in range(4) for r in range(nproc)}
    else:
        expected = {f"block-{i}-rank-{i % nproc}" for i in range(4)}
    assert {p.name for p in trace.iterdir() if p.name.startswith("block-")} == expected
    # quantized propagation: a stage of fewer linears than ranks (o_proj, down_proj; gate/up too with 3 ranks)
    # has a rank that owns nothing compute the owner's k-means-only pass (whose loss the records above compare)
    helpers = {p.name for p in trace.iterdir() if p.name.startswith("helper-")}
    assert helpers == ({f"helper-{r}" for r in range(1, nproc)} if config != "fp-shared" else set())


def _layer_records(folder: Path) -> list[dict]:
    """What report.json says of each linear, less its timing."""
    return [
        {k: v for k, v in r.items() if k != "seconds"}
        for r in json.loads((folder / "report.json").read_text())["layers"]
    ]


def _kill_rank_1_in_block(job, out: Path, ck: Path, *extra: str, config: str = "quantized", block: int = 2, **kwargs):
    """A 2-rank run with block checkpoints in which rank 1 kills itself in ``block`` (on the first attempt)."""
    env = {"VPTQ_TEST_FAIL_AT_BLOCK": str(block), "VPTQ_TEST_FAIL_MODE": "kill", "VPTQ_TEST_FAIL_MARK": f"{out}.killed"}
    return _quantize(job, config, out, "--checkpoint-dir", str(ck), *extra, nproc=2, extra_env=env, **kwargs)


@pytest.mark.slow
# fp-shared: whole blocks by rank, so rank 1 dies in block 3, its own, while rank 0 quantizes block 2
@pytest.mark.parametrize("config,block", [("quantized", 2), ("fp-shared", 3)])
def test_a_lost_rank_restarts_and_ends_identical(job, single, config, block):
    root = job[0]
    out, ck = root / f"restarted-{config}", root / f"ck-restarted-{config}"
    proc, _ = _kill_rank_1_in_block(
        job, out, ck, "--resume", "if-present", config=config, block=block, launcher=("--max-restarts", "1")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rank 1 did kill itself in the block (rank 0 may be stopped by torchrun before it notices), and the restarted
    # job resumed from the blocks committed before the kill
    assert Path(f"{out}.killed").read_text() == "kill"
    _assert_identical(single[config], out)


@pytest.mark.slow
def test_a_job_killed_with_two_ranks_resumes_in_one_process(job, single):
    """The checkpoint folder does not depend on the world size: 2 ranks lose one in block 2, 1 process finishes."""
    root = job[0]
    out, ck = root / "resumed-alone", root / "ck-resumed-alone"
    proc, _ = _kill_rank_1_in_block(job, out, ck)
    assert proc.returncode != 0 and not out.exists()
    assert json.loads((ck / "progress.json").read_text())["completed"] == 2
    proc, _ = _quantize(job, "quantized", out, "--checkpoint-dir", str(ck), "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_identical(single["quantized"], out)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["raise", "hang"])
def test_a_failing_rank_stops_the_whole_job_within_the_timeout(job, mode):
    out = job[0] / f"failed-{mode}"
    proc, seconds = _quantize(
        job,
        "quantized",
        out,
        "--timeout",
        "10",
        nproc=2,
        extra_env={"VPTQ_TEST_FAIL_AT_BLOCK": "1", "VPTQ_TEST_FAIL_MODE": mode},
        timeout=240,
    )
    assert proc.returncode != 0
    assert not out.exists()
    if mode == "raise":  # rank 0 may be stopped by torchrun before it notices: only rank 1's line is certain
        assert "rank 1 of 2: failed with RuntimeError: injected failure" in proc.stderr
    else:  # rank 0 times out first, says so, and exits; torchrun then stops the hung rank
        assert "rank 0 of 2: lost contact with the other ranks" in proc.stderr
        assert "--timeout 10 s" in proc.stderr
    assert seconds < 120  # startup of two processes + the 10 s timeout, never the hung rank's hour


@pytest.mark.slow
def test_end_to_end_distillation_runs_data_parallel(job, single):
    out = job[0] / "distilled-2"
    proc, _ = _quantize(job, "quantized", out, "--finetune", "e2e", "--distill-steps", "4", nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    distill = record["distill"]
    assert distill["steps_run"] == 4 and len(distill["history"]) == 1
    # the one evaluation improved on the start (held-out perplexity selects, the KL fell too), so its state is kept
    assert distill["best"]["step"] == 4 and distill["best"]["kl"] < distill["initial"]["kl"]
    # the codes never move, only codebooks and norms: the indices equal the undistilled 1-process run's
    a, _ = load_quantized(single["quantized"])
    b, _ = load_quantized(out)
    sa, sb = a.state_dict(), b.state_dict()
    indices = [k for k in sa if k.endswith("indices")]
    assert indices and all(torch.equal(sa[k], sb[k]) for k in indices)
    assert any(not torch.equal(sa[k], sb[k]) for k in sa if k.endswith("centroids"))


@pytest.mark.slow
def test_two_ranks_distill_as_one_process_with_their_global_batch(job, single):
    """2 ranks with batch 1 each take the same 2 windows per step as 1 process with batch 2 (one sampler draws the
    step's windows, each rank takes its slice), and their averaged gradient is the gradient of the mean loss over
    both windows. So the runs agree up to float32 reduction order: within rel 1e-4 for every step's gradient, the
    training KL, the held-out figures and the trained tensors; the held-out figures before training are computed
    window by window and summed in window order in both, so they are equal.

    Adam is nearly blind to a gradient's scale (a gradient off by the world size moves the weights the same), so the
    gradients are compared, not only where the weights end up."""
    root, model_dir, _ = job
    for n in (1, 2):
        proc, _ = _run(job, "distill.py", str(model_dir), str(single["quantized"]), str(root / f"distill{n}"), nproc=n)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.loads((root / f"distill{n}.json").read_text()) for n in (1, 2))
    saved = [torch.load(root / f"distill{n}.pt") for n in (1, 2)]
    assert one["initial"] == two["initial"]
    assert one["steps_run"] == two["steps_run"] == 6 and len(one["history"]) == len(two["history"]) == 3
    for a, b in zip(one["history"] + [one["best"], one["final"]], two["history"] + [two["best"], two["final"]]):
        assert a.keys() == b.keys() and a.get("step") == b.get("step")
        assert b == {k: pytest.approx(v, rel=1e-4) for k, v in a.items()}
    grads = [s["grads"] for s in saved]  # [steps, trained weights]
    assert grads[0].shape == grads[1].shape and grads[0].shape[0] == 6
    gap = (grads[1] - grads[0]).norm(dim=1) / grads[0].norm(dim=1)
    assert (gap < 1e-4).all(), gap
    for name, value in saved[0]["state"].items():
        torch.testing.assert_close(saved[1]["state"][name], value, rtol=1e-4, atol=1e-6, msg=name)
    assert one["best"]["step"] == 6 and one["best"]["kl"] < one["initial"]["kl"]  # the kept state is a trained one


# Devices ----------------------------------------------------------------------------------------------------


def test_quantization_prefers_dense_matmuls_only_inside_its_block(monkeypatch):
    """quantize_ and distill_ run quantized blocks through the cached dense weight (not the Triton kernels, which
    serve decoding); the preference ends with the block, and the environment override still wins."""
    from vptq_lab.kernels.dispatch import FORCE_REFERENCE_ENV, prefer_backend, resolve_backend

    x = torch.zeros(2, 4)
    monkeypatch.delenv(FORCE_REFERENCE_ENV, raising=False)
    with prefer_backend("reference"):
        assert resolve_backend(x) == "reference"
        assert resolve_backend(x, "torch") == "torch"  # an explicit backend is kept
    assert resolve_backend(x) == "torch"
    monkeypatch.setenv(FORCE_REFERENCE_ENV, "1")
    with prefer_backend("torch"):
        assert resolve_backend(x) == "reference"
    with pytest.raises(ValueError, match="backend must be one of"), prefer_backend("auto"):
        pass


def test_quantize_on_an_explicit_cpu_device_is_the_default_run():
    from vptq_lab import quantize_

    ids = torch.randint(0, 384, (8, 32), generator=torch.Generator().manual_seed(1))
    cfg = BASE.replace(nsamples=8)
    a, b = (
        tiny_llama(vocab_size=384, hidden=32, layers=2, seed=3),
        tiny_llama(vocab_size=384, hidden=32, layers=2, seed=3),
    )
    quantize_(a, cfg, ids, progress=False)
    quantize_(b, cfg, ids, progress=False, device="cpu")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_whole_pipeline_on_cuda():
    """Blocks move to the GPU while they are quantized and come back; the result is close to the CPU run's."""
    from vptq_lab import quantize_
    from vptq_lab.model.distill import DistillConfig, distill_

    ids = torch.randint(0, 384, (8, 32), generator=torch.Generator().manual_seed(1))
    cfg = BASE.replace(nsamples=8, finetune=True, finetune_steps=3)
    cpu, gpu = (tiny_llama(vocab_size=384, hidden=32, layers=2, seed=3) for _ in range(2))
    quantize_(cpu, cfg, ids, progress=False)
    report = quantize_(gpu, cfg, ids, progress=False, device="cuda")
    assert all(p.device.type == "cpu" for p in gpu.parameters())
    assert all(b.device.type == "cpu" for b in gpu.buffers())
    assert len(report.records) == 14
    with torch.no_grad():
        lc, lg = cpu(ids).logits, gpu(ids).logits
    assert torch.isfinite(lg).all()
    assert (lc - lg).abs().mean() < 0.1 * lc.abs().mean()
    teacher = tiny_llama(vocab_size=384, hidden=32, layers=2, seed=3)
    result = distill_(
        gpu, teacher, ids[:6], ids[6:], DistillConfig(steps=3, eval_every=3), progress=False, device="cuda"
    )
    assert result.steps_run == 3 and all(p.device.type == "cpu" for p in gpu.parameters())
