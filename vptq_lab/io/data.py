"""Evaluation and calibration text: WikiText-2 raw, with honest fallbacks.

Sources, in order:

1. a folder the user names (``data_dir=``, else ``$VPTQ_LAB_DATA``). It is the only
   source then: it must hold the split's ``wiki.*.raw`` file with its known sha256,
   or the call fails and says so (never a silent fall-back to another copy);
2. with no folder named, the Hugging Face hub through ``datasets`` (skipped when
   ``HF_DATASETS_OFFLINE`` or ``HF_HUB_OFFLINE`` is 1);
3. with neither, an offline stand-in corpus: the English help text that ships with
   the interpreter (``pydoc_data.topics``), announced by one warning that says how to
   get WikiText-2. Every result built on it carries ``comparable=False``: its numbers
   are not comparable to published ones.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from vptq_lab.errors import VPTQLabError
from vptq_lab.files import sha256_file

__all__ = [
    "TextDataset",
    "load_wikitext2",
    "tokenize",
    "calibration_windows",
    "split_heldout",
    "WIKITEXT2_SHA256",
    "GET_WIKITEXT2",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
WIKITEXT2_FILES = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}
WIKITEXT2_SHA256 = {
    "wiki.test.raw": "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
    "wiki.valid.raw": "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7",
}


@dataclass(frozen=True)
class TextDataset:
    """Rows of text from one split, and where they came from."""

    name: str  # "wikitext2" or the stand-in's name
    split: str
    rows: list[str]
    source: str  # the folder, "hub:wikitext/wikitext-2-raw-v1" or "stdlib:pydoc_data.topics"
    comparable: bool  # False: numbers are not comparable to published WikiText-2 figures

    def joined(self) -> str:
        """The GPTQ/VPTQ protocol's text: rows joined with blank lines."""
        return "\n\n".join(self.rows)


def _check_split(split: str) -> str:
    split = {"valid": "validation", "val": "validation"}.get(split, split)
    if split not in SPLITS:
        raise VPTQLabError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    return split


def rows_from_raw(raw: str) -> list[str]:
    """The rows `datasets` yields for a wikitext raw file (recipe in the data README)."""
    return [(line + "\n") if line.strip() else "" for line in raw.split("\n")[:-1]]


def _from_folder(folder: Path, split: str, origin: str) -> TextDataset:
    """The split from a folder the user named (``origin`` says how, for the messages)."""
    if not folder.is_dir():
        raise VPTQLabError(
            f"data folder {folder} ({origin}) does not exist: pass an existing folder or unset VPTQ_LAB_DATA"
        )
    name = WIKITEXT2_FILES[split]
    path = folder / name
    if not path.is_file():
        raise VPTQLabError(
            f"data folder {folder} ({origin}) has no {name}: put the wikitext-2-raw files "
            f"({', '.join(WIKITEXT2_FILES.values())}) there, or name another folder"
        )
    actual, expected = sha256_file(path), WIKITEXT2_SHA256.get(name)
    if expected is None:
        log.warning("%s has no known sha256 here; using it unverified", path)
    elif actual != expected:
        raise VPTQLabError(
            f"{path} has sha256 {actual[:16]}..., expected {expected[:16]}...: "
            "the file is not the standard wikitext-2-raw-v1 one; replace it with the original"
        )
    raw = path.read_text(encoding="utf-8")
    return TextDataset("wikitext2", split, rows_from_raw(raw), str(folder), True)


# Set once the hub has failed in this process: each later attempt would only wait again for the same answer.
_hub_unreachable = False


def _from_hub(split: str) -> TextDataset | None:
    global _hub_unreachable
    if _hub_unreachable or os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return None
    try:
        import datasets

        rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"]
    except Exception as exc:  # any hub or network failure means: try the next source
        _hub_unreachable = True
        log.warning("could not load wikitext-2 from the hub (%s); trying the next source", exc)
        return None
    return TextDataset("wikitext2", split, list(rows), "hub:wikitext/wikitext-2-raw-v1", True)


