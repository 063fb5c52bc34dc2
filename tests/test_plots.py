import math

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from vptq_lab.core.bits import bits_per_weight
from vptq_lab.core.column_trace import column_trace
from vptq_lab.core.config import VPTQConfig
from vptq_lab.core.quantizer import vptq_quantize
from vptq_lab.core.qweight import dequantize
from vptq_lab.lab import plots

TINY = VPTQConfig(vector_lens=(-1, 4), num_centroids=(-1, 16), kmeans_iters=3)
OUTLIERS = VPTQConfig(
    vector_lens=(2, 4),
    num_centroids=(8, 16),
    num_res_centroids=(-1, 4),
    npercent=10,
    enable_norm=True,
    kmeans_iters=3,
    blocksize=16,
)


def _layer(out=48, n_in=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(256, n_in, generator=g) * torch.linspace(0.2, 3.0, n_in)  # uneven diag H
    X[:, 3] = 0  # one dead input
    return torch.randn(out, n_in, generator=g), (X.T @ X / 256).double()


@pytest.fixture(scope="module")
def layer():
    W, H = _layer()
    return W, H, vptq_quantize(W, H, TINY)


def _blank():
    return Figure().add_subplot()


def _check(fig, ax=None, title=None, xlabel=None, ylabel=None):
    assert isinstance(fig, Figure)
    ax = ax or fig.axes[0]
    if title:
        assert title in ax.get_title()
    if xlabel:
        assert xlabel in ax.get_xlabel()
    if ylabel:
        assert ylabel in ax.get_ylabel()
    assert plots.to_png(fig).startswith(b"\x89PNG")
    return ax


def test_weight_histogram(layer):
    W, _, qw = layer
    ax = _check(
        plots.weight_histogram(W, dequantize(qw)),
        title="original vs dequantized",
        xlabel="weight value",
        ylabel="count",
    )
    assert len(ax.patches) == 2 and ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["original", "dequantized"]
    target = _blank()
    assert plots.weight_histogram(W, dequantize(qw), log=False, ax=target) is target.figure
    assert len(target.patches) == 2 and target.get_yscale() == "linear"


def test_hessian_diagonal_cutoff_from_npercent_or_size(layer):
    _, H, _ = layer
    ax = _check(plots.hessian_diagonal(H, npercent=10), title="diag(H)", xlabel="column rank", ylabel="H_jj")
    assert ax.get_yscale() == "log" and "1 dead" in ax.get_title()
    y = ax.get_lines()[0].get_ydata()
    assert (y[:-1] >= y[1:]).all()  # sorted, descending
    cutoff = ax.get_lines()[1].get_xdata()[0]
    assert cutoff == pytest.approx(math.ceil(0.1 * 40) - 0.5)
    target = _blank()
    assert plots.hessian_diagonal(torch.diagonal(H), outlier_size=7, ax=target) is target.figure
    assert "7 columns" in target.get_legend().get_texts()[1].get_text()
    assert len(_blank().figure.axes) == 1  # a fresh Figure each time: nothing leaks


def test_outlier_heatmap_weights_and_saliency(layer):
    W, H, _ = layer
    cols = torch.sort(torch.diagonal(H), descending=True).indices[:4]
    ax = _check(
        plots.outlier_heatmap(W, H, cols), title="Outlier columns", xlabel="outlier input column", ylabel="output row"
    )
    assert ax.images[0].get_array().shape == (48, 4)
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(int(c)) for c in cols]
    target = _blank()
    fig = plots.outlier_heatmap(W, H, cols.tolist(), saliency=True, ax=target)
    expected = W[:, cols].abs() * torch.diagonal(H)[cols].sqrt().float()
    assert fig is target.figure and "saliency" in target.get_title()
    assert torch.allclose(torch.as_tensor(target.images[0].get_array().data), expected.double(), atol=1e-6)


def test_codebook_stats_match_the_quantizer(layer):
    _, _, qw = layer
    s = plots.codebook_stats(qw)
    assert s["utilisation"] == pytest.approx(qw.info["codebook_utilisation"])
    assert s["vectors"] == 40 * 12 and s["num_centroids"] == 16
    assert s["used"] + s["dead"] == 16 and 1 <= s["perplexity"] <= 16


def test_codebook_stats_on_a_hand_made_code_table():
    # Codes [0, 0, 1, 1] of a k=4 codebook: 2 used, 2 dead, perplexity exp(ln 2) = 2.
    W = torch.tensor([[1.0, 1.0, -1.0, -1.0]]).repeat(2, 1)
    H = torch.eye(4, dtype=torch.float64)
    qw = vptq_quantize(W, H, VPTQConfig(vector_lens=(-1, 2), num_centroids=(-1, 4), kmeans_iters=3))
    s = plots.codebook_stats(qw)
    assert (s["used"], s["dead"]) == (2, 2) and s["perplexity"] == pytest.approx(2.0)


