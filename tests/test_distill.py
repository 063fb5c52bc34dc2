"""End-to-end distillation on a tiny model: it lowers the held-out KL, never touches an index, and resumes."""

from __future__ import annotations

import copy

import pytest
import torch

from vptq_lab import VPTQConfig, load_quantized, quantize_, save_quantized
from vptq_lab.errors import VPTQLabError
from vptq_lab.io.data import split_heldout
from vptq_lab.model import distill as ft
from vptq_lab.model.distill import DistillConfig, _kl, distill_, head_path, trainable_parameters
from vptq_lab.model.layers import QuantizedLinear
from vptq_lab.testing import tiny_llama

CFG = VPTQConfig(vector_lens=(-1, 4), num_centroids=(-1, 8), kmeans_iters=3, nsamples=8, seqlen=32)
# A random tiny teacher does not model its text, so select by held-out KL to the teacher, not perplexity.
DISTILL = DistillConfig(steps=12, lr=1e-3, batch=4, eval_every=4, patience=10, select="kl")


@pytest.fixture(scope="module")
def pair():
    teacher = tiny_llama(vocab_size=128, hidden=32, layers=2, seed=3)
    student = copy.deepcopy(teacher)
    stream = torch.randint(0, 128, (1, 8192), generator=torch.Generator().manual_seed(0))
    train, held = split_heldout(stream, 32, train=64, heldout=4)
    quantize_(student, CFG, train[:8], progress=False)
    return teacher, student, train, held


