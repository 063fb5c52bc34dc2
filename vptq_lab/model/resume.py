"""Crash-safe block checkpoints for :func:`vptq_lab.model.calibrate.quantize_`.

After every decoder block the driver writes, into ``checkpoint_dir``:

- ``block-0003.safetensors``: the block's quantized tensors (official names, the
  layer configs in the file's metadata) and its other tensors (norm weights,
  which layer-wise fine-tuning may have changed);
- ``hidden-0003.safetensors``: the hidden states that feed block 4, one fp32
  tensor per calibration batch, so a resumed run needs no recomputation and ends
  bit-identical to an uninterrupted one;
- ``progress.json``: what the run is (config, model and calibration
  fingerprints), the completed blocks with the sha256 of their files, and the
  per-layer records so far.

Every file is written to a temporary name, fsync'd, then ``os.replace``-d into
place, and ``progress.json`` is written last: it is the commit point. A run killed
at any instant leaves either the previous progress or the new one, never a mix.

Only JSON and safetensors are read back, and only file names that ``progress.json``
itself lists and that stay inside the folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vptq_lab.core.config import VPTQConfig
from vptq_lab.core.format import qweight_from_tensors
from vptq_lab.errors import VPTQLabError
from vptq_lab.files import atomic_save_tensors, atomic_write_bytes, safe_member
from vptq_lab.model.arch import set_module
from vptq_lab.model.layers import QuantizedLinear, module_tensors

__all__ = ["BlockCheckpoints", "run_fingerprint", "remove_checkpoints", "PROGRESS", "CHECKPOINT_VERSION"]

log = logging.getLogger(__name__)

PROGRESS = "progress.json"
CHECKPOINT_VERSION = 1


# What a run is --------------------------------------------------------------------------------------------


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def run_fingerprint(model: nn.Module, config: VPTQConfig, calibration: torch.Tensor, batch_size: int) -> dict:
    """What must match for a resume to be valid: the config, the model's weights, the calibration ids."""
    return {
        "config": json.loads(config.to_json()),  # as progress.json holds it (lists, not tuples)
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        "model_sha256": _tensor_digest(model.state_dict()),
        "calibration_sha256": _tensor_digest({"ids": calibration.to(torch.int64)}),
        "batch_size": batch_size,
    }


def _fingerprint_mismatch(saved: dict, current: dict) -> str | None:
    """A sentence naming what differs, or None."""
    if saved.get("config") != current["config"]:
        old, new = saved.get("config") or {}, current["config"]
        diffs = [
            f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
        ]
        return f"a different config ({'; '.join(diffs)})"
    checks = (
        ("model_type", "a different model type"),
        ("model_sha256", "a different model (its weights differ)"),
        ("calibration_sha256", "different calibration data"),
        ("batch_size", "a different batch_size"),
    )
    for key, what in checks:
        if saved.get(key) != current[key]:
            return what
    return None


# The checkpoint folder ------------------------------------------------------------------------------------


@dataclass
class ResumeState:
    """What a resumed run continues from."""

    completed: int  # blocks 0 .. completed-1 are done
    records: list[dict[str, Any]] = field(default_factory=list)
    finetune: list[dict[str, Any]] = field(default_factory=list)
    # wall seconds the earlier runs spent up to their last committed block; None: the folder predates the record
    seconds: float | None = 0.0