def test_codebook_usage_all_codebooks():
    W, H = _layer(seed=1)
    qw = vptq_quantize(W, H, OUTLIERS)
    for which, k in (("main", 16), ("residual", 4), ("outlier", 8)):
        ax = _check(
            plots.codebook_usage(qw, which),
            title=f"{which} codebook",
            xlabel="centroid rank",
            ylabel="vectors assigned",
        )
        assert len(ax.patches) == k * qw.group_num if which != "outlier" else k
        assert f"{plots.codebook_stats(qw, which)['dead']} dead" in ax.get_title()
    target = _blank()
    assert plots.codebook_usage(qw, ax=target) is target.figure
    with pytest.raises(ValueError, match="no residual"):
        plots.codebook_usage(vptq_quantize(W, H, TINY), "residual")


def test_vector_projection(layer):
    W, _, qw = layer
    ax = _check(plots.vector_projection(W, qw, max_points=100), title="PCA", xlabel="PC 1", ylabel="PC 2")
    vectors, centroids, dead = ax.collections
    assert len(vectors.get_offsets()) == 100
    assert len(centroids.get_offsets()) + len(dead.get_offsets()) == 16
    W2, H2 = _layer(seed=2)
    target = _blank()  # normalised, permuted, with outliers
    assert plots.vector_projection(W2, vptq_quantize(W2, H2, OUTLIERS), ax=target) is target.figure
    assert "normalised" in target.get_xlabel()


def _layer_df():
    rows = []
    for method, scale in (("vptq", 1.0), ("rtn", 3.0)):
        for block in range(2):
            for role in ("down", "q", "k", "up"):
                rows.append(
                    dict(
                        name=f"model.layers.{block}.{role}",
                        block=block,
                        role=role,
                        method=method,
                        proxy_loss_rel=scale * (0.01 + 0.001 * block),
                    )
                )
    return pd.DataFrame(rows)


def test_proxy_loss_by_role():
    df = _layer_df()
    ax = _check(plots.proxy_loss_by_role(df), title="proxy loss by role", xlabel="role", ylabel="tr(")
    assert len(ax.patches) == 4 * 2  # roles x methods
    assert [t.get_text() for t in ax.get_xticklabels()] == ["q", "k", "up", "down"]  # model order
    assert len(ax.collections) == 2 and sum(len(c.get_offsets()) for c in ax.collections) == len(df)
    heights = [p.get_height() for p in ax.patches]
    assert heights[:4] == pytest.approx([0.0105] * 4) and heights[4:] == pytest.approx([0.0315] * 4)
    target = _blank()
    assert plots.proxy_loss_by_role(df, log=True, ax=target) is target.figure and target.get_yscale() == "log"


def test_column_error_from_trace_and_from_a_frame(layer):
    W, H, qw = layer
    trace = column_trace(W, H, TINY)
    fig = plots.column_error(trace)
    ax = _check(fig, title="column loop", xlabel="column", ylabel="H_jj")
    assert len(fig.axes) == 2 and "proxy loss" in fig.axes[1].get_ylabel()
    assert len(ax.get_lines()) == 2 and len(fig.axes[1].get_lines()) == 2
    assert fig.axes[1].get_lines()[0].get_ydata()[-1] == pytest.approx(qw.info["proxy_loss_rel"], rel=1e-5)
    frame = trace.to_dataframe()[["error_feedback", "proxy_loss_feedback"]]
    target = _blank()
    assert plots.column_error(frame, ax=target) is target.figure and len(target.get_lines()) == 1


def test_column_loop_state(layer):
    W, H, _ = layer
    trace = column_trace(W, H, TINY)
    fig = plots.column_loop_state(trace, 10)
    titles = [a.get_title() for a in fig.axes]
    assert "weights after 10 of 40 columns" in titles and "proxy loss so far" in titles
    assert plots.to_png(fig).startswith(b"\x89PNG")


def test_bit_budget_from_breakdowns_and_dicts():
    shape = (576, 576)
    paper = bits_per_weight(OUTLIERS.replace(enable_perm=True), shape)
    stored = bits_per_weight(OUTLIERS, shape, "stored").to_dict()
    ax = _check(
        plots.bit_budget({"paper": paper, "stored": stored, "hand": {"index": 2.0, "codebook": 0.5}}),
        title="Bit budget",
        ylabel="bits per weight",
    )
    assert len(ax.patches) == 3 * 5  # labels x (index, codebook, outlier, norm, perm)
    totals = [float(t.get_text()) for t in ax.texts]
    assert totals == pytest.approx([paper.bits_per_weight, stored["bits_per_weight"], 2.5], abs=1e-3)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["index", "codebook", "outlier", "norm", "perm"]
    target = _blank()
    assert plots.bit_budget({"paper": paper}, ax=target) is target.figure