def _indices(model):
    return {n: m.indices.clone() for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def _untimed(updates: list[dict]) -> list[dict]:
    """A report's code updates without their seconds."""
    return [{k: v for k, v in u.items() if k != "seconds"} for u in updates]


def _codebooks(model):
    return {n: m.centroids.clone() for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def test_split_heldout_is_disjoint():
    stream = torch.arange(1000)[None]
    train, held = split_heldout(stream, 10, train=20, heldout=3)
    assert held.shape == (3, 10) and torch.equal(held.reshape(-1), torch.arange(970, 1000))
    assert int(train.max()) < 970  # no training window reaches into the held-out text
    with pytest.raises(VPTQLabError, match="too few"):
        split_heldout(torch.arange(30)[None], 10, train=2, heldout=3)


def test_distillation_lowers_heldout_kl_and_keeps_every_index(pair):
    teacher, student0, train, held = pair
    student = copy.deepcopy(student0)
    before_kl = float(_kl(student, teacher, held, 1.0).detach())
    indices = _indices(student)
    report = distill_(student, teacher, train, held, DISTILL, progress=False)
    after_kl = float(_kl(student, teacher, held, 1.0).detach())
    assert after_kl < before_kl, (before_kl, after_kl)
    assert report.best["kl"] < report.initial["kl"] and report.best["step"] > 0
    assert [h["step"] for h in report.history] == [4, 8, 12]
    after = _indices(student)
    assert all(torch.equal(indices[n], after[n]) for n in indices)  # the format and the bits are unchanged
    changed = [n for n, c in _codebooks(student).items() if not torch.equal(c, _codebooks(student0)[n])]
    assert changed  # the codebooks did train
    assert all(not p.requires_grad for p in student.parameters())  # training is over: nothing left trainable


def test_hidden_loss_is_the_blocks_relative_squared_error(pair):
    teacher, student0, train, _ = pair
    t = [torch.ones(1, 2, 3), torch.full((1, 2, 3), 2.0), torch.full((1, 2, 3), -1.0)]
    s = [torch.zeros(1, 2, 3), torch.full((1, 2, 3), 3.0), torch.full((1, 2, 3), -1.0)]
    # the embeddings (first) are skipped; blocks: (3-2)^2/2^2 = 0.25 and 0, mean 0.125
    assert float(ft._hidden_loss(tuple(s), tuple(t))) == pytest.approx(0.125)
    assert float(ft._hidden_loss(tuple(t), tuple(t))) == 0.0
    student = copy.deepcopy(student0)
    trainable_parameters(student)
    for chunked in (False, True):
        parts = {}
        plain = float(_kl(student, teacher, train[:2], 1.0, chunked=chunked).detach())
        total = float(_kl(student, teacher, train[:2], 1.0, chunked, hidden_weight=2.0, parts=parts).detach())
        assert parts["kl"] == pytest.approx(plain, rel=1e-6) and parts["hidden"] > 0  # the quantized blocks differ
        assert total == pytest.approx(plain + 2.0 * parts["hidden"], rel=1e-6)
    same = float(_kl(teacher, teacher, train[:2], 1.0, hidden_weight=1.0, parts=parts).detach())
    assert same == pytest.approx(0, abs=1e-6)
    assert parts["hidden"] == 0.0


def test_distill_loss_gives_the_training_loss_terms_without_training(pair):
    teacher, student0, train, _ = pair
    student = copy.deepcopy(student0)
    before = {n: p.clone() for n, p in student.named_parameters()}
    found = ft.distill_loss(student, teacher, train[:2], hidden_weight=2.0)
    parts = {}
    expected = float(_kl(student, teacher, train[:2], 1.0, hidden_weight=2.0, parts=parts).detach())
    assert found == pytest.approx({**parts, "loss": expected}, rel=1e-6) and found["hidden"] > 0
    assert ft.distill_loss(student, teacher, train[:2])["hidden"] == 0.0  # weight 0: the KL alone
    assert ft.distill_loss(teacher, teacher, train[:2], hidden_weight=1.0)["loss"] == pytest.approx(0, abs=1e-6)
    assert all(torch.equal(p, before[n]) for n, p in student.named_parameters())
    with pytest.raises(ValueError, match="hidden_weight=-1.0 must be a number >= 0"):
        ft.distill_loss(student, teacher, train[:2], hidden_weight=-1.0)
    with pytest.raises(VPTQLabError, match="ids"):
        ft.distill_loss(student, teacher, train[0].float())


def test_on_evaluate_sees_each_evaluation_and_can_end_the_run(pair):
    teacher, student0, train, held = pair
    seen = []
    full = distill_(copy.deepcopy(student0), teacher, train, held, DISTILL, progress=False, on_evaluate=seen.append)
    assert seen == full.history and full.steps_run == 12  # None: the run goes on
    seen.clear()
    student = copy.deepcopy(student0)

    def stop_at_8(record):
        seen.append(record)
        return record["step"] >= 8

    report = distill_(student, teacher, train, held, DISTILL, progress=False, on_evaluate=stop_at_8)
    assert [r["step"] for r in seen] == [4, 8] and report.history == full.history[:2]
    assert report.steps_run == 8 and not report.stopped_early
    assert report.best["step"] in (0, 4, 8)
    assert report.final["kl"] == pytest.approx(report.best["kl"], rel=1e-3)  # the kept state is the model's


def test_distillation_with_the_hidden_state_term_lowers_heldout_kl_and_keeps_every_index(pair):
    teacher, student0, train, held = pair
    plain, student = copy.deepcopy(student0), copy.deepcopy(student0)
    indices = _indices(student)
    ref = distill_(plain, teacher, train, held, DISTILL, progress=False)
    report = distill_(student, teacher, train, held, DISTILL.replace(hidden_weight=5.0), progress=False)
    assert report.best["kl"] < report.initial["kl"] and report.config["hidden_weight"] == 5.0
    assert report.history != ref.history  # the term changed the training
    assert all(torch.equal(indices[n], _indices(student)[n]) for n in indices)
    with pytest.raises(ValueError, match="hidden_weight=-1.0 must be a number >= 0"):
        DistillConfig(hidden_weight=-1.0)
    with pytest.raises(ValueError, match="hidden_weight=nan"):
        DistillConfig(hidden_weight=float("nan"))


@pytest.mark.parametrize("temperature,train_head", [(1.0, False), (2.0, False), (1.5, True)])
def test_chunked_kl_matches_the_full_logits_in_value_and_gradient(pair, monkeypatch, temperature, train_head):
    teacher, student0, train, _ = pair
    student = copy.deepcopy(student0)
    params = trainable_parameters(student, train_head=train_head)
    head = student.get_output_embeddings().weight
    assert any(p is head for p in params.values()) == train_head
    assert head_path(student, teacher)  # a Llama: logits are lm_head(last hidden state), trained or not
    monkeypatch.setattr("vptq_lab.model.logprobs.CHUNK", 7)  # chunks that do not divide the 2 x 32 positions
    found = {}
    for chunked in (False, True):
        for p in params.values():
            p.grad = None
        loss = _kl(student, teacher, train[:2], temperature, chunked=chunked)
        loss.backward()
        found[chunked] = (float(loss.detach()), {n: p.grad.clone() for n, p in params.items()})
    # a small KL is a difference of nearly equal float32 sums: agree to 0.1% (a lost chunk moves it by far more)
    assert found[True][0] == pytest.approx(found[False][0], rel=1e-3)
    assert found[False][0] > 0
    for name, grad in found[False][1].items():
        assert grad.abs().max() > 0, name
        scale = float(grad.abs().max())  # float32 differences of nearly equal softmaxes: error relative to the scale
        torch.testing.assert_close(found[True][1][name], grad, rtol=1e-3, atol=1e-3 * scale)


def test_chunked_heldout_matches_the_full_logits(pair, monkeypatch):
    teacher, student0, _, held = pair
    student = copy.deepcopy(student0)
    trainable_parameters(student)
    monkeypatch.setattr("vptq_lab.model.logprobs.CHUNK", 5)
    chunked = ft._heldout(student, teacher, held, 1.5)
    monkeypatch.setattr(ft, "head_path", lambda *models: False)
    full = ft._heldout(student, teacher, held, 1.5)
    assert full["kl"] > 0 and full["ppl"] > 1
    assert chunked["ppl"] == pytest.approx(full["ppl"], rel=1e-5)
    assert chunked["kl"] == pytest.approx(full["kl"], rel=1e-3)  # a small difference of float32 sums


def test_head_path_is_refused_where_logits_are_not_the_head_of_the_last_hidden_state(pair):
    teacher, student0, _, _ = pair
    student = copy.deepcopy(student0)
    student.get_output_embeddings().bias = torch.nn.Parameter(torch.zeros(128))  # a trainable head bias
    assert not head_path(student, teacher)  # the chunked gradient forms none for a bias
    student.get_output_embeddings().bias = None
    scaled = copy.deepcopy(teacher)
    forward = scaled.forward

    def capped(*args, **kwargs):  # logits changed after the head, as soft-capping models do
        out = forward(*args, **kwargs)
        out.logits = 30 * torch.tanh(out.logits / 30)
        return out

    scaled.forward = capped
    assert head_path(student, teacher) and not head_path(student, scaled)


def test_train_head_trains_the_tied_head_and_embeddings_and_lowers_heldout_kl(pair):
    teacher, student0, train, held = pair
    student = copy.deepcopy(student0)
    assert student.get_output_embeddings().weight is student.get_input_embeddings().weight  # tied, as in SmolLM2
    before = student.get_output_embeddings().weight.detach().clone()
    indices = _indices(student)
    report = distill_(student, teacher, train, held, DISTILL.replace(train_head=True), progress=False)
    head = student.get_output_embeddings().weight
    assert head is student.get_input_embeddings().weight  # still one tensor
    assert not torch.equal(head, before)  # the head (and so the embeddings) trained
    assert report.best["kl"] < report.initial["kl"] and report.config["train_head"] is True
    after = _indices(student)
    assert all(torch.equal(indices[n], after[n]) for n in indices)
    assert all(not p.requires_grad for p in student.parameters())
    # the default leaves the head as it was
    frozen = copy.deepcopy(student0)
    distill_(frozen, teacher, train, held, DISTILL.replace(steps=4), progress=False)
    assert torch.equal(frozen.get_output_embeddings().weight, before)


def test_train_head_without_an_output_head_is_refused(pair):
    _, student0, _, _ = pair
    student = copy.deepcopy(student0)
    student.get_output_embeddings = lambda: None
    with pytest.raises(VPTQLabError, match="train_head=True.*no output head"):
        trainable_parameters(student, train_head=True)


def _killed_at_step_7(pair, config, checkpoint_dir, monkeypatch) -> None:
    """A distillation killed between two checkpoints (after the one at step 4), leaving ``checkpoint_dir``."""
    teacher, student0, train, held = pair
    real_kl, calls = ft._kl, {"n": 0}

    def dies_at_step_7(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real_kl(*args, **kwargs)

    monkeypatch.setattr(ft, "_kl", dies_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        distill_(copy.deepcopy(student0), teacher, train, held, config, progress=False, checkpoint_dir=checkpoint_dir)
    monkeypatch.setattr(ft, "_kl", real_kl)


@pytest.mark.parametrize("schedule,code_every", [("constant", 0), ("cosine", 0), ("cosine", 3)])
def test_distillation_is_deterministic_and_resumes_bit_identically(pair, tmp_path, monkeypatch, schedule, code_every):
    teacher, student0, train, held = pair
    DISTILL = DistillConfig(
        steps=12, lr=1e-3, batch=4, eval_every=4, patience=10, select="kl", schedule=schedule, code_every=code_every
    ).replace(code_lr=3e-3, code_fraction=0.05)
    ref = copy.deepcopy(student0)
    ref_report = distill_(ref, teacher, train, held, DISTILL, progress=False)

    _killed_at_step_7(pair, DISTILL, tmp_path / "ck", monkeypatch)
    with pytest.raises(VPTQLabError, match="pass resume=True"):
        distill_(copy.deepcopy(student0), teacher, train, held, DISTILL, progress=False, checkpoint_dir=tmp_path / "ck")
    resumed = copy.deepcopy(student0)
    report = distill_(
        resumed, teacher, train, held, DISTILL, progress=False, checkpoint_dir=tmp_path / "ck", resume=True
    )
    assert report.history == ref_report.history
    assert _untimed(report.code_updates) == _untimed(ref_report.code_updates)  # seconds are the clock's
    assert all(u["seconds"] >= 0 for u in report.code_updates + ref_report.code_updates)
    a, b = _codebooks(ref), _codebooks(resumed)
    assert all(torch.equal(a[n], b[n]) for n in a)
    a, b = _indices(ref), _indices(resumed)
    assert all(torch.equal(a[n], b[n]) for n in a)
    if code_every:  # the kept state's codes moved, and the resumed run kept the same ones
        assert any(not torch.equal(a[n], _indices(student0)[n]) for n in a)
    norms = [n for n, _ in ref.named_parameters() if "norm" in n]
    assert all(torch.equal(ref.get_parameter(n), resumed.get_parameter(n)) for n in norms)


def test_a_checkpoint_from_before_a_config_field_existed_resumes_at_its_default(pair, tmp_path, monkeypatch):
    import json

    teacher, student0, train, held = pair
    ref = copy.deepcopy(student0)
    ref_report = distill_(ref, teacher, train, held, DISTILL, progress=False)
    _killed_at_step_7(pair, DISTILL, tmp_path, monkeypatch)
    state = tmp_path / ft.STATE
    record = json.loads(state.read_text())
    for added_later in ("hidden_weight", "code_every", "code_lr", "code_fraction"):  # as an older version wrote it
        del record["fingerprint"]["config"][added_later]
    del record["state"]["code_updates"]  # the run state had no code updates either
    state.write_text(json.dumps(record))
    # a field it lacks, now set away from its default: another run
    with pytest.raises(VPTQLabError, match="another config"):
        distill_(
            copy.deepcopy(student0),
            teacher,
            train,
            held,
            DISTILL.replace(hidden_weight=1.0),
            progress=False,
            checkpoint_dir=tmp_path,
            resume=True,
        )
    resumed = copy.deepcopy(student0)
    report = distill_(resumed, teacher, train, held, DISTILL, progress=False, checkpoint_dir=tmp_path, resume=True)
    assert report.history == ref_report.history
    a, b = _codebooks(ref), _codebooks(resumed)
    assert all(torch.equal(a[n], b[n]) for n in a)
    # a field this version does not know (a newer version's checkpoint) never matches
    record = json.loads(state.read_text())  # the resumed run committed again
    assert "hidden_weight" in record["fingerprint"]["config"]  # and wrote today's fields
    record["fingerprint"]["config"]["from_the_future"] = 1
    state.write_text(json.dumps(record))
    with pytest.raises(VPTQLabError, match="another config"):
        distill_(
            copy.deepcopy(student0), teacher, train, held, DISTILL, progress=False, checkpoint_dir=tmp_path, resume=True
        )


def test_distilled_checkpoint_reloads_with_the_same_logits(pair, tmp_path):
    teacher, student0, train, held = pair
    student = copy.deepcopy(student0)
    distill_(student, teacher, train, held, DistillConfig(steps=4, lr=1e-3, eval_every=2, select="kl"), progress=False)
    folder = save_quantized(student, None, tmp_path / "q", dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(load_quantized(folder)[0](held).logits, student(held).logits)


def test_code_updates_move_at_most_the_given_fraction_and_lower_heldout_kl(pair, tmp_path):
    """PV-tuning's discrete step: the codes follow straight-through weights, a bounded fraction at a time; the
    indices of the kept state are stored, and the saved folder gives the logits of the model in memory."""
    teacher, student0, train, held = pair
    student = copy.deepcopy(student0)
    config = DISTILL.replace(code_every=2, code_lr=3e-3, code_fraction=0.05)
    report = distill_(student, teacher, train, held, config, progress=False)
    assert [u["step"] for u in report.code_updates] == [2, 4, 6, 8, 10, 12]
    assert all(0 <= u["changed"] <= 0.05 for u in report.code_updates)
    assert all(u["error_after"] <= u["error_before"] for u in report.code_updates)
    moved = sum(int((a != b).sum()) for a, b in zip(_indices(student).values(), _indices(student0).values()))
    assert report.best["step"] > 0 and moved > 0
    assert report.best["kl"] < report.initial["kl"]
    assert report.final["kl"] == pytest.approx(report.best["kl"], rel=1e-3)  # the kept codes are the ones in use
    folder = save_quantized(student, None, tmp_path / "q", dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(load_quantized(folder)[0](held).logits, student(held).logits)


def test_code_updates_take_their_own_learning_rate_on_the_schedule(pair, monkeypatch):
    teacher, student0, train, held = pair
    config = DistillConfig(steps=4, lr=1e-3, eval_every=2, select="kl", schedule="cosine", code_every=2, code_lr=4e-3)
    seen, step = [], torch.optim.Adam.step

    def recording(self, *args, **kwargs):
        seen.append([g["lr"] for g in self.param_groups])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    distill_(copy.deepcopy(student0), teacher, train, held, config, progress=False)
    assert seen == [[config.lr_at(s), 4 * config.lr_at(s)] for s in range(4)]


def test_cosine_schedule_sets_every_steps_learning_rate(pair, monkeypatch):
    teacher, student0, train, held = pair
    config = DistillConfig(steps=4, lr=1e-3, eval_every=2, select="kl", schedule="cosine")
    assert [config.lr_at(s) for s in range(4)] == pytest.approx([1e-3, 0.853553e-3, 0.5e-3, 0.146447e-3], rel=1e-5)
    assert config.replace(schedule="constant").lr_at(3) == 1e-3
    seen, step = [], torch.optim.Adam.step

    def recording(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    distill_(copy.deepcopy(student0), teacher, train, held, config, progress=False)
    assert seen == [config.lr_at(s) for s in range(4)]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="schedule='linear' must be one of"):
        DistillConfig(schedule="linear")
    with pytest.raises(ValueError, match="steps=0 must be an int >= 1"):
        DistillConfig(steps=0)
    with pytest.raises(ValueError, match="lr=-1"):
        DistillConfig(lr=-1)
    with pytest.raises(ValueError, match="code_every=-1 must be an int >= 0"):
        DistillConfig(code_every=-1)
    with pytest.raises(ValueError, match="code_fraction=1.5 must be in"):
        DistillConfig(code_fraction=1.5)
    with pytest.raises(ValueError, match="code_lr=0 must be a positive number"):
        DistillConfig(code_lr=0)
    with pytest.raises(ValueError, match="unknown DistillConfig keys .*'step': did you mean 'steps'"):
        DistillConfig.from_dict({"step": 3})
    teacher = tiny_llama(vocab_size=128, hidden=32, layers=2)
    ids = torch.randint(0, 128, (2, 16))
    with pytest.raises(VPTQLabError, match="no quantized layers"):
        distill_(copy.deepcopy(teacher), teacher, ids, ids, progress=False)
    with pytest.raises(VPTQLabError, match="integer token ids"):
        distill_(teacher, teacher, ids.float(), ids, progress=False)


@pytest.mark.parametrize("norm", [False, True])
def test_training_forward_matches_autograd_through_the_dequantization(norm):
    """The fine-tuning forward recomputes W in backward instead of keeping it; its output and gradients must be
    those of plain autograd through ``F.linear(x, dequantize(...))``, with residual, outliers, perm and norm."""
    from dataclasses import replace

    from vptq_lab import dequantize, vptq_quantize

    gen = torch.Generator().manual_seed(0)
    W, X = torch.randn(24, 40, generator=gen), torch.randn(200, 40, generator=gen)
    cfg = VPTQConfig(
        vector_lens=(4, 4),
        num_centroids=(8, 16),
        num_res_centroids=(-1, 8),
        npercent=10.0,
        group_num=2,
        enable_norm=norm,
        kmeans_iters=3,
    )
    layer = QuantizedLinear(vptq_quantize(W, X.T @ X / 200, cfg), bias=torch.randn(24, generator=gen))
    trainable = layer.trainable_centroids(column_norm=norm)
    names = list(layer.trainable)
    assert len(names) == (5 if norm else 3)  # main, residual, outlier codebooks (+ scale, bias)
    # the run's unpacked codes are kept as int16 (a quarter of int64's memory), and they are the stored ones
    assert [c.dtype for c in layer._codes] == [torch.int16, torch.int16]
    assert all(torch.equal(kept.long(), c) for kept, c in zip(layer._codes, layer.qweight.codes()))
    x = torch.randn(3, 5, 40, generator=gen, requires_grad=True)
    grad_y = torch.randn(3, 5, 24, generator=gen)
    (layer(x) * grad_y).sum().backward()
    found = [x.grad.clone()] + [p.grad.clone() for p in trainable]
    x.grad = None
    for p in trainable:
        p.grad = None
    w = dequantize(replace(layer.qweight, **layer.trainable))
    (torch.nn.functional.linear(x, w, layer.bias) * grad_y).sum().backward()
    expected = [x.grad] + [p.grad for p in trainable]
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, w, layer.bias))
    for name, got, want in zip(["x", *names], found, expected):
        assert want.abs().max() > 0, name
        torch.testing.assert_close(got, want, msg=name)


def test_the_code_update_probe_runs_its_first_steps_through_the_public_hooks(pair, repo_script):
    # experiments/code_updates.py ends each variant after `steps` by on_evaluate, and reads the updates off the report
    probe = repo_script("experiments/code_updates.py")
    teacher, student0, train, held = pair
    plain = probe.run_variant(student0, teacher, train, held, {}, steps=10)
    assert [h["step"] for h in plain["heldout"]] == [10] and plain["code_updates"] == []
    moved = probe.run_variant(student0, teacher, train, held, {"code_every": 5, "code_fraction": 0.05}, steps=10)
    assert [h["step"] for h in moved["heldout"]] == [10] and len(moved["code_updates"]) == 2
    assert all({"changed", "error_before", "error_after", "seconds"} == set(u) for u in moved["code_updates"])


def test_the_transfer_probe_splits_test_figures_by_position(repo_script):
    # experiments/distill_transfer.py: per-bucket KL and cross-entropy gap, and their token-weighted "all" row
    probe = repo_script("experiments/distill_transfer.py")
    teacher = tiny_llama(vocab_size=64, hidden=32, layers=1, seed=4, max_positions=probe.SEQLEN)
    windows = torch.randint(0, 64, (2, probe.SEQLEN), generator=torch.Generator().manual_seed(1))
    same = probe.position_metrics(copy.deepcopy(teacher), teacher, windows)
    assert [r["positions"] for r in same] == ["0-511", "512-1023", "1024-2047", "all"]
    assert all(abs(r["kl"]) < 1e-5 and abs(r["ce_gap"]) < 1e-5 for r in same)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.model.norm.weight.mul_(30.0)  # sharper next-token distributions than the teacher's
    found = probe.position_metrics(student, teacher, windows)
    with torch.no_grad():  # the whole-window figures, computed directly
        ls = torch.log_softmax(student(windows).logits[:, :-1].double(), -1)
        lt = torch.log_softmax(teacher(windows).logits[:, :-1].double(), -1)
    kl = (lt.exp() * (lt - ls)).sum(-1)  # [2, SEQLEN - 1]
    gap = (lt - ls).gather(-1, windows[:, 1:, None])[..., 0]
    assert found[-1]["kl"] > 1e-3
    assert found[-1]["kl"] == pytest.approx(kl.mean().item(), abs=2e-5)
    assert found[-1]["ce_gap"] == pytest.approx(gap.mean().item(), abs=2e-5)
    assert found[0]["kl"] == pytest.approx(kl[:, :512].mean().item(), abs=2e-5)
    assert found[2]["kl"] == pytest.approx(kl[:, 1024:].mean().item(), abs=2e-5)


def test_the_transfer_probe_stores_the_mean_of_its_snapshots(pair, repo_script):
    # --average-last N: snapshots of the trained tensors at each evaluation, their mean stored after the run
    probe = repo_script("experiments/distill_transfer.py")
    teacher, student0, train, held = pair
    student = copy.deepcopy(student0)
    snapshots = []
    distill_(
        student,
        teacher,
        train,
        held,
        DISTILL,
        progress=False,
        on_evaluate=lambda r: snapshots.append(probe.trainable_state(student)) and False,
    )
    assert len(snapshots) == DISTILL.steps // DISTILL.eval_every
    name = next(n for n in snapshots[0] if n.endswith(".centroids"))
    assert not torch.equal(snapshots[0][name], snapshots[-1][name])  # the codebooks moved between evaluations
    probe.store_average(student, snapshots[-2:], train_head=False)
    layer = student.get_submodule(name.rpartition(".")[0])
    want = ((snapshots[-2][name] + snapshots[-1][name]) / 2).to(layer.centroids.dtype)
    torch.testing.assert_close(layer.centroids, want, rtol=0, atol=1e-6)
    assert not layer.trainable and not any(p.requires_grad for p in student.parameters())
    with pytest.raises(RuntimeError, match="trainable_parameters"):
        probe.store_average(student, [{"nothing": torch.zeros(1)}], train_head=False)


def test_distill_profile_groups_operators(repo_script):
    # experiments/distill_profile.py sums the profiler's operators into groups by name; the first match wins
    probe = repo_script("experiments/distill_profile.py")
    assert probe._group("aten::mm") == "matrix products"
    assert probe._group("aten::gather") == "dequantize: gather"
    assert probe._group("aten::scatter_add_") == "dequantize backward: scatter"
    assert probe._group("aten::_foreach_addcdiv_") == "optimizer (Adam)"
    assert probe._group("aten::_log_softmax") == "softmax and KL"
    assert probe._group("aten::cat") == "other"
