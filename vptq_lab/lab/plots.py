"""Plots for the workbench: pure functions from records, DataFrames and tensors to Figures.

Every function returns a :class:`matplotlib.figure.Figure` built with the
object-oriented API (no pyplot state, so nothing leaks into a notebook or
shows up twice). Pass ``ax=`` to draw into an existing Axes instead; the
function then returns ``ax.figure``. :func:`to_png` renders a Figure for
``ipywidgets.Image``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator

from vptq_lab.core.quantizer import to_vectors
from vptq_lab.core.qweight import QuantizedWeight

__all__ = [
    "to_png",
    "distillation_curve",
    "weight_histogram",
    "hessian_diagonal",
    "outlier_heatmap",
    "matrix_heatmap",
    "codebook_stats",
    "codebook_usage",
    "vector_projection",
    "proxy_loss_by_role",
    "column_error",
    "column_loop_state",
    "bit_budget",
    "bits_vs_perplexity",
    "kernel_throughput",
    "kernel_results",
    "KERNEL_PATHS",
    "ROLE_ORDER",
    "LEGEND_BESIDE",
    "sensitivity_heatmap",
    "allocation_heatmap",
    "predicted_vs_measured",
    "spearman",
]

ROLE_ORDER = ("q", "k", "v", "qkv", "o", "gate", "up", "gate_up", "down")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">")
# Legend placement beside the axes, on the right: it never covers the data or a caption in the corner
LEGEND_BESIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}


def _fig_ax(ax: Axes | None, figsize: tuple[float, float] = (6.4, 3.8)) -> tuple[Any, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def to_png(fig: Any, dpi: int = 80) -> bytes:
    """PNG bytes of a Figure (for ``ipywidgets.Image``; works headless)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=float)


# Weights and Hessians ------------------------------------------------------------------
def weight_histogram(
    W: torch.Tensor, W_hat: torch.Tensor, bins: int = 101, log: bool = True, ax: Axes | None = None
) -> Figure:
    """Histograms of the original W [out, in] and the dequantized W_hat [out, in], on shared bins."""
    fig, ax = _fig_ax(ax)
    w, wq = _np(W).ravel(), _np(W_hat).ravel()
    edges = np.linspace(min(w.min(), wq.min()), max(w.max(), wq.max()), bins + 1)
    ax.hist(w, edges, histtype="step", linewidth=1.5, label="original")
    ax.hist(wq, edges, histtype="step", linewidth=1.5, label="dequantized")
    rmse = float(np.sqrt(np.mean((w - wq) ** 2)))
    ax.set(
        title=f"Weights: original vs dequantized (RMSE {rmse:.3g})",
        xlabel="weight value",
        ylabel="count (log scale)" if log else "count",
    )
    if log:
        ax.set_yscale("log")
    ax.legend()
    return fig


def _diag(H: torch.Tensor) -> np.ndarray:
    return _np(torch.diagonal(H) if H.dim() == 2 else H)


def hessian_diagonal(
    H: torch.Tensor, outlier_size: int | None = None, npercent: float | None = None, ax: Axes | None = None
) -> Figure:
    """``diag(H)`` sorted descending (act-order), log scale, with the outlier cutoff.

    H: [in, in] or its diagonal [in]. The cutoff is ``outlier_size`` columns, or
    ``ceil(npercent% * in)`` (before ``group_num`` rounding, see ``config.layer_plan``).
    """
    fig, ax = _fig_ax(ax)
    d = np.sort(_diag(H))[::-1]
    positive = d[d > 0]
    floor = positive.min() / 10 if positive.size else 1e-12
    ax.semilogy(np.arange(d.size), np.where(d > 0, d, floor), marker=".", markersize=3, linewidth=1, label="H_jj")
    if outlier_size is None and npercent:
        outlier_size = math.ceil(npercent / 100 * d.size)
    if outlier_size:
        ax.axvline(outlier_size - 0.5, color="C3", linestyle="--", label=f"outlier cutoff ({outlier_size} columns)")
        ax.axvspan(-0.5, outlier_size - 0.5, color="C3", alpha=0.1)
    dead = int((d == 0).sum())
    ax.set(
        title=f"diag(H) in act-order ({d.size} columns, {dead} dead)",
        xlabel="column rank by H_jj",
        ylabel="H_jj = E[x_j²] (activation², log)",
    )
    ax.legend()
    return fig


