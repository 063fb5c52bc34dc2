import math

import pytest
import torch

from vptq_lab.errors import VPTQLabError
from vptq_lab.io.data import TextDataset
from vptq_lab.io.models import load_model
from vptq_lab.lab.eval import perplexity


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def _dataset(text: str) -> TextDataset:
    return TextDataset("toy", "test", text.split("\n"), "memory", False)


def test_perplexity_matches_a_hand_computation(tiny):
    model, tok = tiny
    ds = _dataset("The quick brown fox jumps over the lazy dog.\n" * 40)
    rec = perplexity(model, tok, dataset=ds, seqlen=16, max_windows=3, progress=False)
    ids = tok(ds.joined(), return_tensors="pt").input_ids[0]
    total = 0.0
    with torch.no_grad():
        for w in range(3):
            chunk = ids[w * 16 : (w + 1) * 16]
            logp = torch.log_softmax(model(chunk[None]).logits[0].double(), -1)
            total += -logp[torch.arange(15), chunk[1:]].mean().item()
    assert rec.windows == 3 and rec.tokens == 48 and rec.seqlen == 16
    assert rec.perplexity == pytest.approx(math.exp(total / 3), rel=1e-6)
    assert not rec.comparable


def test_all_windows_by_default(tiny):
    model, tok = tiny
    ds = _dataset("one two three four five six seven\n" * 30)
    n = tok(ds.joined(), return_tensors="pt").input_ids.shape[1]
    assert perplexity(model, tok, dataset=ds, seqlen=32, progress=False).windows == n // 32


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seqlen": 100_000}, "exceeds the model's context of 512"),
        ({"seqlen": 16, "max_windows": 0}, "max_windows must be at least 1"),
        ({"seqlen": 1}, "seqlen must be at least 2"),
    ],
)
def test_bad_arguments(tiny, kwargs, message):
    model, tok = tiny
    with pytest.raises(VPTQLabError, match=message):
        perplexity(model, tok, dataset=_dataset("a b c\n" * 10), progress=False, **kwargs)


def test_text_shorter_than_a_window(tiny):
    model, tok = tiny
    with pytest.raises(VPTQLabError, match="fewer than one window"):
        perplexity(model, tok, dataset=_dataset("short"), seqlen=256, progress=False)


def test_wikitext_record(tiny, wikitext_dir):
    model, tok = tiny
    rec = perplexity(model, tok, seqlen=64, max_windows=2, data_dir=str(wikitext_dir), progress=False)
    assert rec.dataset == "wikitext2" and rec.split == "test" and rec.comparable and rec.windows == 2
    # The same figure by hand, from wiki.test.raw read here: the protocol's text is the `datasets` rows (each line
    # with its newline, a blank line empty) joined with blank lines, and the windows are its first 2 x 64 tokens.
    lines = (wikitext_dir / "wiki.test.raw").read_text(encoding="utf-8").split("\n")[:-1]
    text = "\n\n".join(line + "\n" if line.strip() else "" for line in lines)
    ids = tok(text, return_tensors="pt").input_ids[0, :128].view(2, 64)  # [windows, seqlen]
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits.double(), -1)  # [2, 64, vocab]
    nll = -logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0].mean(1)  # [2]: each window's mean next-token NLL
    assert rec.perplexity == pytest.approx(math.exp(nll.mean().item()), rel=1e-6)