class BlockCheckpoints:
    """One run's checkpoint folder. Use :meth:`open`, then :meth:`apply`, :meth:`restore_hidden`, :meth:`save`."""

    def __init__(self, folder: Path, fingerprint: dict, num_blocks: int, progress: dict | None = None):
        self.folder, self.fingerprint, self.num_blocks = folder, fingerprint, num_blocks
        self.progress = progress or {
            "version": CHECKPOINT_VERSION,
            "fingerprint": fingerprint,
            "num_blocks": num_blocks,
            "completed": 0,
            "blocks": {},
            "hidden": None,
            "records": [],
            "finetune": [],
            "seconds": 0.0,
        }

    @classmethod
    def open(
        cls, folder: str | Path, fingerprint: dict, num_blocks: int, resume: bool, writer: bool = True
    ) -> BlockCheckpoints:
        """Start a new checkpoint folder, or (``resume=True``) validate and continue an existing one.

        ``writer=False`` (the other ranks of a multi-process run): read and validate only; rank 0 writes."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise VPTQLabError(f"checkpoint dir {folder} is a file: pass a folder (it is created if missing)")
        if resume and not folder.exists():
            raise VPTQLabError(
                f"resume=True, but checkpoint dir {folder} does not exist, so there is no run to continue: check the "
                "path, or drop resume (--resume) to start a new run there"
            )
        path = folder / PROGRESS
        if not path.is_file():
            if resume and writer:
                log.warning("%s holds no progress.json: nothing to resume, starting from block 0", folder)
            if writer:
                folder.mkdir(parents=True, exist_ok=True)
            return cls(folder, fingerprint, num_blocks)
        if not resume:
            raise VPTQLabError(
                f"checkpoint dir {folder} already holds a run's progress: pass resume=True "
                "(--resume) to continue it, or choose an empty --checkpoint-dir"
            )
        progress = _read_progress(path)
        why = _fingerprint_mismatch(progress.get("fingerprint") or {}, fingerprint)
        if why is None and progress.get("num_blocks") != num_blocks:
            why = f"a model with {progress.get('num_blocks')} blocks, not {num_blocks}"
        if why:
            raise VPTQLabError(
                f"cannot resume from {folder}: it was written for {why}; resume with the same "
                "model, config and calibration, or choose a new --checkpoint-dir"
            )
        return cls(folder, fingerprint, num_blocks, progress)

    @property
    def state(self) -> ResumeState:
        p = self.progress
        seconds = p.get("seconds")  # written since the record exists; absent in older folders
        return ResumeState(int(p["completed"]), list(p["records"]), list(p["finetune"]), seconds)

    # Reading ---------------------------------------------------------------------------------------------
    def _load(self, name: str, sha256: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """A listed safetensors file, checked against its sha256: (tensors, metadata)."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        path = safe_member(self.folder, name, PROGRESS)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise VPTQLabError(
                f"cannot read {path} ({exc}): the checkpoint dir is incomplete; start again with a new --checkpoint-dir"
            ) from exc
        if hashlib.sha256(data).hexdigest() != sha256:
            raise VPTQLabError(
                f"{path} does not match its sha256 in progress.json: the file was modified or cut "
                "short; start again with a new --checkpoint-dir"
            )
        try:
            header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])  # safetensors: u64 size, JSON
            return load(data), header.get("__metadata__") or {}
        except (SafetensorError, ValueError) as exc:
            raise VPTQLabError(f"cannot read {path} ({exc}); start again with a new --checkpoint-dir") from exc

    def apply(self, block: nn.Module, index: int) -> None:
        """Put the saved quantized block ``index`` in place of ``block``'s linears and norms."""
        entry = self.progress["blocks"][str(index)]
        tensors, metadata = self._load(entry["file"], entry["sha256"])
        layers = json.loads(metadata.get("layers", "{}"))
        for name, cfg in layers.items():
            qw = qweight_from_tensors(cfg, tensors, name)
            set_module(block, name, QuantizedLinear(qw, tensors.get(f"{name}.bias")))
        prefixes = tuple(f"{name}." for name in layers)
        rest = {k: v for k, v in tensors.items() if not k.startswith(prefixes)}  # norms and the like
        unexpected = block.load_state_dict(rest, strict=False).unexpected_keys if rest else []
        if unexpected:
            raise VPTQLabError(
                f"block {index} checkpoint has tensors {unexpected[:5]} this model lacks; "
                "start again with a new --checkpoint-dir"
            )

    def restore_hidden(
        self, captured: list[tuple[tuple, dict]], batches: list[int] | tuple[int, ...] | None = None, total=None
    ) -> list[tuple[tuple, dict]]:
        """The fresh model's block-0 inputs, with the hidden states replaced by the saved ones.

        ``batches``: the global indices of the ``captured`` batches, of ``total`` (a rank of a multi-process run
        holds only its share; the folder holds every batch, so any number of ranks can resume it)."""
        entry = self.progress["hidden"]
        tensors, metadata = self._load(entry["file"], entry["sha256"])
        dtype = getattr(torch, metadata.get("dtype", "float32"))
        batches = list(range(len(captured))) if batches is None else list(batches)
        total = len(captured) if total is None else total
        if len(tensors) != total or len(batches) != len(captured):
            raise VPTQLabError(
                f"{entry['file']} holds {len(tensors)} batches, the calibration gives "
                f"{total}; start again with a new --checkpoint-dir"
            )
        out = []
        for b, (args, kwargs) in zip(batches, captured):
            h = tensors[f"hidden.{b}"].to(dtype)  # [batch, seqlen, hidden]
            out.append(((h,) + tuple(args[1:]), kwargs) if args else ((), {**kwargs, "hidden_states": h}))
        return out

    # Writing ---------------------------------------------------------------------------------------------
    def save(
        self,
        index: int,
        block: nn.Module,
        records: list[dict],
        finetune: list[dict],
        hidden: list[torch.Tensor],
        seconds: float | None,
    ) -> None:
        """Commit block ``index``: its tensors, the next block's inputs, then progress.json. ``seconds``: the wall
        time of every run of this folder so far (None: unknown)."""
        block_file, hidden_file = f"block-{index:04d}.safetensors", f"hidden-{index:04d}.safetensors"
        tensors, layers = module_tensors(block)
        block_sha = atomic_save_tensors(self.folder / block_file, tensors, {"layers": json.dumps(layers)})
        dtype = str(hidden[0].dtype).removeprefix("torch.") if hidden else "float32"
        hidden_sha = atomic_save_tensors(
            self.folder / hidden_file, {f"hidden.{b}": h.float() for b, h in enumerate(hidden)}, {"dtype": dtype}
        )
        old_hidden = self.progress["hidden"]
        self.progress.update(
            completed=index + 1,
            hidden={"file": hidden_file, "sha256": hidden_sha},
            records=records,
            finetune=finetune,
            seconds=None if seconds is None else round(seconds, 2),
        )
        self.progress["blocks"][str(index)] = {"file": block_file, "sha256": block_sha}
        atomic_write_bytes(self.folder / PROGRESS, json.dumps(self.progress, indent=1).encode())
        if old_hidden and old_hidden["file"] != hidden_file:  # no longer needed once progress points past it
            (self.folder / old_hidden["file"]).unlink(missing_ok=True)