def matrix_heatmap(
    M: torch.Tensor,
    title: str,
    xlabel: str = "column",
    ylabel: str = "row",
    symmetric: bool = True,
    ax: Axes | None = None,
    clip: float | None = None,
) -> Figure:
    """A matrix as an image with a colorbar; ``symmetric`` centres the colour scale on 0. ``clip`` (a quantile in
    (0, 1], symmetric scale only): the scale ends at that quantile of |value| and the colorbar shows the clipping,
    so that a few large values do not leave the typical ones white (real weights: a few near ±5, most near ±0.2)."""
    if clip is not None and not 0.0 < clip <= 1.0:
        raise ValueError(f"clip={clip!r} must be a quantile in (0, 1], for example 0.995")
    fig, ax = _fig_ax(ax)
    m = _np(M)
    lim = float(np.quantile(np.abs(m), clip)) if clip is not None else float(np.abs(m).max())
    lim = lim or float(np.abs(m).max()) or 1.0
    kw = dict(cmap="RdBu_r", vmin=-lim, vmax=lim) if symmetric else dict(cmap="viridis")
    im = ax.imshow(m, aspect="auto", interpolation="nearest", **kw)
    clipped = symmetric and clip is not None and bool(np.abs(m).max() > lim)
    fig.colorbar(im, ax=ax, extend="both" if clipped else "neither")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return fig


def outlier_heatmap(
    W: torch.Tensor,
    H: torch.Tensor,
    outlier_cols: torch.Tensor | list[int],
    saliency: bool = False,
    ax: Axes | None = None,
) -> Figure:
    """The outlier columns' weights W[:, cols], or their saliency ``|W_ij| sqrt(H_jj)`` (``saliency=True``)."""
    cols = torch.as_tensor(outlier_cols, dtype=torch.long)
    M = W[:, cols].float()  # [out, O]
    if saliency:
        M = M.abs() * torch.diagonal(H)[cols].clamp_min(0).sqrt().float()
    what = "saliency |W_ij|·sqrt(H_jj) (output units)" if saliency else "weights W[:, j]"
    fig = matrix_heatmap(
        M, f"Outlier columns: {what}", "outlier input column j", "output row i", symmetric=not saliency, ax=ax
    )
    if cols.numel() <= 24:
        ax = ax or fig.axes[0]
        ax.set_xticks(range(cols.numel()), [str(int(c)) for c in cols], rotation=90)
    return fig


# Codebooks -------------------------------------------------------------------------------
def _codes(qw: QuantizedWeight, which: str) -> tuple[torch.Tensor, int]:
    """Codes as [G, n] int64 and the codebook size, for ``which`` in main / residual / outlier."""
    if which == "outlier":
        if not qw.outlier_size:
            raise ValueError("this layer has no outlier part (npercent=0)")
        return (qw.outlier_indices.to(torch.int64) & 0xFFFF).reshape(1, -1), qw.outlier_num_centroids
    idx, res = qw.codes()  # [G, R, S] each
    if which == "main":
        return idx.reshape(qw.group_num, -1), qw.num_centroids
    if which == "residual":
        if res is None:
            raise ValueError("this layer has no residual codebook (k2 = -1)")
        return res.reshape(qw.group_num, -1), qw.num_res_centroids
    raise ValueError(f"which={which!r} must be 'main', 'residual' or 'outlier'")


def _counts(qw: QuantizedWeight, which: str) -> torch.Tensor:
    codes, k = _codes(qw, which)
    return torch.stack([torch.bincount(c, minlength=k) for c in codes])  # [G, k]


