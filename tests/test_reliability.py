"""The bad-input catalogue (docs/troubleshooting.md): every bad input gets one clear error naming the
problem and the fix, and leaves nothing half-done behind (no output folder, no quantized layer).

Each case has an id (C1, M2, ...) that the troubleshooting table lists; the last test checks they agree.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

from vptq_lab.cli import main
from vptq_lab.core.config import VPTQConfig
from vptq_lab.core.packing import merge_codes, pack_codes, packed_words, split_codes, unpack_codes
from vptq_lab.core.quantizer import vptq_quantize
from vptq_lab.errors import VPTQLabError
from vptq_lab.io.checkpoint import FORMAT_VERSION, compare_checkpoints, load_quantized, read_manifest, save_quantized
from vptq_lab.io.data import TextDataset, calibration_windows
from vptq_lab.io.models import load_model
from vptq_lab.model.calibrate import quantize_
from vptq_lab.model.layers import QuantizedLinear
from vptq_lab.testing import tiny_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md"
TINY = VPTQConfig(vector_lens=(-1, 4), num_centroids=(-1, 16), kmeans_iters=2, nsamples=2, seqlen=16)


def _calib(n=2, seqlen=16, seed=0):
    return torch.randint(3, 128, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _untouched(model: nn.Module) -> bool:
    return not any(isinstance(m, QuantizedLinear) for m in model.modules())


def _cli_error(argv: list[str], capsys) -> str:
    """Run the CLI; it must fail with exit 2 and one `vptq-lab: error:` line, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("vptq-lab: error: ") and not any("Traceback" in line for line in err)
    return err[-1]


# Configs: through the CLI's --config (one line, exit 2) -------------------------------------------------

CONFIG_CASES = [  # (id, JSON text, [phrases: the problem, then the fix])
    ("C1", '{"num_centroids": [-1, 300]}', ["k1=300 must be a power of two", "try 256 or 512"]),
    ("C2", '{"vector_lens": [-1, 0]}', ["vector_lens v=0", "must be in 1..16"]),
    ("C3", '{"npercent": 100}', ["npercent=100", "must be in [0, 100)"]),
    (
        "C4",
        '{"npercent": 1, "vector_lens": [4, 6], "num_centroids": [256, 256], "num_res_centroids": [256, 256]}',
        ["outlier part has no residual", "set the first entry to -1"],
    ),
    ("C5", '{"num_centroids": [-1, 131072]}', ["k1=131072", "at most 16 bits"]),
    ("C6", '{"num_centroid": [-1, 256]}', ["unknown VPTQConfig keys ['num_centroid']", "did you mean 'num_centroids'"]),
    ("C7", '{"seed": "zero"}', ["seed='zero'", "must be an int"]),
    ("C8", '{"vector_lens": 6}', ["vector_lens=6", "pair of ints like (-1, 8)"]),
    ("C9", "[-1, 256]", ["must be a JSON object", "got list"]),
    ("C10", '{"vector_lens": [-1, 6],}', ["is not valid JSON", "write one object like"]),
    ("C11", '{"npercent": 2.0}', ["npercent=2.0 needs an outlier codebook", "set vector_lens[0] and num_centroids[0]"]),
    ("C12", '{"percdamp": -1}', ["percdamp=-1", "must be in [0, 10)"]),
]