def remove_checkpoints(folder: str | Path) -> int:
    """Delete a finished run's checkpoint folder; returns the bytes freed.

    Only ``progress.json`` and the files it lists are removed (names checked to stay inside the
    folder), then the folder itself if nothing else is left in it: files a user put there are kept.
    """

    folder = Path(folder)
    progress = _read_progress(folder / PROGRESS)
    entries = [*progress["blocks"].values(), *([progress["hidden"]] if progress["hidden"] else [])]
    paths = [safe_member(folder, entry["file"], PROGRESS) for entry in entries] + [folder / PROGRESS]
    freed = 0
    for path in paths:  # progress.json last: an interrupted cleanup stays a readable (if incomplete) folder
        if path.is_file():
            freed += path.stat().st_size
            path.unlink()
    if not any(folder.iterdir()):
        folder.rmdir()
    return freed


def _read_progress(path: Path) -> dict:
    try:
        progress = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VPTQLabError(
            f"{path} is not valid JSON ({exc}): the checkpoint dir is damaged; start again with a new --checkpoint-dir"
        ) from exc
    if not isinstance(progress, dict) or not isinstance(progress.get("version"), int):
        raise VPTQLabError(f"{path} is not a vptq_lab progress file: choose another --checkpoint-dir")
    if progress["version"] > CHECKPOINT_VERSION:
        raise VPTQLabError(
            f"{path} has checkpoint version {progress['version']}, newer than this vptq_lab "
            f"understands ({CHECKPOINT_VERSION}): upgrade vptq_lab or start a new --checkpoint-dir"
        )
    required = ("fingerprint", "num_blocks", "completed", "blocks", "hidden", "records", "finetune")
    missing = [k for k in required if k not in progress]
    if missing:
        raise VPTQLabError(f"{path} lacks {missing}: the checkpoint dir is damaged; start a new --checkpoint-dir")
    return progress