def codebook_stats(qweight: QuantizedWeight, which: str = "main") -> dict[str, Any]:
    """How a codebook is used: utilisation (fraction of centroids used, mean over groups, as
    ``qw.info["codebook_utilisation"]``), usage perplexity ``exp(entropy)`` (mean over groups;
    k means perfectly even use), dead centroids, vectors."""
    counts = _counts(qweight, which).double()  # [G, k]
    p = counts / counts.sum(1, keepdim=True)
    entropy = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(1)  # [G] nats
    used = (counts > 0).sum(1)  # [G]
    return {
        "codebook": which,
        "groups": counts.shape[0],
        "num_centroids": counts.shape[1],
        "vectors": int(counts.sum()),
        "used": int(used.sum()),
        "dead": int((counts == 0).sum()),
        "utilisation": float((used / counts.shape[1]).mean()),
        "perplexity": float(entropy.exp().mean()),
        "max_count": int(counts.max()),
    }


def codebook_usage(qweight: QuantizedWeight, which: str = "main", ax: Axes | None = None) -> Figure:
    """Vectors per centroid, sorted (all groups together), with the even-use line and the stats."""
    fig, ax = _fig_ax(ax)
    counts = _counts(qweight, which)  # [G, k]
    s = codebook_stats(qweight, which)
    ranked = torch.sort(counts.reshape(-1), descending=True).values.numpy()
    ax.bar(np.arange(ranked.size), ranked, width=1.0, color="C0", label="vectors per centroid")
    ax.axhline(s["vectors"] / ranked.size, color="C1", linestyle="--", label="even use")
    ax.set(
        title=f"{which} codebook: {100 * s['utilisation']:.1f}% used, perplexity {s['perplexity']:.1f} "
        f"of {s['num_centroids']}, {s['dead']} dead",
        xlabel="centroid rank by use (all groups)",
        ylabel="vectors assigned (count)",
    )
    ax.legend()
    return fig


def _working_weights(W: torch.Tensor, qw: QuantizedWeight) -> torch.Tensor:
    """W [out, in] in the quantizer's working space: normalised, then permuted."""
    Wn = W.float()
    if qw.weight_scale is not None:
        Wn = (Wn - qw.weight_bias.float()) / qw.weight_scale.float()
    if qw.perm is not None:
        Wn = Wn[:, qw.perm.to(torch.int64) & 0xFFFF]
    return Wn


def vector_projection(
    W: torch.Tensor, qweight: QuantizedWeight, max_points: int = 3000, seed: int = 0, ax: Axes | None = None
) -> Figure:
    """The layer's v-dim vectors (main groups) and their centroids, projected on the vectors' top 2 PCs."""
    fig, ax = _fig_ax(ax, (5.2, 4.4))
    v, g = qweight.vector_len, qweight.group_num
    X = to_vectors(_working_weights(W, qweight)[:, qweight.outlier_size :], v)  # [G*S*R, v]
    C = qweight.centroids.float().reshape(g * qweight.num_centroids, v)  # [G*k, v]
    if X.shape[0] > max_points:
        X = X[torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]]
    mean = X.mean(0)
    _, S, Vh = torch.linalg.svd(X - mean, full_matrices=False)  # Vh [min(n, v), v]
    P = Vh[:2].T if v >= 2 else torch.cat([Vh.T, torch.zeros(v, 1)], 1)  # [v, 2]
    x2, c2 = ((X - mean) @ P).numpy(), ((C - mean) @ P).numpy()
    dead = _counts(qweight, "main").reshape(-1) == 0
    ax.scatter(x2[:, 0], x2[:, 1], s=4, alpha=0.3, color="0.5", label=f"vectors ({len(x2)} shown)")
    ax.scatter(c2[~dead, 0], c2[~dead, 1], s=18, color="C3", marker="o", label="centroids")
    ax.scatter(c2[dead, 0], c2[dead, 1], s=30, color="k", marker="x", label=f"dead centroids ({int(dead.sum())})")
    explained = float((S[:2] ** 2).sum() / (S**2).sum()) if S.numel() else 0.0
    unit = "normalised weight" if qweight.weight_scale is not None else "weight"
    ax.set(
        title=f"v={v} vectors and centroids, PCA ({100 * explained:.0f}% of variance)",
        xlabel=f"PC 1 ({unit} units)",
        ylabel=f"PC 2 ({unit} units)",
    )
    ax.legend(loc="best", fontsize="small")
    return fig