@pytest.mark.parametrize("cid,text,phrases", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_files(cid, text, phrases, tmp_path, capsys):
    path = tmp_path / "cfg.json"
    path.write_text(text)
    line = _cli_error(["bits", "--config", str(path)], capsys)
    for phrase in phrases:
        assert phrase in line


# Configs that are valid alone but not for this model: refused before the model is touched ----------------

QUANTIZE_TIME = [
    (
        "Q1",
        TINY.replace(num_centroids=(-1, 512)),
        ["num_centroids k1=512 centroids", "only 256 vectors", "lower num_centroids k1 to at most 256"],
    ),
    ("Q2", TINY.replace(num_res_centroids=(-1, 1024)), ["num_res_centroids k2=1024", "at most"]),
    ("Q3", TINY.replace(group_num=5), ["not divisible by group_num=5", "pick a group_num that divides"]),
    (
        "Q4",
        TINY.replace(npercent=5.0, vector_lens=(8, 4), num_centroids=(4096, 16)),
        ["num_centroids k0=4096", "lower num_centroids k0"],
    ),
]


@pytest.mark.parametrize("cid,config,phrases", QUANTIZE_TIME, ids=[c[0] for c in QUANTIZE_TIME])
def test_configs_too_big_for_the_model_are_refused_up_front(cid, config, phrases, tmp_path):
    model = tiny_model("llama")
    with pytest.raises(VPTQLabError) as exc:
        quantize_(model, config, _calib(), progress=False, checkpoint_dir=tmp_path / "ckpt")
    for phrase in phrases:
        assert phrase in str(exc.value)
    assert str(exc.value).startswith("model.layers.0.")  # names the layer
    assert _untouched(model) and not (tmp_path / "ckpt").exists()


# Models ------------------------------------------------------------------------------------------------


def _no_blocks():
    model = tiny_model("llama")
    model.model.layers = nn.ModuleList()
    return model


def _no_linears():
    model = tiny_model("llama")
    for block in model.model.layers:
        block.mlp.down_proj = nn.Identity()
    return model


def _poisoned(path: str, value: float):
    def build():
        model = tiny_model("llama")
        with torch.no_grad():
            model.get_parameter(path).view(-1)[0] = value
        return model

    return build


class _NotAModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)


MODEL_CASES = [
    ("M1", _NotAModel, ["unsupported architecture None", "add a row to vptq_lab.model.arch.ARCHITECTURES"]),
    ("M2", _no_blocks, ["has no decoder blocks at 'model.layers'", "nothing to quantize"]),
    ("M3", _no_linears, ["model.layers.0.mlp.down_proj is not a linear layer (Identity)", "load an unmodified model"]),
    (
        "M4",
        _poisoned("model.layers.1.self_attn.o_proj.weight", float("nan")),
        ["model.layers.1.self_attn.o_proj has NaN or inf weights", "fix or reload the model"],
    ),
    (
        "M5",
        _poisoned("model.layers.0.input_layernorm.weight", float("inf")),
        ["model.layers.0.input_layernorm has NaN or inf weights", "fix or reload"],
    ),
    ("M6", _poisoned("model.embed_tokens.weight", float("-inf")), ["model.embed_tokens has NaN or inf weights"]),
]