def _stand_in(split: str) -> TextDataset:
    """Python's own help topics, split deterministically 80/10/10 by topic name."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    bucket = {"test": 0, "validation": 1}
    chosen = [n for i, n in enumerate(names) if (i % 10) == bucket.get(split, -1) or (split == "train" and i % 10 >= 2)]
    rows = [line + "\n" if line.strip() else "" for n in chosen for line in topics[n].split("\n")]
    return TextDataset("pydoc-topics (stand-in, NOT WikiText-2)", split, rows, "stdlib:pydoc_data.topics", False)


GET_WIKITEXT2 = (
    "to use WikiText-2, put wikitext-2-raw-v1's wiki.test.raw and wiki.valid.raw in a folder and set "
    "VPTQ_LAB_DATA to it (or pass --data-dir / data_dir=), or allow the Hugging Face hub"
)


def load_wikitext2(split: str = "test", data_dir: str | os.PathLike | None = None) -> TextDataset:
    """Load a WikiText-2 raw split: from the folder named (``data_dir``, else ``$VPTQ_LAB_DATA``), else the hub,
    else the labelled stand-in corpus (see the module doc)."""
    split = _check_split(split)
    if data_dir is not None:
        return _from_folder(Path(data_dir).expanduser(), split, "data_dir / --data-dir")
    if os.environ.get("VPTQ_LAB_DATA"):
        return _from_folder(Path(os.environ["VPTQ_LAB_DATA"]).expanduser(), split, "$VPTQ_LAB_DATA")
    found = _from_hub(split)
    if found is not None:
        return found
    log.warning(
        "WikiText-2 %s split not found (no data folder named, hub not reachable): using the stand-in corpus, "
        "NOT comparable to published numbers; %s",
        split,
        GET_WIKITEXT2,
    )
    return _stand_in(split)


def tokenize(tokenizer, dataset: TextDataset) -> torch.Tensor:
    """Token ids [1, n] of the dataset's joined text, tokenized once."""
    return tokenizer(dataset.joined(), return_tensors="pt").input_ids  # [1, n]


def calibration_windows(tokenizer, dataset: TextDataset, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``nsamples`` random windows of ``seqlen`` tokens, drawn with a local seeded generator.

    Returns int64 [nsamples, seqlen].
    """
    if nsamples < 1 or seqlen < 2:
        raise VPTQLabError(f"calibration needs nsamples >= 1 and seqlen >= 2, got nsamples={nsamples}, seqlen={seqlen}")
    ids = tokenize(tokenizer, dataset)[0]  # [n]
    if ids.numel() <= seqlen:
        raise VPTQLabError(
            f"the {dataset.split} text has {ids.numel()} tokens, fewer than one window of {seqlen}: "
            "lower seqlen or give more text"
        )
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (nsamples,), generator=gen)  # [nsamples]
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])  # [nsamples, seqlen]


def split_heldout(ids: torch.Tensor, seqlen: int, train: int, heldout: int, seed: int = 0) -> tuple:
    """Disjoint training and held-out windows from one token stream ``ids`` [1, n] (the validation split).

    The held-out windows are the last ``heldout`` whole windows of the stream; the ``train`` windows are drawn
    at seeded random offsets from the text before them. Returns int64 ``([train, seqlen], [heldout, seqlen])``.
    """
    ids = ids.reshape(-1)
    cut = ids.numel() - heldout * seqlen
    if cut - seqlen <= 0:
        raise VPTQLabError(
            f"the text has {ids.numel()} tokens: too few for {heldout} held-out windows of {seqlen} and training "
            "windows before them; lower seqlen or the window counts"
        )
    held = ids[cut:].reshape(heldout, seqlen)  # [heldout, seqlen]
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, cut - seqlen, (train,), generator=gen)  # [train]
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()]), held