# Layers and methods ------------------------------------------------------------------------
def _role_order(roles: Any) -> list[str]:
    present = list(dict.fromkeys(roles))
    return [r for r in ROLE_ORDER if r in present] + [r for r in present if r not in ROLE_ORDER]


def proxy_loss_by_role(df, log: bool = False, ax: Axes | None = None) -> Figure:
    """Mean relative proxy loss per role (bars, one per method) with each layer as a dot.

    df columns: name, block, role, method, proxy_loss_rel (e.g. ``report.to_dataframe()``).
    """
    fig, ax = _fig_ax(ax, (7.0, 3.8))
    roles, methods = _role_order(df["role"]), list(dict.fromkeys(df["method"]))
    width = 0.8 / max(len(methods), 1)
    for m, method in enumerate(methods):
        sub = df[df["method"] == method]
        xs = [i + (m - (len(methods) - 1) / 2) * width for i, r in enumerate(roles) if (sub["role"] == r).any()]
        means = [sub.loc[sub["role"] == r, "proxy_loss_rel"].mean() for r in roles if (sub["role"] == r).any()]
        ax.bar(xs, means, width, label=method, color=f"C{m}", alpha=0.8)
        x_of = {r: x for r, x in zip([r for r in roles if (sub["role"] == r).any()], xs)}
        ax.scatter([x_of[r] for r in sub["role"]], sub["proxy_loss_rel"], s=8, color="k", zorder=3)
    ax.set_xticks(range(len(roles)), roles)
    ax.set(
        title="Relative proxy loss by role (bar: mean over blocks, dot: one layer)",
        xlabel="linear role",
        ylabel="tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)",
    )
    if log:
        ax.set_yscale("log")
    ax.legend(title="method", **LEGEND_BESIDE)
    return fig


def _column_frame(trace: Any) -> Mapping[str, Any]:
    if hasattr(trace, "to_dataframe"):
        return trace.to_dataframe()
    return trace


def column_error(trace: Any, ax: Axes | None = None) -> Figure:
    """Error along the column loop: per-column error with and without feedback (left, log) and the
    proxy loss so far (right). ``trace``: a :class:`~vptq_lab.core.column_trace.ColumnTrace`, or a mapping /
    DataFrame with ``error_feedback``, ``proxy_loss_feedback`` and optionally the ``*_no_feedback`` twins."""
    fig, ax = _fig_ax(ax, (7.0, 3.8))
    data = _column_frame(trace)
    n = len(data["error_feedback"])
    x = np.arange(n)
    ax.semilogy(x, _np(data["error_feedback"]) + 1e-30, color="C0", linewidth=1, label="column error, feedback")
    if "error_no_feedback" in data:
        ax.semilogy(
            x,
            _np(data["error_no_feedback"]) + 1e-30,
            color="C1",
            linewidth=1,
            alpha=0.7,
            label="column error, no feedback",
        )
    right = ax.twinx()
    right.plot(x, _np(data["proxy_loss_feedback"]), color="C0", linewidth=2.5, label="proxy loss so far, feedback")
    if "proxy_loss_no_feedback" in data:
        right.plot(
            x,
            _np(data["proxy_loss_no_feedback"]),
            color="C1",
            linewidth=2.5,
            linestyle="--",
            label="proxy loss so far, no feedback",
        )
    ax.set(
        title="Error along the column loop",
        xlabel="column j in loop order (act-order, outliers first)",
        ylabel="‖w̃_j − q_j‖²·H_jj / tr(WHWᵀ) (log)",
    )
    right.set_ylabel("relative proxy loss after column j")
    ax.yaxis.set_major_locator(LogLocator(base=10, numticks=12))  # a tick per decade, however few decades
    lines = ax.get_lines() + right.get_lines()
    # below the axes: the curves span the whole width, so no corner of the plot is free of them
    ax.legend(
        lines,
        [ln.get_label() for ln in lines],
        fontsize="small",
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18),
        ncol=2,
        frameon=False,
    )
    return fig