@pytest.mark.parametrize("cid,build,phrases", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_bad_models_are_refused_before_any_layer_changes(cid, build, phrases):
    model = build()
    with pytest.raises(VPTQLabError) as exc:
        quantize_(model, TINY, _calib(), progress=False)
    for phrase in phrases:
        assert phrase in str(exc.value)
    assert _untouched(model)


def test_M7_pickled_weights_are_never_read(tmp_path, tiny_tok, monkeypatch):
    """A folder holding only pytorch_model.bin (pickle: can run code) is refused, and torch.load is never called."""
    model = tiny_model("llama")
    model.config.save_pretrained(tmp_path)
    tiny_tok.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", forbidden)
    with pytest.raises(VPTQLabError, match=r"reads only \*\.safetensors weights: convert a pytorch_model\.bin"):
        load_model(str(tmp_path))


def test_M8_truncated_weights_in_a_plain_model_folder(tiny_model_dir, tmp_path):
    folder = _copy(tiny_model_dir, tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(VPTQLabError, match="could not load .*damaged or unsupported: re-download it"):
        load_model(str(folder))


def test_M9_model_config_that_is_not_json(tiny_model_dir, tmp_path):
    folder = _copy(tiny_model_dir, tmp_path / "m")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(VPTQLabError, match="config.json is not valid JSON .*re-download it"):
        load_model(str(folder))


# Calibration -------------------------------------------------------------------------------------------


def test_K1_text_shorter_than_one_window(tiny_tok):
    short = TextDataset("tiny", "validation", ["a few words\n"], "test", False)
    with pytest.raises(VPTQLabError, match="fewer than one window of 2048: lower seqlen or give more text"):
        calibration_windows(tiny_tok, short, nsamples=4, seqlen=2048)


def test_K2_empty_calibration():
    model = tiny_model("llama")
    with pytest.raises(VPTQLabError, match=r"calibration is empty \(0, 16\): give at least one window"):
        quantize_(model, TINY, torch.zeros(0, 16, dtype=torch.int64), progress=False)
    assert _untouched(model)


def test_K3_layer_whose_inputs_are_all_zero_is_quantized_and_flagged(caplog):
    """A zero norm weight makes q/k/v (hence o) see only zeros: H = 0 is damped, never a crash, and flagged."""
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight.zero_()
    with caplog.at_level(logging.WARNING, logger="vptq_lab.model.calibrate"):
        report = quantize_(model, TINY, _calib(), progress=False)
    flagged = {r.name for r in report.records if r.hessian_all_zero}
    assert flagged == {f"model.layers.0.self_attn.{p}_proj" for p in "qkvo"}  # v = 0, so o sees zeros too
    assert all(r.dead_columns == 32 for r in report.records if r.name in flagged)
    assert "all-zero Hessian" in caplog.text and "check the calibration data" in caplog.text
    with torch.no_grad():
        assert torch.isfinite(model(_calib()[:1]).logits).all()


def test_K4_singular_hessian_from_too_few_tokens_is_damped():
    """Two tokens give a rank <= 2 Hessian over 32 inputs: damping makes it invertible."""
    model = tiny_model("llama")
    report = quantize_(model, TINY, _calib(n=1, seqlen=2), progress=False)
    assert all(r.hessian_tokens == 2 and r.proxy_loss_rel == r.proxy_loss_rel for r in report.records)
    with torch.no_grad():
        assert torch.isfinite(model(_calib()[:1]).logits).all()


def test_K5_nan_hessian_names_the_cause():
    H = torch.full((8, 8), float("nan"))
    with pytest.raises(ValueError, match="Hessian contains NaN or inf .*run the model in float32"):
        vptq_quantize(torch.randn(8, 8), H, VPTQConfig(vector_lens=(-1, 2), num_centroids=(-1, 4)))


def test_K6_calibration_of_floats_is_refused():
    with pytest.raises(VPTQLabError, match="integer token ids .*build it with vptq_lab.calibration_windows"):
        quantize_(tiny_model("llama"), TINY, [[1, 2, 3]], progress=False)


def test_K7_token_ids_outside_the_vocabulary():
    model = tiny_model("llama")  # vocabulary of 128
    with pytest.raises(
        VPTQLabError,
        match=r"span 3\.\.499, outside the model's vocabulary of 128: tokenize .* "
        r"with this model's tokenizer",
    ):
        quantize_(model, TINY, torch.tensor([[3, 499, 7, 8]]), progress=False)
    assert _untouched(model)


# Checkpoints -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    model = tiny_model("llama")
    report = quantize_(model, TINY, _calib(), progress=False)
    return save_quantized(model, None, tmp_path_factory.mktemp("ckpt") / "q", report.to_dict())


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _rewrite_tensors(folder: Path, change) -> None:
    """Edit model.safetensors and drop the manifest (an official-format folder has none)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "manifest.json").unlink()


def _edit_json(folder: Path, name: str, change) -> None:
    data = json.loads((folder / name).read_text())
    change(data)
    (folder / name).write_text(json.dumps(data))


Q = "model.layers.0.self_attn.q_proj"


def _truncate(f):
    w = f / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])


def _tamper(f):
    w = f / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-3] ^= 0xFF  # one bit pattern in the last tensor's data: the header still parses
    w.write_bytes(bytes(data))


def _escape(name):
    def change(f):
        _edit_json(f, "manifest.json", lambda m: m["files"].update({name: "0" * 64}))

    return change


def _symlink_out(f):
    outside = f.parent / "secret.txt"
    outside.write_text("not yours")
    os.symlink(outside, f / "notes.txt")
    _edit_json(f, "manifest.json", lambda m: m["files"].update({"notes.txt": "0" * 64}))


def _quant_cfg(change):
    return lambda f: _edit_json(f, "config.json", lambda c: change(c["quantization_config"]))


CHECKPOINT_CASES = [  # (id, damage, load kwargs, [phrases])
    ("P1", _truncate, {"verify": False}, ["cannot read", "the file is truncated or corrupt"]),
    ("P2", _truncate, {}, ["does not match its sha256 in manifest.json", "re-save or re-download"]),
    ("P3", _tamper, {}, ["model.safetensors does not match its sha256", "modified or truncated"]),
    (
        "P4",
        lambda f: _rewrite_tensors(f, lambda t: t.pop(f"{Q}.indices")),
        {},
        [f"missing tensor '{Q}.indices'", "re-save the model"],
    ),
    (
        "P5",
        lambda f: _rewrite_tensors(f, lambda t: t.update({f"{Q}.centroids.weight": torch.zeros(1, 8).half()})),
        {},
        [f"{Q}.centroids.weight has shape (1, 8)", "do not match; re-save the model"],
    ),
    (
        "P6",
        lambda f: _rewrite_tensors(f, lambda t: t.update({"model.norm.weight": torch.ones(7)})),
        {},
        ["a tensor's shape does not match config.json", "re-save the model"],
    ),
    (
        "P7",
        lambda f: _rewrite_tensors(f, lambda t: t.update({f"{Q}.indices": t[f"{Q}.indices"].float()})),
        {},
        [f"{Q}.indices is torch.float32, not int32", "re-save the model"],
    ),
    (
        "P8",
        _quant_cfg(lambda q: q.update(vptq_lab_format_version=FORMAT_VERSION + 1)),
        {"verify": False},
        [f"format version {FORMAT_VERSION + 1}, newer than", "upgrade vptq_lab"],
    ),
    (
        "P9",
        lambda f: _edit_json(f, "manifest.json", lambda m: m.update(format_version=99)),
        {},
        ["format version 99, newer than", "upgrade vptq_lab"],
    ),
    (
        "P10",
        _escape("../outside.json"),
        {},
        ["manifest.json names '../outside.json', outside the folder", "refusing to read it"],
    ),
    ("P11", _escape("/etc/passwd"), {}, ["manifest.json names '/etc/passwd', outside the folder"]),
    ("P12", _symlink_out, {}, ["is a link to", "outside the folder", "refusing to read it"]),
    (
        "P13",
        lambda f: _edit_json(f, "manifest.json", lambda m: m["files"].pop("model.safetensors")),
        {},
        ["does not list config.json and model.safetensors", "re-save the model"],
    ),
    ("P14", lambda f: (f / "manifest.json").write_text("{"), {}, ["manifest.json is not valid JSON", "re-save"]),
    (
        "P15",
        _quant_cfg(
            lambda q: q["config_for_layers"].update({"model.layers.0.input_layernorm": q["config_for_layers"][Q]})
        ),
        {"verify": False},
        ["quantizes 'model.layers.0.input_layernorm', which is not a linear", "re-save the model"],
    ),
    (
        "P16",
        _quant_cfg(lambda q: q["config_for_layers"][Q].pop("group_size")),
        {"verify": False},
        [f"config_for_layers['{Q}'] lacks ['group_size']", "re-save the model"],
    ),
    (
        "P17",
        _quant_cfg(lambda q: q.pop("config_for_layers")),
        {"verify": False},
        ["no valid quantization_config.config_for_layers", "re-save the model"],
    ),
    (
        "P18",
        lambda f: (f / "config.json").unlink(),
        {"verify": False},
        ["config.json is missing", "point at a saved VPTQ checkpoint folder"],
    ),
]


@pytest.mark.parametrize("cid,damage,kwargs,phrases", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_damaged_checkpoints(cid, damage, kwargs, phrases, saved, tmp_path):
    folder = _copy(saved, tmp_path / "q")
    damage(folder)
    with pytest.raises(VPTQLabError) as exc:
        load_quantized(folder, **kwargs)
    for phrase in phrases:
        assert phrase in str(exc.value)


def test_P19_read_manifest_never_opens_an_escaping_path(saved, tmp_path, monkeypatch):
    """The path check happens before any file named by the manifest is opened."""
    folder = _copy(saved, tmp_path / "q")
    _escape("../../x")(folder)
    opened = []
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: opened.append(self) or real_open(self, *a, **k))
    with pytest.raises(VPTQLabError, match="outside the folder"):
        read_manifest(folder)
    assert not any(".." in str(p) for p in opened)


def test_P20_saving_over_an_existing_folder_refuses_and_leaves_no_temp(saved, tmp_path):
    model, _ = load_quantized(saved)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(VPTQLabError, match="already exists: choose another --out folder or pass overwrite=True"):
        save_quantized(model, None, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "keep.txt").read_text() == "mine"


def test_P21_a_failed_save_leaves_nothing(tmp_path):
    with pytest.raises(VPTQLabError, match="no quantized layers: run quantize_ first"):
        save_quantized(tiny_model("llama"), None, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_compare_checkpoints_finds_what_differs(saved, tmp_path):
    same = compare_checkpoints(saved, _copy(saved, tmp_path / "copy"))
    assert same["identical"] and same["tensors"] > 0 and same["differing"] == []
    # one codebook entry changed, re-saved through safetensors: same names, one differing tensor
    other = _copy(saved, tmp_path / "other")
    tensors = load_file(str(other / "model.safetensors"))
    name = next(k for k in sorted(tensors) if k.endswith("centroids.weight"))
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1
    save_file(tensors, str(other / "model.safetensors"))
    diff = compare_checkpoints(saved, other)
    assert not diff["identical"] and diff["same_names"] and diff["differing"] == [name]
    assert diff["same_config_json"] and diff["same_report"] and not diff["same_file_bytes"]
    # a report that differs only in wall-clock seconds is the same report
    report = json.loads((saved / "report.json").read_text())
    for layer in report["layers"]:
        layer["seconds"] = layer.get("seconds", 0) + 1.0
    timed = _copy(saved, tmp_path / "timed")
    (timed / "report.json").write_text(json.dumps(report))
    assert compare_checkpoints(saved, timed)["same_report"]
    with pytest.raises(VPTQLabError, match="holds no model.safetensors"):
        compare_checkpoints(saved, tmp_path)


# The CLI -----------------------------------------------------------------------------------------------


@pytest.fixture()
def cfg_file(tmp_path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(TINY.to_json())
    return path


def test_L1_unknown_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["quantize", "--out", "x", "--bitz", "2"])
    assert exc.value.code == 2 and "unrecognized arguments: --bitz" in capsys.readouterr().err


def test_L2_bits_without_a_preset(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["quantize", "--out", "x", "--bits", "5"])
    assert exc.value.code == 2 and "invalid choice: 5 (choose from 2, 3, 4)" in capsys.readouterr().err


def test_L3_nonexistent_model_path(tmp_path, capsys):
    line = _cli_error(["quantize", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys)
    assert "unknown model" in line and "a local model folder" in line
    assert not (tmp_path / "o").exists()


def test_L4_existing_out_is_refused_untouched(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}, out.stat().st_mtime_ns
    line = _cli_error(["quantize", "--model", str(tiny_model_dir), "--out", str(out)], capsys)
    assert "already exists: choose another --out folder (nothing was overwritten)" in line
    assert ({p.name: p.stat().st_mtime_ns for p in out.iterdir()}, out.stat().st_mtime_ns) == before


def test_L5_nonexistent_config_file(tmp_path, capsys):
    line = _cli_error(["quantize", "--config", str(tmp_path / "none.json"), "--out", str(tmp_path / "o")], capsys)
    assert "does not exist: pass a VPTQConfig JSON file" in line and not (tmp_path / "o").exists()


def test_L6_resume_without_checkpoint_dir(tmp_path, capsys):
    line = _cli_error(["quantize", "--out", str(tmp_path / "o"), "--resume"], capsys)
    assert "--resume needs --checkpoint-dir" in line


def test_L7_checkpoint_dir_inside_out(tmp_path, capsys):
    out = tmp_path / "o"
    line = _cli_error(["quantize", "--out", str(out), "--checkpoint-dir", str(out / "ck")], capsys)
    assert "is inside --out" in line and "put it elsewhere" in line and not out.exists()


def test_L8_config_too_big_for_the_model_leaves_no_out_and_no_checkpoint(tmp_path, tiny_model_dir, capsys):
    cfg = tmp_path / "big.json"
    cfg.write_text(TINY.replace(num_centroids=(-1, 4096)).to_json())
    out, ck = tmp_path / "o", tmp_path / "ck"
    line = _cli_error(
        [
            "quantize",
            "--model",
            str(tiny_model_dir),
            "--config",
            str(cfg),
            "--out",
            str(out),
            "--checkpoint-dir",
            str(ck),
            "--no-progress",
        ],
        capsys,
    )
    assert "k1=4096 centroids" in line and "lower num_centroids k1" in line
    assert not out.exists() and not ck.exists()


def test_L9_nonexistent_data_dir(tmp_path, tiny_model_dir, cfg_file, capsys):
    line = _cli_error(
        [
            "quantize",
            "--model",
            str(tiny_model_dir),
            "--config",
            str(cfg_file),
            "--out",
            str(tmp_path / "o"),
            "--data-dir",
            str(tmp_path / "nodata"),
        ],
        capsys,
    )
    assert "does not exist: pass an existing folder" in line and not (tmp_path / "o").exists()


def test_L11_code_update_settings_without_code_updates(tmp_path, capsys):
    for flag, value in (("--distill-code-lr", "1e-3"), ("--distill-code-fraction", "0.05")):
        argv = ["quantize", "--out", str(tmp_path / "o"), "--finetune", "e2e", flag, value]
        line = _cli_error(argv, capsys)
        assert f"{flag} needs --distill-code-every N (code updates)" in line and not (tmp_path / "o").exists()
    line = _cli_error(
        ["quantize", "--out", str(tmp_path / "o"), "--finetune", "e2e", "--distill-code-every", "10"]
        + ["--distill-code-fraction", "2"],
        capsys,
    )
    assert "--distill-code-fraction: code_fraction=2.0 must be in (0, 1] (try 0.01)" in line
    line = _cli_error(
        ["quantize", "--out", str(tmp_path / "o"), "--finetune", "e2e", "--distill-hidden-weight", "-1"], capsys
    )
    assert "--distill-hidden-weight: hidden_weight=-1.0 must be a number >= 0" in line and not (tmp_path / "o").exists()
    line = _cli_error(["quantize", "--out", str(tmp_path / "o"), "--finetune", "e2e", "--distill-lr", "0"], capsys)
    assert "--distill-lr: lr=0.0 must be a positive number (lr: try 1e-4)" in line and not (tmp_path / "o").exists()


def test_L10_eval_of_a_damaged_checkpoint_is_one_line(saved, tmp_path, capsys):
    folder = _copy(saved, tmp_path / "q")
    _tamper(folder)
    line = _cli_error(["eval", "--model", str(folder), "--seqlen", "16"], capsys)
    assert "does not match its sha256" in line


# Hypothesis: the validator and the packer ----------------------------------------------------------------

FIELD_TYPES = {
    "vector_lens": "pair",
    "num_centroids": "pair",
    "num_res_centroids": "pair",
    "npercent": float,
    "group_num": int,
    "enable_norm": bool,
    "enable_perm": bool,
    "percdamp": float,
    "blocksize": int,
    "kmeans_iters": int,
    "kmeans_init": str,
    "seed": int,
    "nsamples": int,
    "seqlen": int,
    "propagation": str,
    "finetune": bool,
    "finetune_steps": int,
    "finetune_lr": float,
    "finetune_batch": int,
    "codebook_scope": str,
}
junk = st.one_of(
    st.none(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.floats(allow_nan=True),
    st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(FIELD_TYPES)), junk)
def test_any_wrong_type_raises_a_value_error_naming_the_field(field, value):
    """Whatever JSON gives a field, the validator answers ValueError naming that field, never TypeError; and what it
    accepts is a value of the field's type, kept as given."""
    try:
        cfg = VPTQConfig.from_dict({field: value})
    except ValueError as exc:
        assert field in str(exc)
    except Exception as exc:  # noqa: BLE001 - the point: nothing but ValueError escapes
        pytest.fail(f"{field}={value!r} raised {type(exc).__name__}: {exc}")
    else:
        assert _of_the_fields_type(field, value), f"{field}={value!r} was accepted"
        assert getattr(cfg, field) == (tuple(value) if FIELD_TYPES[field] == "pair" else value)


def _of_the_fields_type(field: str, value) -> bool:
    """Whether ``value`` is of ``field``'s JSON type: bools are not ints, an int is a fine float, NaN is no float."""
    kind = FIELD_TYPES[field]
    if kind == "pair":
        return isinstance(value, (list, tuple)) and len(value) == 2 and all(type(x) is int for x in value)
    if kind is float:
        return type(value) in (int, float) and math.isfinite(value)
    return type(value) is kind


@settings(max_examples=80, deadline=None)
@given(st.integers(-5, 1 << 18))
def test_codebook_sizes_accepted_exactly_when_a_power_of_two_up_to_16_bits(k):
    ok = 2 <= k <= 1 << 16 and k & (k - 1) == 0
    try:
        VPTQConfig(num_centroids=(-1, k))
        assert ok
    except ValueError as exc:
        assert not ok and "num_centroids k1" in str(exc)


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=12).filter(lambda k: k not in FIELD_TYPES), st.integers(), min_size=1, max_size=3
    )
)
def test_unknown_keys_are_all_named(extra):
    with pytest.raises(ValueError) as exc:
        VPTQConfig.from_dict({**VPTQConfig().to_dict(), **extra})
    assert all(repr(k) in str(exc.value) for k in extra)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 32),
    st.lists(st.integers(0, 3), min_size=0, max_size=2),
    st.integers(0, 70),
    st.integers(0, 2**32 - 1),
)
def test_pack_unpack_round_trips_any_shape(bits, lead, s, seed):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << 62, (*lead, s), generator=gen, dtype=torch.int64) % (1 << bits)
    words = pack_codes(codes, bits)
    assert words.dtype == torch.int32 and words.shape == (*lead, packed_words(s, bits))
    assert torch.equal(unpack_codes(words, bits, s), codes)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 16), st.integers(0, 16), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_merged_codes_round_trip_through_the_packer(b1, b2, s, seed):
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 1 << b1, (2, s), generator=gen)
    res = torch.randint(0, 1 << b2, (2, s), generator=gen) if b2 else None
    words = pack_codes(merge_codes(idx, res, b1), b1 + b2)
    back_idx, back_res = split_codes(unpack_codes(words, b1 + b2, s), b1, b2)
    assert torch.equal(back_idx, idx) and (back_res is None if res is None else torch.equal(back_res, res))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 32), st.integers(1, 40), st.integers(1, 3))
