import json

import pytest

from vptq_lab.cli import main


def test_eval_json_on_a_local_folder(tiny_model_dir, wikitext_dir, capsys):
    rc = main(["eval", "--model", str(tiny_model_dir), "--seqlen", "64", "--max-windows", "2", "--json",
               "--data-dir", str(wikitext_dir), "--no-progress"])
    out = capsys.readouterr().out.strip()
    assert rc == 0 and len(out.splitlines()) == 1
    record = json.loads(out)
    assert record["windows"] == 2 and record["seqlen"] == 64 and record["dataset"] == "wikitext2"
    assert "note" not in record  # the Q4_1 baseline note belongs to the default model only


@pytest.mark.parametrize("argv, message", [
    (["eval", "--model", "nosuch"], "unknown model"),
    (["eval", "--model", "TINY", "--seqlen", "100000"], "exceeds the model's context"),
    (["eval", "--model", "TINY", "--seqlen", "64", "--data-dir", "/nonexistent/folder"], "does not exist"),
])
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
