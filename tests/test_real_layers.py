"""VPTQ on real layers of the default model (block 10, WikiText-2 Hessians): the paper's ablation."""

import pytest
import torch

from vptq_lab.core.config import VPTQConfig
from vptq_lab.core.methods import METHODS
from vptq_lab.core.quantizer import vptq_quantize, vq_no_feedback
from vptq_lab.core.scalar import RTNConfig
from vptq_lab.io.data import calibration_windows, load_wikitext2
from vptq_lab.io.models import load_model
from vptq_lab.model.passes import block_hessians

pytestmark = pytest.mark.real_model

CONFIG = VPTQConfig(vector_lens=(-1, 6), num_centroids=(-1, 256), kmeans_iters=10)  # 1.33 index bits


@pytest.fixture(scope="module")
def block10(wikitext_dir):
    model, tok = load_model("default")
    calib = calibration_windows(tok, load_wikitext2("validation", wikitext_dir), nsamples=8, seqlen=512)
    return block_hessians(model, calib, 10)


@pytest.mark.parametrize("name", ["self_attn.q_proj", "mlp.down_proj"])
def test_vptq_beats_plain_vq_and_rtn(block10, name):
    W, H = block10[name]
    vptq = vptq_quantize(W, H, CONFIG)
    vq = vq_no_feedback(W, H, CONFIG)
    rtn = METHODS["rtn"].quantize(W, H, RTNConfig(bits=2, group_size=None))  # 2 bits + 32/in_features
    vptq_bits = METHODS["vptq"].bits(CONFIG, tuple(W.shape))
    assert METHODS["rtn"].bits(RTNConfig(bits=2, group_size=None), tuple(W.shape)) >= vptq_bits
    loss = {k: r.info["proxy_loss_rel"] for k, r in (("vptq", vptq), ("vq", vq), ("rtn", rtn))}
    assert loss["vptq"] < 0.8 * loss["vq"], loss  # the column loop must help, as in the paper's ablation
    assert loss["vptq"] < loss["rtn"], loss


def test_block_hessians_are_real_second_moments(block10):
    W, H = block10["self_attn.q_proj"]
    assert W.shape == (576, 576) and H.shape == (576, 576)
    assert torch.allclose(H, H.T) and torch.linalg.eigvalsh(H.double()).min() > -1e-4
    assert torch.equal(block10["self_attn.k_proj"][1], H)  # q, k, v share their input
