import shutil
from pathlib import Path

import pytest
import torch

from vptq_lab.errors import VPTQLabError
from vptq_lab.io import data
from vptq_lab.io.data import WIKITEXT2_SHA256, calibration_windows, load_wikitext2, rows_from_raw, tokenize


def test_rows_follow_the_datasets_recipe():
    raw = " = Title = \n\n Some text .\n \n"
    assert rows_from_raw(raw) == [" = Title = \n", "", " Some text .\n", ""]


def test_wikitext_test_split_matches_the_standard_rows(wikitext_dir):
    ds = load_wikitext2("test", wikitext_dir)
    assert ds.comparable and ds.name == "wikitext2" and ds.source == str(wikitext_dir)
    assert len(ds.rows) == 4358  # lines of wiki.test.raw, as `datasets` yields them
    assert ds.rows[1] == " = Robert Boulter = \n"
    assert ds.joined().startswith("\n\n = Robert Boulter = \n\n\n")


def test_validation_aliases(wikitext_dir):
    assert load_wikitext2("valid", wikitext_dir).split == "validation"
    with pytest.raises(VPTQLabError, match="unknown split"):
        load_wikitext2("dev", wikitext_dir)


def test_wrong_checksum_is_refused(tmp_path, wikitext_dir):
    shutil.copy(wikitext_dir / "wiki.test.raw", tmp_path / "wiki.test.raw")
    with open(tmp_path / "wiki.test.raw", "ab") as fh:
        fh.write(b"tampered\n")
    with pytest.raises(VPTQLabError, match=r"sha256 .* expected " + WIKITEXT2_SHA256["wiki.test.raw"][:16]):
        load_wikitext2("test", tmp_path)


def test_named_folder_without_the_file_is_an_error(tmp_path):
    with pytest.raises(VPTQLabError, match="has no wiki.test.raw"):
        load_wikitext2("test", tmp_path)
    with pytest.raises(VPTQLabError, match="does not exist"):
        load_wikitext2("test", tmp_path / "nope")


def test_stand_in_is_labelled_and_says_how_to_get_wikitext2(monkeypatch, caplog):
    monkeypatch.delenv("VPTQ_LAB_DATA", raising=False)  # no folder named, and the hub is off
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with caplog.at_level("WARNING", logger="vptq_lab.io.data"):
        ds = load_wikitext2("test")
    assert not ds.comparable and "NOT WikiText-2" in ds.name
    (line,) = [r.getMessage() for r in caplog.records]  # one line, naming the way to real data
    assert "stand-in" in line and "VPTQ_LAB_DATA" in line and "wiki.test.raw" in line
    other = load_wikitext2("validation")
    assert set(ds.rows[:50]) != set(other.rows[:50])


def test_env_folder_without_the_files_is_refused_not_replaced(monkeypatch, tmp_path):
    # A folder the user names is the only source: before the fix, a $VPTQ_LAB_DATA folder lacking the file
    # fell through silently to another copy (or the stand-in).
    monkeypatch.setenv("VPTQ_LAB_DATA", str(tmp_path))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(VPTQLabError, match=r"\$VPTQ_LAB_DATA\) has no wiki.test.raw"):
        load_wikitext2("test")
    monkeypatch.setenv("VPTQ_LAB_DATA", str(tmp_path / "missing"))
    with pytest.raises(VPTQLabError, match="does not exist"):
        load_wikitext2("test")


def test_env_folder_is_used_and_checked(monkeypatch, wikitext_dir, tmp_path):
    monkeypatch.setenv("VPTQ_LAB_DATA", str(wikitext_dir))
    ds = load_wikitext2("test")
    assert ds.comparable and ds.source == str(wikitext_dir)
    (tmp_path / "wiki.test.raw").write_text("not wikitext\n")
    monkeypatch.setenv("VPTQ_LAB_DATA", str(tmp_path))
    with pytest.raises(VPTQLabError, match="sha256"):
        load_wikitext2("test")


def test_an_explicit_data_dir_wins_over_the_env_folder(monkeypatch, wikitext_dir, tmp_path):
    monkeypatch.setenv("VPTQ_LAB_DATA", str(tmp_path))  # empty: it would be refused
    assert load_wikitext2("test", wikitext_dir).source == str(wikitext_dir)


def test_the_library_never_looks_beside_the_checkout():
    # ../shared exists beside this project's own checkouts, not on a user's machine: no library path names it.
    package = Path(data.__file__).resolve().parents[1]
    offenders = [str(p.relative_to(package)) for p in package.rglob("*.py") if "shared/data" in p.read_text()]
    assert offenders == []


def test_calibration_windows_are_seeded(tiny_tok, wikitext_dir):
    ds = load_wikitext2("validation", wikitext_dir)
    a = calibration_windows(tiny_tok, ds, nsamples=4, seqlen=32, seed=1)
    b = calibration_windows(tiny_tok, ds, nsamples=4, seqlen=32, seed=1)
    c = calibration_windows(tiny_tok, ds, nsamples=4, seqlen=32, seed=2)
    assert a.shape == (4, 32) and a.dtype == torch.int64
    assert torch.equal(a, b) and not torch.equal(a, c)
    ids = tokenize(tiny_tok, ds)[0]
    start = int(torch.nonzero((ids.unfold(0, 32, 1) == a[0]).all(1))[0])  # each window is a real slice
    assert torch.equal(ids[start : start + 32], a[0])


def test_calibration_text_shorter_than_a_window(tiny_tok, wikitext_dir):
    ds = load_wikitext2("validation", wikitext_dir)
    short = type(ds)(ds.name, ds.split, ds.rows[:3], ds.source, ds.comparable)
    with pytest.raises(VPTQLabError, match="fewer than one window"):
        calibration_windows(tiny_tok, short, nsamples=2, seqlen=4096)