def test_bit_budget_shows_scales_and_zeros_of_scalar_methods():
    from vptq_lab.core.scalar import GPTQConfig, scalar_bits

    gptq = scalar_bits(GPTQConfig(bits=2, group_size=128), (576, 576))  # 5 groups per row (576 / 128, rounded up)
    ax = _check(plots.bit_budget({"gptq": gptq, "vptq": bits_per_weight(OUTLIERS, (576, 576))}), title="Bit budget")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["index", "codebook", "scale+zero", "outlier", "norm", "perm"]
    heights = {name: ax.patches[2 * i].get_height() for i, name in enumerate(legend)}  # the gptq bar
    assert heights["index"] == pytest.approx(2.0) and heights["scale+zero"] == pytest.approx(2 * 16 * 5 / 576)
    assert float(ax.texts[0].get_text()) == pytest.approx(gptq.bits_per_weight, abs=1e-3)


def test_bits_vs_perplexity_frontier_markers_and_note():
    df = pd.DataFrame(
        {
            "method": ["vptq", "vptq", "vptq", "rtn", "rtn", "fp16 (Q4_1)"],
            "bits": [2.0, 3.0, 4.0, 2.2, 4.1, 4.5],
            "perplexity": [30.0, 20.0, 18.0, 900.0, 17.0, 16.5],
            "note": [None, None, None, None, None, "baseline: Q4_1 GGUF, already ~4-bit rounded"],
        }
    )
    ax = _check(plots.bits_vs_perplexity(df), title="Perplexity vs bits", xlabel="bits per weight", ylabel="perplexity")
    assert len(ax.collections) == 3  # one marker series per method
    markers = {c.get_label(): c.get_paths()[0].vertices.shape for c in ax.collections}
    assert len(set(markers.values())) == 3  # distinct marker shapes
    frontier = ax.get_lines()[0]
    assert list(frontier.get_xdata()) == [2.0, 3.0, 4.0, 4.1, 4.5]  # rtn 2.2 bits is dominated
    assert any("Q4_1 GGUF" in t.get_text() for t in ax.texts)
    target = _blank()
    fig = plots.bits_vs_perplexity(df.drop(columns="note"), log_y=True, note="baseline is a Q4_1 GGUF", ax=target)
    assert fig is target.figure and target.get_yscale() == "log" and "Q4_1" in target.texts[0].get_text()
    # with a caption, the legend sits right of the axes, so it cannot cover the caption in the top-left corner
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    legend = target.get_legend().get_window_extent(renderer)
    assert legend.x0 >= target.get_window_extent(renderer).x1


def test_kernel_throughput():
    df = pd.DataFrame(
        {
            "shape": ["576x576"] * 3 + ["1536x576"] * 3,
            "batch": [1] * 6,
            "backend": ["torch", "triton", "dense"] * 2,
            "gbps": [10, 20, 30, 11, 21, 31],
            "us": [5, 4, 3, 6, 5, 4],
        }
    )
    ax = _check(plots.kernel_throughput(df), title="Kernel throughput", xlabel="shape", ylabel="GB/s")
    assert len(ax.patches) == 6 and len(ax.get_xticklabels()) == 2
    target = _blank()
    assert plots.kernel_throughput(df, value="us", ax=target) is target.figure and "µs" in target.get_ylabel()
    with pytest.raises(ValueError):
        plots.kernel_throughput(df, value="tok/s")


def test_plots_never_touch_pyplot():
    source = open(plots.__file__).read()
    assert "matplotlib.pyplot" not in source and "import pyplot" not in source and "plt." not in source


def test_distillation_curve_marks_the_kept_step():
    report = {
        "initial": {"ppl": 30.0, "kl": 0.5},
        "best": {"step": 20, "ppl": 25.0, "kl": 0.3},
        "history": [
            {"step": 10, "train_kl": 0.4, "heldout_ppl": 27.0, "heldout_kl": 0.35},
            {"step": 20, "train_kl": 0.3, "heldout_ppl": 25.0, "heldout_kl": 0.3},
            {"step": 30, "train_kl": 0.25, "heldout_ppl": 25.5, "heldout_kl": 0.31},
        ],
    }
    fig = plots.distillation_curve(report)
    ax, kl = fig.axes
    assert list(ax.lines[0].get_xdata()) == [0, 10, 20, 30] and list(ax.lines[0].get_ydata()) == [30, 27, 25, 25.5]
    assert list(ax.lines[1].get_xdata()) == [20, 20]  # the kept state
    assert list(kl.lines[0].get_ydata()) == [0.4, 0.3, 0.25]


def test_matrix_heatmap_clips_a_few_large_values():
    M = torch.full((20, 50), 0.2)
    M[0, 0] = 5.0  # one weight 25x the rest, as on real layers
    full = plots.matrix_heatmap(M, "all").axes[0].images[0].get_clim()
    clipped = plots.matrix_heatmap(M, "clipped", clip=0.99).axes[0].images[0].get_clim()
    assert full == (-5.0, 5.0)
    assert clipped == pytest.approx((-0.2, 0.2))  # the typical value sets the scale
    with pytest.raises(ValueError, match="quantile in"):
        plots.matrix_heatmap(M, "bad", clip=1.5)