def column_loop_state(trace: Any, c: int) -> Figure:
    """The loop after c columns of a ColumnTrace: the weights (quantized left of the line, compensated
    right of it), the update fed forward to the remaining columns, and the proxy loss so far."""
    fig = Figure(figsize=(10.0, 3.4), layout="constrained")
    a, b, d = fig.subplots(1, 3, width_ratios=[1, 1, 1.1])
    n = trace.in_features
    # colour scales clipped at the 99.5th percentile of |value|: on real weights the few largest would wash out the rest
    matrix_heatmap(
        trace.weights_at(c), f"weights after {c} of {n} columns", "working column j", "output row i", ax=a, clip=0.995
    )
    a.axvline(c - 0.5, color="k", linewidth=1.5)
    fed = torch.zeros_like(trace.W)
    fed[:, c:] = -trace.fed_forward(c)
    matrix_heatmap(fed, "update fed forward to later columns", "working column j", "output row i", ax=b, clip=0.995)
    b.axvline(c - 0.5, color="k", linewidth=1.5)
    loss, plain = _np(trace.proxy_loss_feedback), _np(trace.proxy_loss_no_feedback)
    d.plot(np.arange(n + 1), loss, color="C0", label="feedback")
    d.plot(np.arange(n + 1), plain, color="C1", linestyle="--", label="no feedback")
    d.plot([c], [loss[c]], "o", color="C3", label=f"now: {loss[c]:.4g}")
    d.set(title="proxy loss so far", xlabel="columns quantized", ylabel="relative proxy loss")
    d.legend(fontsize="small")
    return fig


# Bits, perplexity, kernels ---------------------------------------------------------------------
# Segment -> the breakdown fields it sums. Scalar methods' codes count as "index"; their scales and zero
# points form "scale+zero", drawn only when some bar has them.
_SEGMENTS = (
    ("index", ("index_bits", "code_bits")),
    ("codebook", ("codebook_bits",)),
    ("scale+zero", ("scale_bits", "zero_bits")),
    ("outlier", ("outlier_index_bits", "outlier_codebook_bits")),
    ("norm", ("norm_bits",)),
    ("perm", ("perm_bits",)),
)
_OPTIONAL_SEGMENTS = ("scale+zero",)


def _per_weight(b: Any) -> dict[str, float]:
    d = b.to_dict() if hasattr(b, "to_dict") else dict(b)
    if "num_weights" not in d:  # already per weight, keyed by segment
        return {name: float(d.get(name, 0.0)) for name, _ in _SEGMENTS}
    n = max(d["num_weights"], 1)
    return {name: sum(float(d.get(k, 0.0)) for k in keys) / n for name, keys in _SEGMENTS}


