"""experiments/quantizer_fingerprint.py's block hashes: equal for equal blocks, and a change shows in its own block."""

from __future__ import annotations

import copy

import torch

from vptq_lab.testing import tiny_llama


def test_block_hashes_find_the_block_that_changed(repo_script):
    fingerprint = repo_script("experiments/quantizer_fingerprint.py")
    model = tiny_llama(vocab_size=64, hidden=16, layers=3, seed=1)
    same = fingerprint.block_hashes(copy.deepcopy(model))
    assert fingerprint.block_hashes(model) == same and len(same) == 3 and len(set(same)) == 3
    with torch.no_grad():
        weight = model.model.layers[1].mlp.up_proj.weight
        weight[0, 0] = torch.nextafter(weight[0, 0], torch.tensor(float("inf")))  # one float, one ulp
    changed = fingerprint.block_hashes(model)
    assert [a == b for a, b in zip(same, changed)] == [True, False, True]