def test_pack_refuses_codes_that_do_not_fit(bits, s, extra):
    codes = torch.zeros(s, dtype=torch.int64)
    codes[-1] = (1 << bits) + extra - 1 if bits < 62 else -1
    with pytest.raises(ValueError, match=f"out of range for {bits} bits"):
        pack_codes(codes, bits)


# The table in docs/troubleshooting.md -------------------------------------------------------------------


def _case_ids() -> set[str]:
    tables = CONFIG_CASES + QUANTIZE_TIME + MODEL_CASES + CHECKPOINT_CASES
    named = {m.group(1) for name in globals() if (m := re.match(r"test_([A-Z]\d+)_", name))}
    return {case[0] for case in tables} | named


def test_every_case_is_in_the_troubleshooting_table():
    """Every id tested here has a row in the table (a CLI line from test_resume too), and every row a test."""
    rows = set(re.findall(r"^\| ([A-Z]\d+) \|", DOC.read_text(), flags=re.M))
    cases = _case_ids()
    assert cases - rows == set(), f"add rows to {DOC.name}"
    assert {i for i in rows if not i.startswith("R")} - cases == set(), "rows without a test here"
    assert len(cases) >= 30


# Non-quantized tensors are stored in 16 bits, as official checkpoints store them ---------------------------