def bit_budget(breakdowns: Mapping[str, Any], ax: Axes | None = None) -> Figure:
    """Stacked bars of bits per weight: index, codebook, outlier, norm, perm, one bar per label.

    Values: :class:`~vptq_lab.core.bits.BitBreakdown`, :class:`~vptq_lab.core.scalar.ScalarBits` (codes,
    scale+zero, perm), their ``to_dict()``, or ``{segment: bits/weight}``.
    """
    fig, ax = _fig_ax(ax, (max(4.0, 1.2 * len(breakdowns) + 2.5), 3.8))
    rows = {label: _per_weight(b) for label, b in breakdowns.items()}
    segments = [
        (name, keys)
        for name, keys in _SEGMENTS
        if name not in _OPTIONAL_SEGMENTS or any(r[name] for r in rows.values())
    ]
    x = np.arange(len(rows))
    bottom = np.zeros(len(rows))
    for i, (name, _) in enumerate(segments):
        h = np.array([r[name] for r in rows.values()])
        ax.bar(x, h, 0.6, bottom=bottom, label=name, color=f"C{i}")
        bottom += h
    for xi, total in zip(x, bottom):
        ax.text(xi, total, f"{total:.3f}", ha="center", va="bottom", fontsize="small")
    ax.set_xticks(x, list(rows), rotation=20 if len(rows) > 4 else 0)
    ax.set(title="Bit budget per weight", ylabel="bits per weight", ylim=(0, max(bottom.max(), 1e-9) * 1.15))
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def _pareto(bits: np.ndarray, ppl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points no other point beats on both bits and perplexity, by increasing bits."""
    order = np.lexsort((ppl, bits))
    keep, best = [], math.inf
    for i in order:
        if ppl[i] < best:
            keep.append(i)
            best = ppl[i]
    return bits[keep], ppl[keep]


def bits_vs_perplexity(df, log_y: bool = False, note: str | None = None, ax: Axes | None = None) -> Figure:
    """Perplexity against bits per weight, one marker per method, with the Pareto frontier.

    df columns: method, bits, perplexity; optional ``note`` (annotated at its point, e.g.
    "baseline: Q4_1 GGUF, already ~4-bit rounded"). ``note=`` adds a caption under the title, and then the legend
    goes outside the axes, on the right.
    """
    fig, ax = _fig_ax(ax, (10.0, 4.2) if note else (6.4, 4.2))  # with a caption: room for the legend beside it
    for i, method in enumerate(dict.fromkeys(df["method"])):
        sub = df[df["method"] == method]
        ax.scatter(
            sub["bits"],
            sub["perplexity"],
            marker=_MARKERS[i % len(_MARKERS)],
            s=40,
            label=method,
            color=f"C{i}",
            zorder=3,
        )
    px, py = _pareto(df["bits"].to_numpy(float), df["perplexity"].to_numpy(float))
    ax.step(px, py, where="post", color="0.3", linewidth=1, linestyle="--", label="Pareto frontier")
    if "note" in df:
        for _, row in df[df["note"].notna() & (df["note"].astype(str) != "")].iterrows():
            ax.annotate(
                str(row["note"]),
                (row["bits"], row["perplexity"]),
                textcoords="offset points",
                xytext=(6, 6),
                fontsize="small",
            )
    if note:
        ax.text(0.01, 0.99, note, transform=ax.transAxes, va="top", fontsize="small", style="italic")
    ax.set(
        title="Perplexity vs bits per weight",
        xlabel="bits per weight (all overhead included)",
        ylabel="WikiText-2 perplexity" + (" (log)" if log_y else ""),
    )
    if log_y:
        ax.set_yscale("log")
    # with a caption in the top-left corner, the legend goes outside on the right, where it cannot cover it
    ax.legend(fontsize="small", **(LEGEND_BESIDE if note else {}))
    return fig


def kernel_throughput(df, value: str | None = None, ax: Axes | None = None) -> Figure:
    """Grouped bars: one group per (shape, batch), one bar per backend.

    df columns: shape, batch, backend and ``gbps`` (GB/s) or ``us`` (µs per call); ``value`` picks one.
    """
    value = value or ("gbps" if "gbps" in df else "us")
    if value not in ("gbps", "us"):
        raise ValueError(f"value={value!r} must be 'gbps' or 'us'")
    groups = list(dict.fromkeys(zip(df["shape"].astype(str), df["batch"])))
    backends = list(dict.fromkeys(df["backend"]))
    fig, ax = _fig_ax(ax, (max(6.0, 1.0 * len(groups) + 3), 3.8))
    width = 0.8 / max(len(backends), 1)
    for b, backend in enumerate(backends):
        sub = df[df["backend"] == backend]
        vals = {(str(s), bt): v for s, bt, v in zip(sub["shape"], sub["batch"], sub[value])}
        xs = [i + (b - (len(backends) - 1) / 2) * width for i, g in enumerate(groups) if g in vals]
        ax.bar(xs, [vals[g] for g in groups if g in vals], width, label=backend, color=f"C{b}")
    ax.set_xticks(range(len(groups)), [f"{s}\nbatch {bt}" for s, bt in groups], fontsize="small")
    ylabel = "throughput (GB/s, higher is better)" if value == "gbps" else "time per call (µs, lower is better)"
    ax.set(title="Kernel throughput by shape and backend", xlabel="weight shape (out × in) and batch", ylabel=ylabel)
    ax.legend(title="backend", fontsize="small")
    return fig


# Columns of a ``benchmarks/kernel_speed.py`` row (milliseconds per call) and the bar label each gets.
KERNEL_PATHS = {
    "dense_ms": "fp16 dense F.linear",
    "vq_linear_triton_ms": "vq_linear (Triton)",
    "torch_dequant_ms": "torch dequant + F.linear",
}


def kernel_results(data: Mapping[str, Any], bits: str | None = None, ax: Axes | None = None) -> Figure:
    """Time per call of each path in one ``benchmarks/kernel_speed.py`` result file, for one bit budget.

    data: the file's JSON, ``{"meta": {"device_name" or "device": ...}, "rows": [...]}``; each row has shape,
    out, in, batch, bits and the ``*_ms`` columns of :data:`KERNEL_PATHS`. bits: a row's ``bits`` name
    (default: the first in the file). The device name goes into the title, so a figure never loses it.
    """
    rows = pd.DataFrame(list(data.get("rows", [])))
    if rows.empty:
        raise ValueError("kernel results hold no rows: rerun benchmarks/kernel_speed.py")
    names = list(dict.fromkeys(rows["bits"]))
    bits = bits or names[0]
    if bits not in names:
        raise ValueError(f"bits={bits!r} is not in these results; they hold {names}")
    meta = data.get("meta", {})
    device = meta.get("device_name") or meta.get("device") or "unknown device"
    sub = rows[rows["bits"] == bits].copy()
    sub["shape"] = [f"{s} {o}×{i}" for s, o, i in zip(sub["shape"], sub["out"], sub["in"])]
    present = [c for c in KERNEL_PATHS if c in sub]
    long = sub.melt(id_vars=["shape", "batch"], value_vars=present, var_name="backend", value_name="ms").dropna()
    long["backend"] = long["backend"].map(KERNEL_PATHS)
    long["us"] = long["ms"] * 1000.0
    fig = kernel_throughput(long, value="us", ax=ax)
    fig_ax = ax or fig.axes[0]
    fig_ax.set_title(f"{device}: {bits} ({meta.get('dtype', 'dtype not recorded')})")
    return fig


def distillation_curve(report: Any, ax: Axes | None = None) -> Figure:
    """End-to-end distillation: training KL and held-out perplexity against steps, the kept state marked.

    ``report``: a :class:`~vptq_lab.model.distill.DistillReport` or its ``to_dict()`` (e.g. from report.json).
    """
    data = report if isinstance(report, Mapping) else report.to_dict()
    history = pd.DataFrame(data["history"])  # step, train_kl, heldout_ppl, heldout_kl
    fig, ax = _fig_ax(ax)
    steps = [0, *history.step]
    ax.plot(steps, [data["initial"]["ppl"], *history.heldout_ppl], "o-", color="C0", label="held-out perplexity")
    ax.axvline(data["best"]["step"], color="C2", ls=":", label=f"kept: step {data['best']['step']}")
    ax.set_xlabel("Adam step")
    ax.set_ylabel("held-out perplexity", color="C0")
    kl = ax.twinx()
    kl.plot(history.step, history.train_kl, "s--", color="C1", label="training KL (mean since last point)")
    kl.set_ylabel("KL(teacher || student) per token", color="C1")
    lines = ax.get_legend_handles_labels()[0] + kl.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="upper right")
    ax.set_title("end-to-end distillation (indices fixed)")
    return fig


def _block_role(frame: pd.DataFrame, value: str) -> pd.DataFrame:
    """``frame``'s ``value`` as blocks (rows) x roles (columns, in :data:`ROLE_ORDER`)."""
    grid = frame.pivot_table(index="block", columns="role", values=value, aggfunc="mean")
    return grid[_role_order(grid.columns)]


def sensitivity_heatmap(table: pd.DataFrame, rung: str, value: str = "predicted_kl", ax: Axes | None = None) -> Figure:
    """The sensitivity table (``vptq_lab.lab.allocation.model_sensitivity``) at one rung of the ladder: ``value``
    (the predicted KL by default) per block and role, on a log colour scale."""
    from matplotlib.colors import LogNorm

    fig, ax = _fig_ax(ax, (6.0, 6.4))
    grid = _block_role(table[table["rung"] == rung], value)
    positive = grid.to_numpy()[grid.to_numpy() > 0]
    norm = LogNorm(vmin=float(positive.min()), vmax=float(positive.max())) if positive.size else None
    im = ax.imshow(grid.to_numpy(), aspect="auto", interpolation="nearest", cmap="magma", norm=norm)
    label = "predicted KL per token (nats)" if value == "predicted_kl" else value
    fig.colorbar(im, ax=ax, label=label)
    ax.set_xticks(range(grid.shape[1]), list(grid.columns))
    ax.set_yticks(range(0, grid.shape[0], 2), [str(b) for b in grid.index[::2]])
    ax.set(title=f"Sensitivity at {rung}", xlabel="linear role", ylabel="decoder block")
    return fig


def allocation_heatmap(table: pd.DataFrame, rungs: Mapping[str, str], ax: Axes | None = None) -> Figure:
    """The bits per weight (all overhead) each linear got from a mixed allocation, per block and role. ``rungs``:
    linear -> rung (``MixedAllocation.rungs``); ``table``: the sensitivity table (for the rungs' bits)."""
    fig, ax = _fig_ax(ax, (6.0, 6.4))
    chosen = table[[rungs.get(n) == r for n, r in zip(table["linear"], table["rung"])]]
    grid = _block_role(chosen, "bits")
    im = ax.imshow(grid.to_numpy(), aspect="auto", interpolation="nearest", cmap="viridis")
    fig.colorbar(im, ax=ax, label="bits per weight, all overhead")
    ax.set_xticks(range(grid.shape[1]), list(grid.columns))
    ax.set_yticks(range(0, grid.shape[0], 2), [str(b) for b in grid.index[::2]])
    ax.set(title="Bits each linear gets", xlabel="linear role", ylabel="decoder block")
    return fig


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Spearman's rank correlation: Pearson's on the ranks (ties averaged), without scipy."""
    return float(a.rank().corr(b.rank()))


def predicted_vs_measured(check: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Predicted against measured held-out KL, one point per linear quantized alone (``benchmarks/sensitivity.py``'s
    check), by role, log-log, with the Spearman rank correlation in the title."""
    fig, ax = _fig_ax(ax, (6.4, 4.6))
    for i, role in enumerate(_role_order(check["role"])):
        rows = check[check["role"] == role]
        ax.scatter(rows["predicted_kl"], rows["measured_kl"], s=22, marker=_MARKERS[i % len(_MARKERS)], label=role)
    lo = float(min(check["predicted_kl"].min(), check["measured_kl"].min()))
    hi = float(max(check["predicted_kl"].max(), check["measured_kl"].max()))
    ax.plot([lo, hi], [lo, hi], color="0.6", linewidth=1, linestyle=":", label="equal")
    ax.set(xscale="log", yscale="log", xlabel="predicted KL per token (nats)", ylabel="measured KL per token (nats)")
    rho = spearman(check["predicted_kl"], check["measured_kl"])
    ax.set_title(f"One linear quantized alone: Spearman rank correlation {rho:.2f}")
    ax.legend(title="role", **LEGEND_BESIDE)
    return fig
