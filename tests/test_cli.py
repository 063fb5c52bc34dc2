import json

import pytest
import torch

from vptq_lab.cli import main
from vptq_lab.errors import VPTQLabError


def test_eval_json_on_a_local_folder(tiny_model_dir, wikitext_dir, capsys):
    rc = main(
        [
            "eval",
            "--model",
            str(tiny_model_dir),
            "--seqlen",
            "64",
            "--max-windows",
            "2",
            "--json",
            "--data-dir",
            str(wikitext_dir),
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out.strip()
    assert rc == 0 and len(out.splitlines()) == 1
    record = json.loads(out)
    assert record["windows"] == 2 and record["seqlen"] == 64 and record["dataset"] == "wikitext2"
    assert "note" not in record  # the Q4_1 baseline note belongs to the default model only


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--model", "nosuch"], "unknown model"),
        (["eval", "--model", "TINY", "--seqlen", "100000"], "exceeds the model's context"),
        (["eval", "--model", "TINY", "--seqlen", "64", "--data-dir", "/nonexistent/folder"], "does not exist"),
    ],
)
def test_errors_are_one_line(argv, message, tiny_model_dir, capsys):
    argv = [str(tiny_model_dir) if a == "TINY" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vptq-lab: error: ") and message in err[-1]
    assert not any("Traceback" in line for line in err)


@pytest.mark.parametrize("flag", [["--max-windows", "0"], ["--seqlen", "-5"], ["--max-windows", "x"]])
def test_bad_numbers_are_usage_errors(flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", *flag])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "must be at least 1" in err or "expected a whole number, got 'x'" in err


# The review's bugs: nothing of the user's is deleted, and an impossible --out fails before any work -----------


def _no_model_loading(monkeypatch):
    """Make any model load fail loudly: the checks below must refuse before loading anything."""
    import vptq_lab.io.models as models

    def refuse(*_a, **_k):
        raise AssertionError("a model was loaded before the --out check")

    monkeypatch.setattr(models, "load_model", refuse)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("vptq-lab: error: ") and not any("Traceback" in line for line in err)
    return err[-1]


def test_demo_refuses_a_folder_holding_the_users_files(tmp_path, monkeypatch, capsys):
    # Before the fix, `vptq-lab demo --out DIR` ran shutil.rmtree(DIR) on whatever DIR held.
    _no_model_loading(monkeypatch)
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("months of work")
    assert main(["demo", "--out", str(precious)]) == 2
    assert "already exists and was not written by `vptq-lab demo`" in _one_error_line(capsys)
    assert (precious / "chapter1.tex").read_text() == "months of work"


def test_demo_replaces_only_a_folder_it_wrote(tmp_path):
    from vptq_lab import cli

    mine, theirs = tmp_path / "demo", tmp_path / "theirs"
    mine.mkdir()
    (mine / cli.DEMO_MARK).write_text("{}")
    theirs.mkdir()
    cli._check_out(str(mine), None, False, replace_demo=True)  # an earlier demo's folder may be replaced
    with pytest.raises(cli.VPTQLabError, match="not written by `vptq-lab demo`"):
        cli._remove_demo_folder(theirs)  # the last guard before rmtree, checked again
    assert theirs.is_dir()


def test_demo_quantizes_before_it_evaluates(tmp_path, monkeypatch, capsys):
    # The baseline's perplexity used to run first, delaying the long step by one to two minutes on 2 cores.
    from pathlib import Path

    from vptq_lab import cli

    calls = []

    def quantize(model, the_recipe, out, *_a):
        calls.append("quantize")
        Path(out).mkdir(parents=True)
        return {"bits_per_weight": 1.985, "seconds": 1.0}

    def evaluate(model_name, _args):
        calls.append(f"eval {'default' if model_name == 'default' else 'quantized'}")
        return {"perplexity": 20.0, "windows": 8, "comparable": True, "dataset": "wikitext-2", "note": "n"}

    monkeypatch.setattr(cli, "_quantize", quantize)
    monkeypatch.setattr(cli, "_eval_record", evaluate)
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    assert calls == ["quantize", "eval default", "eval quantized"]
    assert (tmp_path / "demo" / cli.DEMO_MARK).is_file()
    assert "full precision (Q4_1 GGUF baseline)" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["quantize", "demo"])
def test_out_under_a_file_fails_before_any_work(command, tmp_path, monkeypatch, capsys):
    # Before the fix, `quantize --out PATH` with an unwritable PATH quantized for minutes, then failed to save.
    _no_model_loading(monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main([command, "--out", str(blocker / "sub" / "model")]) == 2
    line = _one_error_line(capsys)
    assert f"{blocker} is a file, not a folder" in line and "choose another --out" in line


def test_out_on_a_read_only_filesystem_fails_before_any_work(tmp_path, monkeypatch, capsys):
    import tempfile

    _no_model_loading(monkeypatch)

    def read_only(*_a, **_k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    assert main(["quantize", "--out", str(tmp_path / "model")]) == 2
    assert "is not writable (Read-only file system)" in _one_error_line(capsys)


# End-to-end distillation from the command line -------------------------------------------------------------


def _tiny_config_file(folder):
    cfg = folder / "cfg.json"
    cfg.write_text(
        json.dumps({"vector_lens": [-1, 4], "num_centroids": [-1, 16], "kmeans_iters": 2, "nsamples": 4, "seqlen": 64})
    )
    return cfg


@pytest.mark.slow
def test_quantize_with_e2e_then_finetune_again(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from vptq_lab import DistillConfig, recipe

    monkeypatch.delenv("VPTQ_LAB_DATA", raising=False)  # the offline stand-in text: enough tokens, no data needed
    cfg = _tiny_config_file(tmp_path)
    out = tmp_path / "q"
    argv = [
        "quantize",
        "--model",
        str(tiny_model_dir),
        "--config",
        str(cfg),
        "--out",
        str(out),
        "--finetune",
        "e2e",
        "--distill-steps",
        "3",
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--no-progress",
        "--json",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["distill"]["steps_run"] == 3 and not (tmp_path / "ck").exists()  # checkpoints cleaned up
    # the summary names the text the calibration came from: the stand-in is never called WikiText-2
    from vptq_lab import load_wikitext2

    assert ("stand-in" in summary["calibration"]) == (not load_wikitext2("validation").comparable)
    report = json.loads((out / "report.json").read_text())
    assert report["distill"]["config"]["steps"] == 3 and len(report["distill"]["history"]) == 1

    again = tmp_path / "q2"
    argv = [
        "finetune",
        "--model",
        str(out),
        "--teacher",
        str(tiny_model_dir),
        "--out",
        str(again),
        "--distill-steps",
        "2",
        "--distill-schedule",
        "cosine",
        "--distill-train-head",
        "--distill-select",
        "kl",
        "--distill-code-every",
        "1",
        "--distill-code-lr",
        "1e-3",
        "--distill-code-fraction",
        "0.05",
        "--no-progress",
        "--json",
    ]
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    distilled = json.loads((again / "report.json").read_text())["distill"]
    config = distilled["config"]
    assert config["schedule"] == "cosine" and config["train_head"] is True and config["select"] == "kl"
    assert (config["code_every"], config["code_lr"], config["code_fraction"]) == (1, 1e-3, 0.05)
    assert [u["step"] for u in distilled["code_updates"]] == [1, 2]
    from safetensors.torch import load_file

    embed = "model.embed_tokens.weight"  # tied: the trained head is stored as the input embeddings
    assert not torch.equal(load_file(again / "model.safetensors")[embed], load_file(out / "model.safetensors")[embed])
    assert record["steps_run"] == 2 and (again / "model.safetensors").is_file()
    # no --recipe: the budget that holds the saved report's bits (1.37 here: 2); its learning rate is that
    # recipe's (5e-4, not DistillConfig's 2e-4; flags set the rest)
    layers = report["layers"]
    bits = sum(r["bits_per_weight"] * r["out_features"] * r["in_features"] for r in layers) / sum(
        r["out_features"] * r["in_features"] for r in layers
    )
    budget = next((b for b in (2, 3, 4) if bits <= b), None)
    assert record["recipe"] == (f"{budget}-bit" if budget else "DistillConfig defaults"), bits
    assert config["lr"] == (recipe(budget, finetune="e2e").distill.lr if budget else DistillConfig().lr)
    assert json.loads((again / "config.json").read_text())["quantization_config"]["config_for_layers"]


@pytest.mark.slow
def test_finetune_refuses_a_teacher_of_another_shape(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from vptq_lab.testing import save_tiny_model, tiny_llama, tiny_tokenizer

    monkeypatch.delenv("VPTQ_LAB_DATA", raising=False)
    cfg = _tiny_config_file(tmp_path)
    assert (
        main(
            [
                "quantize",
                "--model",
                str(tiny_model_dir),
                "--config",
                str(cfg),
                "--out",
                str(tmp_path / "q"),
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    capsys.readouterr()
    tok = tiny_tokenizer()
    other = save_tiny_model(tmp_path / "other", tiny_llama(vocab_size=len(tok), hidden=32), tok)
    assert (
        main(["finetune", "--model", str(tmp_path / "q"), "--teacher", str(other), "--out", str(tmp_path / "o")]) == 2
    )
    assert "is not the model the student came from (hidden_size 32 != 64)" in _one_error_line(capsys)


def test_finetune_layer_on_a_preset_is_the_measured_recipe(tmp_path, monkeypatch, capsys):
    """`--bits 2 --finetune layer+e2e`: layer-wise steps of one sequence (the measured recipe), then the 2-bit
    distillation recipe; a --config file keeps its own finetune_batch."""
    import vptq_lab.cli as cli
    from vptq_lab import DistillConfig
    from vptq_lab.core.config import preset
    from vptq_lab.lab.recipes import DISTILL_RECIPES

    seen = []
    monkeypatch.setattr(cli, "_quantize", lambda model, the_recipe, *a, **k: seen.append(the_recipe) or {"ok": 1})
    assert main(["quantize", "--bits", "2", "--finetune", "layer+e2e", "--out", str(tmp_path / "a")]) == 0
    assert seen[-1].quantizer_config() == preset(2).replace(finetune=True, finetune_batch=1)
    assert seen[-1].distill == DistillConfig(**DISTILL_RECIPES[2])
    args = [
        "quantize",
        "--config",
        str(_tiny_config_file(tmp_path)),
        "--finetune",
        "layer",
        "--out",
        str(tmp_path / "b"),
    ]
    assert main(args) == 0
    config = seen[-1].quantizer_config()
    assert config.finetune and config.finetune_batch == 0 and seen[-1].distill is None


def test_e2e_starts_from_the_budgets_recipe_and_flags_change_it(tmp_path, monkeypatch, capsys):
    """On a preset, `--finetune e2e` distils by the recipe tuned for its budget (recipe(bits).distill); each
    --distill-* flag given changes one field, --no-distill-train-head included; a --config file starts from
    DistillConfig's defaults; `finetune --recipe N` starts where `quantize --bits N` does."""
    from types import SimpleNamespace

    import vptq_lab.cli as cli
    from vptq_lab import DistillConfig, recipe
    from vptq_lab.lab.recipes import DISTILL_RECIPES

    seen = []
    monkeypatch.setattr(
        cli, "_quantize", lambda model, the_recipe, *a, **k: seen.append(the_recipe.distill) or {"ok": 1}
    )

    def settings(*argv):
        assert main(["quantize", *argv, "--finetune", "e2e", "--out", str(tmp_path / f"o{len(seen)}")]) == 0
        return seen[-1]

    def tuned(bits, **changes):
        return DistillConfig(**{**DISTILL_RECIPES[bits], **changes})

    for bits in (2, 3, 4):
        assert settings("--bits", str(bits)) == tuned(bits) == recipe(bits, finetune="e2e").distill
    assert DISTILL_RECIPES[2] != DISTILL_RECIPES[4] and DISTILL_RECIPES[2]["train_head"] is True
    assert recipe(2, finetune="e2e", steps=5).distill.steps == 5
    with pytest.raises(VPTQLabError, match=r"no recipe for bits=5: the tuned budgets are \[2, 3, 4\]"):
        recipe(5)
    changed = settings("--bits", "2", "--distill-steps", "10", "--no-distill-train-head", "--distill-select", "ppl")
    assert changed == tuned(2, steps=10, train_head=False, select="ppl")
    assert settings("--bits", "4", "--no-distill-train-head") == tuned(4, train_head=False)
    assert settings("--bits", "4", "--distill-hidden-weight", "2") == tuned(4, hidden_weight=2.0)
    assert settings("--bits", "3", "--distill-patience", "5") == tuned(3, patience=5)
    assert settings("--config", str(_tiny_config_file(tmp_path))) == DistillConfig()
    assert settings("--config", str(_tiny_config_file(tmp_path)), "--distill-lr", "1e-3") == DistillConfig(lr=1e-3)

    distilled = []
    keys = ("initial", "best", "final", "steps_run", "stopped_early", "seconds")
    report = SimpleNamespace(to_dict=lambda: dict.fromkeys(keys))
    monkeypatch.setattr(
        "vptq_lab.lab.recipes.distill_from",
        lambda student, tok, teacher, config, **k: distilled.append(config) or report,
    )
    monkeypatch.setattr("vptq_lab.io.checkpoint.load_quantized", lambda folder: (None, object()))
    monkeypatch.setattr("vptq_lab.io.checkpoint.save_quantized", lambda *a, **k: None)
    folder = tmp_path / "q"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    cases = [
        ([], DistillConfig()),
        (["--recipe", "3"], tuned(3)),
        (["--recipe", "2", "--distill-lr", "1e-4"], tuned(2, lr=1e-4)),
    ]
    for i, (extra, expected) in enumerate(cases):
        argv = ["finetune", "--model", str(folder), "--out", str(tmp_path / f"f{i}"), "--json", *extra]
        assert main(argv) == 0
        assert distilled[-1] == expected

    # without --recipe, the budget comes from the checkpoint's report: the smallest that holds its bits per weight
    def layer(bits, out, inp):
        return {"bits_per_weight": bits, "out_features": out, "in_features": inp}

    def finetuned(report, *extra):
        (folder / "report.json").write_text(json.dumps(report))
        out = tmp_path / f"f{len(distilled)}"
        assert main(["finetune", "--model", str(folder), "--out", str(out), "--json", *extra]) == 0
        return distilled[-1]

    # size-weighted: (2.5 * 1 + 3.1 * 3) / 4 = 2.95 -> the 3-bit recipe
    assert finetuned({"layers": [layer(2.5, 8, 8), layer(3.1, 8, 24)]}) == tuned(3)
    assert finetuned({"layers": [layer(1.985, 8, 8)]}) == tuned(2)
    # (2.6 * 1 + 1.9 * 7) / 8 = 1.9875 -> 2 bits; the plain mean, 2.25, would give 3
    assert finetuned({"layers": [layer(2.6, 8, 8), layer(1.9, 8, 56)]}) == tuned(2)
    assert finetuned({"layers": [layer(3.958, 8, 8)]}) == tuned(4)
    assert finetuned({"layers": [layer(5.0, 8, 8)]}) == DistillConfig()  # above every budget: the defaults
    assert finetuned({"layers": []}) == DistillConfig()
    assert finetuned({"layers": [layer(1.985, 8, 8)]}, "--recipe", "none") == DistillConfig()
    assert finetuned({"layers": [layer(1.985, 8, 8)]}, "--recipe", "4") == tuned(4)
    with pytest.raises(SystemExit) as exc:
        finetuned({}, "--recipe", "5")
    assert exc.value.code == 2
    assert "argument --recipe: invalid choice: '5'" in capsys.readouterr().err
