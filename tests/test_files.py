"""vptq_lab.files: atomic tensor files."""

import hashlib

import pytest
import torch
from safetensors.torch import load_file, save

from vptq_lab.files import atomic_save_tensors


def test_atomic_save_tensors_writes_the_same_bytes_as_save_and_returns_their_hash(tmp_path):
    tensors = {"w": torch.randn(64, 8), "codes": torch.arange(12, dtype=torch.int16), "h": torch.randn(3).half()}
    path = tmp_path / "t.safetensors"
    path.write_bytes(b"the earlier version")
    digest = atomic_save_tensors(path, tensors, {"layers": "[]"})
    data = save(tensors, metadata={"layers": "[]"})
    assert path.read_bytes() == data and digest == hashlib.sha256(data).hexdigest()
    assert all(torch.equal(load_file(path)[k], v) for k, v in tensors.items())
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]  # no temporary file left


def test_atomic_save_tensors_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "t.safetensors"
    path.write_bytes(b"the earlier version")
    with pytest.raises(AttributeError):  # a str has no .detach(): refused before the file is touched
        atomic_save_tensors(path, {"w": torch.randn(4), "bad": "not a tensor"})
    assert path.read_bytes() == b"the earlier version"
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]
