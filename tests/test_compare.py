import json
from pathlib import Path

import pandas as pd
import pytest

from vptq_lab.cli import main
from vptq_lab.core.config import VPTQConfig
from vptq_lab.errors import VPTQLabError
from vptq_lab.lab.compare import COLUMNS, CompareSettings, compare

SETTINGS = CompareSettings(windows=2, seqlen=32, nsamples=4, calib_seqlen=32)
SMALL = VPTQConfig(vector_lens=(-1, 4), num_centroids=(-1, 16), kmeans_iters=2)


@pytest.fixture()
def data_env(monkeypatch, wikitext_dir):
    monkeypatch.setenv("VPTQ_LAB_DATA", str(wikitext_dir))


def test_compare_rows_and_cache(tiny_model_dir, tmp_path, data_env, monkeypatch):
    configs = {("vq", 2): SMALL.replace(enable_perm=False), ("vptq", 2): SMALL}
    cache = tmp_path / "rows.jsonl"
    table = compare(
        str(tiny_model_dir), ["rtn", "vq", "vptq"], [2], settings=SETTINGS, configs=configs, cache=cache, progress=False
    )
    assert list(table.columns) == COLUMNS
    assert list(table.method) == ["fp", "rtn", "vq", "vptq"]
    assert (table.windows == 2).all() and (table.perplexity > 1).all()
    assert table.set_index("method").loc["vptq", "bits"] == pytest.approx(
        json.loads(cache.read_text().splitlines()[-1])["row"]["bits"]
    )
    vq, vptq = table.set_index("method").loc[["vq", "vptq"], "proxy_loss_rel_mean"]
    assert vptq < vq  # the column loop's feedback pays off on the same codebook size
    assert len(cache.read_text().splitlines()) == 4

    import vptq_lab.lab.compare as cmp

    monkeypatch.setattr(cmp, "_run_row", lambda *a, **k: pytest.fail("a cached row was recomputed"))
    again = compare(
        str(tiny_model_dir), ["rtn", "vq", "vptq"], [2], settings=SETTINGS, configs=configs, cache=cache, progress=False
    )
    pd.testing.assert_frame_equal(again, table)


def test_unknown_method_is_refused(tiny_model_dir):
    with pytest.raises(VPTQLabError, match="unknown method 'awq'"):
        compare(str(tiny_model_dir), ["awq"], [2], settings=SETTINGS, progress=False)


def test_cli_compare(tiny_model_dir, tmp_path, data_env, capsys):
    out = tmp_path / "res.csv"
    rc = main(
        [
            "compare",
            "--model",
            str(tiny_model_dir),
            "--bits",
            "4",
            "--methods",
            "rtn",
            "--out",
            str(out),
            "--windows",
            "2",
            "--seqlen",
            "32",
            "--no-progress",
        ]
    )
    assert rc == 0 and out.is_file()
    table = pd.read_csv(out)
    assert list(table.method) == ["fp", "rtn"] and table.bits.iloc[1] > 4
    assert main(["compare", "--bits", "x", "--out", str(out)]) == 2
    assert "comma-separated whole numbers" in capsys.readouterr().err


def test_committed_cache_keys_still_match_the_presets():
    """A config field added later (finetune_batch) must not orphan rows cached before it existed:
    the committed whole-model caches are found by the current presets' keys."""
    from pathlib import Path

    from vptq_lab.core.config import preset
    from vptq_lab.lab.compare import _row_key

    cache = Path(__file__).resolve().parents[1] / "benchmarks/results/vptq_table.cache.jsonl"
    keys = {json.loads(line)["key"] for line in cache.read_text().splitlines() if line.strip()}
    settings = CompareSettings(windows=32, seqlen=2048)
    for bits in (2, 3, 4):
        assert _row_key("default", "vptq", preset(bits), settings) in keys, bits
    tuned = _row_key("default", "vptq", preset(2).replace(finetune=True, finetune_batch=1), settings)
    assert '"finetune_batch": 1' in tuned and tuned in keys  # the fine-tuning row (vptq_table --rows vptq2-finetune)


def test_cached_rows_from_other_code_are_stale_and_recomputed(tmp_path, caplog):
    import json

    from vptq_lab.lab import compare as cmp

    settings = cmp.CompareSettings(windows=1, seqlen=16)
    key = cmp._row_key("m", "vptq", cmp._config_for("vptq", 2, None), settings)
    old = json.loads(key) | {"results_version": cmp.RESULTS_VERSION - 1}
    cache = tmp_path / "c.jsonl"
    cache.write_text(
        json.dumps({"key": key, "row": {"perplexity": 1.0}})
        + "\n"
        + json.dumps({"key": json.dumps(old, sort_keys=True), "row": {"perplexity": 2.0}})
        + "\n"
    )
    with caplog.at_level("WARNING"):
        rows = cmp.current_rows(cache)
    assert list(rows) == [key]  # the old-code row is not reused: compare() computes it again
    assert "1 cached row(s) came from other code" in caplog.text


def test_committed_caches_are_current_and_record_their_commit():

    from vptq_lab.lab.results import current_rows

    for name in ("compare.cache.jsonl", "vptq_table.cache.jsonl"):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / name
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        rows = current_rows(path)
        assert len(rows) == len(lines)  # no stale row left behind a README number
        assert all(len(r["commit"]) >= 7 for r in rows.values())