def test_non_quantized_tensors_are_stored_in_16_bits(tmp_path):
    from safetensors import safe_open

    from vptq_lab.testing import tiny_llama

    model = tiny_llama(vocab_size=384, hidden=64, layers=2)
    calib = torch.randint(0, 384, (4, 32), generator=torch.Generator().manual_seed(0))
    quantize_(model, TINY.replace(nsamples=4, seqlen=32), calib, progress=False)
    small = save_quantized(model, None, tmp_path / "fp16")
    exact = save_quantized(model, None, tmp_path / "fp32", dtype=torch.float32)
    with safe_open(str(small / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.float16
        assert f.get_tensor("model.norm.weight").dtype == torch.float16
        assert f.get_tensor("model.layers.0.self_attn.q_proj.centroids.weight").dtype == torch.float16
        assert f.get_tensor("model.layers.0.self_attn.q_proj.indices").dtype == torch.int32  # format untouched
    assert json.loads((small / "config.json").read_text())["dtype"] == "float16"
    size = {p.name: (p / "model.safetensors").stat().st_size for p in (small, exact)}
    assert size["fp16"] < 0.75 * size["fp32"]  # the embedding dominates a tiny model too
    ids = torch.randint(0, 384, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
        rounded = load_quantized(small)[0](ids).logits
        copied = load_quantized(exact)[0](ids).logits
    assert torch.equal(copied, ref)  # dtype=float32: a bit-exact copy
    assert next(load_quantized(small)[0].parameters()).dtype == torch.float32  # computed in fp32 after loading
    torch.testing.assert_close(rounded, ref, rtol=0, atol=1e-2)  # fp16 rounding of embeddings and norms only
