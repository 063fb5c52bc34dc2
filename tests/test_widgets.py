import json

import pandas as pd
import pytest
import torch

pytest.importorskip("ipywidgets")

from vptq_lab.core.bits import bits_per_weight, model_bits  # noqa: E402
from vptq_lab.core.config import VPTQConfig  # noqa: E402
from vptq_lab.core.quantizer import vptq_quantize  # noqa: E402
from vptq_lab.lab import widgets  # noqa: E402
from vptq_lab.lab.budget import SMOLLM2_135M_SHAPES  # noqa: E402
from vptq_lab.model.calibrate import quantize_  # noqa: E402
from vptq_lab.testing import tiny_llama  # noqa: E402

TINY = VPTQConfig(vector_lens=(-1, 4), num_centroids=(-1, 16), kmeans_iters=3, nsamples=4, seqlen=32)


def _png(value) -> bool:
    return bytes(value).startswith(b"\x89PNG")  # Image.value is a memoryview


def _calib(n=4, seqlen=32):
    return torch.randint(0, 384, (n, seqlen), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def report():
    model = tiny_llama(hidden=64, layers=2)
    return quantize_(model, TINY, _calib(), keep=True, progress=False)


@pytest.fixture(scope="module")
def layer(report):
    entry = report.store["model.layers.0.mlp.down_proj"]  # in = 160: room for outliers
    return entry.W, entry.H


# Calibration stepper ---------------------------------------------------------------------------
def test_calibration_stepper_walks_the_loop_to_the_quantizers_loss():
    model = tiny_llama(hidden=64, layers=2)
    box = widgets.build_calibration_stepper(model, _calib(), TINY, block=1, linear="self_attn.o_proj")
    s = box.explorer
    assert s.stage.disabled and s.trace is None and "capture" in s.status.value
    s.capture_button.click()
    assert s.W.shape == (64, 64) and s.tokens == 4 * 32 and not s.stage.disabled
    assert "model.layers.1.self_attn.o_proj" in s.status.value
    qw = vptq_quantize(s.W, s.H, TINY)  # the quantizer on its own, same W and H
    expected = {
        "H": "tokens",
        "damping": "percdamp",
        "act-order": "descending H_jj",
        "Cholesky": "Uᵀ U = H⁻¹",
        "column loop": "proxy loss so far",
    }
    for stage in reversed(s.STAGES):  # every stage draws ("H" is shown first, so end there)
        s.image.value = b""
        s.stage.value = stage
        assert _png(s.image.value) and expected[stage] in s.numbers.value
    s.stage.value = "column loop"
    seen = []
    for c in (0, 20, 40, 63, 64):
        s.column.value = c
        seen.append(s.proxy_loss_so_far)
        assert f"column {c} of 64" in s.numbers.value and f"{s.proxy_loss_so_far:.6g}" in s.numbers.value
    assert seen[0] == 0 and all(b >= a for a, b in zip(seen, seen[1:]))  # monotone
    # At every column: the curve is the loss under the undamped H (so it ends on the quantizer's number); the
    # loop is monotone under the damped H, so a dip is at most about percdamp x the loss (column_trace docstring).
    assert float(s.trace.proxy_loss_feedback.diff().min()) >= -TINY.percdamp * seen[-1]
    assert seen[-1] == pytest.approx(qw.info["proxy_loss_rel"], rel=1e-5)  # ... to the quantizer's own loss
    s.linear.value = "mlp.up_proj"  # a new pick invalidates the capture
    assert s.trace is None and s.stage.disabled and "not captured" in s.status.value


def test_calibration_stepper_refuses_a_quantized_linear(report):
    model = tiny_llama(hidden=64, layers=2)
    quantize_(model, TINY, _calib(), progress=False)
    s = widgets.CalibrationStepper(model, _calib(), TINY)
    s.capture_button.click()
    assert "already quantized" in s.status.value and s.trace is None


# Codebook explorer -------------------------------------------------------------------------------
def test_codebook_explorer_layers_and_vectors(report):
    box = widgets.build_codebook_explorer(report)
    e = box.explorer
    assert len(e.layer.options) == 14 and _png(e.usage.value) and _png(e.projection.value)
    e.layer.value = "model.layers.1.self_attn.k_proj"
    qw, W = e.entry.qweight, e.entry.W
    assert e.vector.max == qw.in_features * qw.num_rows - 1
    assert f"utilisation {100 * qw.info['codebook_utilisation']:.1f}%" in e.stats.value
    e.vector.value = 7 * qw.num_rows + 2  # column 7, rows 8..11
    info = e.vector_info(e.vector.value)
    assert info["column"] == 7 and info["rows"] == [8, 9, 10, 11]
    assert info["original"] == pytest.approx(W[8:12, 7].tolist())
    assert info["reconstructed"] == pytest.approx(info["codeword"], abs=1e-6)  # no norm: the codeword itself
    assert f"centroid #{info['code']}" in e.detail.value and "column 7, rows 8–11" in e.detail.value
    with pytest.raises(ValueError, match="keep=True"):
        widgets.CodebookExplorer({})


# Outlier explorer ----------------------------------------------------------------------------------
def test_outlier_explorer_bits_follow_the_slider_and_recompute(layer):
    W, H = layer
    box = widgets.build_outlier_explorer(W, H, TINY)
    o = box.explorer
    assert o.npercent.continuous_update is False
    assert f"{bits_per_weight(TINY, (64, 160)).bits_per_weight:.4f}" in o.bits_label.value
    assert "0 of 160 columns leave" in o.columns_label.value
    before = o.image.value
    o.npercent.value = 5.0
    cfg = TINY.replace(npercent=5.0, vector_lens=(4, 4), num_centroids=(16, 16))
    assert o.config == cfg and o.bits == bits_per_weight(cfg, (64, 160))
    assert f"<b>{o.bits.bits_per_weight:.4f}</b>" in o.bits_label.value
    assert "8 of 160 columns leave" in o.columns_label.value and o.image.value != before
    by_h = torch.sort(torch.diagonal(H), descending=True, stable=True).indices
    assert o.outlier_columns.tolist() == by_h[:8].tolist()
    row = o.recompute()
    assert row["proxy_loss_rel"] == pytest.approx(vptq_quantize(W, H, cfg).info["proxy_loss_rel"])
    o.npercent.value = 0.0
    o.recompute_button.click()
    assert [r["npercent"] for r in o.history] == [5.0, 0.0] and "<table" in o.loss_label.value


# Layer error browser ----------------------------------------------------------------------------------
def test_layer_error_browser_sorts_filters_and_clicks_through(report):
    df = report.to_dataframe()
    rtn = df.assign(method="rtn", proxy_loss_rel=df["proxy_loss_rel"] * 3)
    box = widgets.build_layer_error_browser(pd.concat([df, rtn]))
    b = box.explorer
    worst = b.view().iloc[0]
    assert worst["method"] == "rtn" and b.table.value.index(worst["name"]) < b.table.value.index("vptq")
    b.ascending.value = True
    assert b.view()["proxy_loss_rel"].is_monotonic_increasing
    b.method.value = "vptq"
    assert set(b.view()["method"]) == {"vptq"} and "rtn" not in b.table.value
    b.sort_by.value = "name"
    assert list(b.view()["name"]) == sorted(df["name"])
    assert _png(b.chart.value) and "id=" not in b.table.value
    b.layer.value = "model.layers.1.mlp.up_proj"
    assert "model.layers.1.mlp.up_proj" in b.details.value and "rtn" in b.details.value
    with pytest.raises(ValueError, match="role"):
        widgets.LayerErrorBrowser(df.drop(columns="role"))


# Bit budget comparator ----------------------------------------------------------------------------------
def test_bit_budget_comparator_live_bits_and_nearest_measurement():
    shapes = SMOLLM2_135M_SHAPES
    results = pd.DataFrame(
        {
            "method": ["vptq", "vptq", "rtn"],
            "config": [
                VPTQConfig(vector_lens=(-1, 6), num_centroids=(-1, 1024)).to_dict(),
                VPTQConfig(vector_lens=(-1, 4), num_centroids=(-1, 2048)).to_json(),
                None,
            ],
            "bits": [1.88, 3.03, 3.1],
            "perplexity": [40.0, 22.0, 25.0],
        }
    )
    box = widgets.build_bit_budget_comparator(shapes, results)
    c = box.explorer
    assert c.config() == VPTQConfig()  # the default config's sliders
    assert c.model_breakdown == model_bits(VPTQConfig(), shapes)
    assert f"<b>{c.model_breakdown.bits_per_weight:.4f}</b>" in c.summary.value
    assert "this exact config" in c.measured.value and "40.000" in c.measured.value  # default is v6 k1024
    c.v.value, c.k1.value = 4, 2048
    assert c.model_breakdown == model_bits(VPTQConfig(vector_lens=(-1, 4), num_centroids=(-1, 2048)), shapes)
    assert "this exact config" in c.measured.value and "22.000" in c.measured.value
    c.k2.value = 256
    assert "nearest measured config" in c.measured.value and "22.000" in c.measured.value
    c.npercent.value, c.group_num.value = 1.0, 2
    cfg = VPTQConfig(
        vector_lens=(4, 4), num_centroids=(2048, 2048), num_res_centroids=(-1, 256), npercent=1.0, group_num=2
    )
    assert c.config() == cfg and c.model_breakdown == model_bits(cfg, shapes)
    c.mode.value = "stored"
    assert c.model_breakdown == model_bits(cfg, shapes, "stored") and "stored accounting" in c.summary.value
    assert "576×576" in c.per_layer.value and _png(c.image.value)
    c.npercent.value, c.group_num.value = 0.0, 5  # 576 is not divisible by 5 and there are no outliers
    assert "invalid config" in c.summary.value and c.model_breakdown is None


def test_bit_budget_comparator_refuses_a_misspelt_config_key():
    # Before, the widget's own parser dropped unknown keys silently and compared the row as a default config.
    bad = pd.DataFrame(
        {"method": ["vptq"], "config": [json.dumps({"num_centroid": [-1, 256]})], "bits": [2.0], "perplexity": [30.0]}
    )
    with pytest.raises(ValueError, match="'num_centroid': did you mean 'num_centroids'"):
        widgets.BitBudgetComparator({"a": (64, 64)}, bad)


def test_bit_budget_comparator_without_measurements():
    c = widgets.BitBudgetComparator({"a": (64, 64)})
    assert c.measured.value == "no measured config yet" and c.nearest is None
    c2 = widgets.BitBudgetComparator(
        {"a": (64, 64)},
        pd.DataFrame({"method": ["rtn"], "config": [json.dumps({})], "bits": [3.0], "perplexity": [9.0]}),
    )
    assert c2.measured.value == "no measured config yet"


def test_builders_never_display(monkeypatch, report, layer):
    import IPython.display

    calls = []
    monkeypatch.setattr(IPython.display, "display", lambda *a, **k: calls.append(a))
    widgets.build_codebook_explorer(report)
    widgets.build_outlier_explorer(*layer, TINY)
    widgets.build_bit_budget_comparator({"a": (64, 64)})
    assert calls == []