def test_preset_search_flags_exactly_todays_presets():
    import json

    import pandas as pd

    from vptq_lab.core.config import preset

    table = pd.read_csv(Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "preset_search.csv")
    flagged = table[table.is_current_preset]
    assert sorted(flagged.target) == [2, 3, 4]
    for _, row in flagged.iterrows():
        cfg, now = json.loads(row.config), preset(int(row.target))
        assert (tuple(cfg["vector_lens"]), tuple(cfg["num_centroids"]), cfg["group_num"]) == (
            now.vector_lens,
            now.num_centroids,
            now.group_num,
        )


def test_accuracy_table_marks_the_best_recipe_within_each_budget():
    import pandas as pd

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "accuracy.csv"
    if not path.is_file():
        pytest.skip("benchmarks/results/accuracy.csv has not been made yet (python benchmarks/accuracy.py)")
    table = pd.read_csv(path)
    expected = ["row", "budget", "recipe", "allocation", "bits_per_weight", "perplexity", "windows", "fp_perplexity"]
    assert list(table.columns[: len(expected)]) == expected
    assert (table.windows == 32).all() and table.fp_perplexity.nunique() == 1  # the same windows for every row
    assert table.command.str.startswith("vptq-lab quantize ").all() and table.commit.notna().all()
    for budget, rows in table.groupby("budget"):
        within = rows[rows.bits_per_weight <= budget]
        (best,) = rows[rows.best].index  # exactly one recommended recipe per budget
        assert best == within.perplexity.idxmin(), f"{budget}-bit: best is not the lowest perplexity within budget"


def test_each_accuracy_row_is_what_its_command_runs(repo_script):
    """Every row of benchmarks/accuracy.py runs the recipe that the CLI command in its `command` column builds:
    the table's figures come from the command users run."""
    import shlex

    import vptq_lab.cli as cli

    accuracy = repo_script("benchmarks/accuracy.py")
    for name, (make, command, _) in accuracy.ROWS.items():
        args = cli.build_parser().parse_args(shlex.split(command)[1:])
        assert cli._cli_recipe(args) == make(), f"{name}: {command}"


def test_code_commit_is_dirty_for_code_changes_only(tmp_path):
    """A benchmark appending to its own results file must not mark its later rows "+dirty"; a code change must."""
    import subprocess

    from vptq_lab.lab.results import code_commit

    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "r.jsonl").write_text("{}\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    clean = code_commit(tmp_path)
    assert len(clean) == 12 and not clean.endswith("+dirty")
    (tmp_path / "benchmarks" / "results" / "r.jsonl").write_text("{}\n{}\n")
    assert code_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert code_commit(tmp_path) == clean + "+dirty"


def test_config_key_omits_only_later_fields_left_at_their_default():
    from vptq_lab.lab.results import config_key
    from vptq_lab.model.distill import DistillConfig

    # fields added after rows were cached drop out at their default, so the old rows keep their keys
    assert not {"finetune_batch", "codebook_scope"} & set(config_key(SMALL))
    assert not {"schedule", "train_head"} & set(config_key(DistillConfig()))
    assert config_key(DistillConfig())["lr"] == DistillConfig().lr  # every other field stays
    changed = config_key(DistillConfig(schedule="cosine", train_head=True))
    assert changed["schedule"] == "cosine" and changed["train_head"] is True
    assert config_key(SMALL.replace(codebook_scope="per-block"))["codebook_scope"] == "per-block"


def test_beyond_presets_names_what_each_command_adds():
    from vptq_lab.lab.results import beyond_presets

    table = pd.DataFrame(
        {
            "row": ["2-preset", "2-preset-mixed", "2-preset-mixed-scaled", "2-best", "2-best-mixed"],
            "recipe": ["2-bit preset, fine-tuning: none"] * 3 + ["2-bit preset, fine-tuning: e2e"] * 2,
            "allocation": ["uniform", "mixed", "mixed, role-scaled", "uniform", "mixed"],
        }
    )
    found = beyond_presets(table)
    assert dict(zip(found.row, found.method)) == {
        "2-preset-mixed": "VPTQ + --allocate",
        "2-preset-mixed-scaled": "VPTQ + --allocate --role-scale",
        "2-best": "VPTQ + e2e",
        "2-best-mixed": "VPTQ + e2e + --allocate",
    }


def test_generations_rerun_replaces_only_its_rows(repo_script):
    """benchmarks/generate.py --rows: the rows answered again replace theirs, the others keep their answers and
    name the commit that made them (an older file's one commit), "fp" first."""
    generate = repo_script("benchmarks/generate.py")
    previous = {
        "commit": "old",
        "rows": [
            {"row": "fp", "answers": {"q": "a"}},
            {"row": "2-best-mixed", "answers": {"q": "b"}},
            {"row": "3-preset", "answers": {"q": "c"}},
        ],
    }
    rows = [
        {"row": "fp", "answers": {"q": "a"}, "commit": "new"},
        {"row": "2-best-mixed", "answers": {"q": "d"}, "commit": "new"},
    ]
    merged = generate.merge(previous, rows)
    assert [r["row"] for r in merged] == ["fp", "2-best-mixed", "3-preset"]
    assert [r["commit"] for r in merged] == ["new", "new", "old"]
    assert merged[1]["answers"] == {"q": "d"} and merged[2]["answers"] == {"q": "c"}
    assert generate.merge({"rows": []}, rows) == rows
