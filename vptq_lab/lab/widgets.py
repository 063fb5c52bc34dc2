"""Interactive explorers for notebooks. ``build_*()`` returns a widget; nothing is displayed here.

Each explorer is a class that holds its state and exposes plain methods and
attributes, so a test can drive it by setting ``.value`` on its controls and
calling ``button.click()``, then read what it shows. Figures are rendered to
PNG into ``ipywidgets.Image`` (works headless and in any browser). Anything
expensive (capturing a Hessian, quantizing) sits behind a Button; sliders use
``continuous_update=False``.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from typing import Any

import torch

try:
    import ipywidgets as ipw
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("vptq_lab.lab.widgets needs ipywidgets: pip install 'vptq-lab[notebook]'") from exc

from vptq_lab.core.bits import BitBreakdown, bits_per_weight
from vptq_lab.core.column_trace import column_trace
from vptq_lab.core.config import VPTQConfig, layer_plan
from vptq_lab.core.hessian_ops import act_order, condition_hessian
from vptq_lab.core.quantizer import vptq_quantize
from vptq_lab.core.qweight import dequantize
from vptq_lab.errors import VPTQLabError
from vptq_lab.lab import plots
from vptq_lab.model.arch import arch_for, get_blocks, get_module, linear_weight
from vptq_lab.model.hessian import hessian_hooks
from vptq_lab.model.layers import QuantizedLinear
from vptq_lab.model.passes import capture_block_inputs, run_block

__all__ = [
    "CalibrationStepper",
    "CodebookExplorer",
    "OutlierExplorer",
    "LayerErrorBrowser",
    "BitBudgetComparator",
    "build_calibration_stepper",
    "build_codebook_explorer",
    "build_outlier_explorer",
    "build_layer_error_browser",
    "build_bit_budget_comparator",
    "SensitivityExplorer",
    "build_sensitivity_explorer",
]


def _show(image: ipw.Image, fig: Any) -> None:
    image.value = plots.to_png(fig)


def _error(text: str) -> str:
    return f"<span style='color:#b00'>{html.escape(text)}</span>"


def _table(df, **kw) -> str:
    """Plain ``DataFrame.to_html`` (no Styler: no random ids, so nbval output is stable)."""
    return df.to_html(index=False, border=0, float_format=lambda x: f"{x:.4g}", **kw)


# Calibration stepper ------------------------------------------------------------------------------
class CalibrationStepper:
    """Walk one linear through VPTQ: Hessian, damping, act-order, Cholesky of H⁻¹, the column loop.

    The *capture* button runs ``capture_block_inputs`` to the chosen block (full-precision
    activations of the model as it is now), collects the linear's H with ``hessian_hooks``
    and quantizes it once with a per-column trace; the stage buttons and the column
    slider only re-plot.
    """

    STAGES = ("H", "damping", "act-order", "Cholesky", "column loop")

    def __init__(
        self,
        model: torch.nn.Module,
        calibration_ids: torch.Tensor,
        config: VPTQConfig,
        block: int = 0,
        linear: str | None = None,
        batch_size: int = 4,
    ):
        self.model, self.calibration, self.config, self.batch_size = model, calibration_ids, config, batch_size
        self.spec = arch_for(model)
        self.blocks = get_blocks(model, self.spec)
        names = [n for stage in self.spec.stages for n in stage]
        self.block = ipw.Dropdown(options=list(range(len(self.blocks))), value=block, description="block")
        self.linear = ipw.Dropdown(options=names, value=linear or names[0], description="linear")
        self.capture_button = ipw.Button(
            description="capture + quantize", button_style="primary", layout=ipw.Layout(width="auto")
        )
        self.stage = ipw.ToggleButtons(options=self.STAGES, value="H", disabled=True)
        self.column = ipw.IntSlider(value=0, min=0, max=1, description="column", continuous_update=False, disabled=True)
        self.status = ipw.HTML("Pick a block and a linear, then <b>capture + quantize</b>.")
        self.numbers = ipw.HTML()
        self.image = ipw.Image(format="png")
        self.W = self.H = self.tokens = self.trace = None
        self.capture_button.on_click(lambda _: self.capture())
        self.stage.observe(lambda _: self.render(), "value")
        self.column.observe(lambda _: self.stage.value == "column loop" and self.render(), "value")
        self.block.observe(lambda _: self._invalidate(), "value")
        self.linear.observe(lambda _: self._invalidate(), "value")
        self.widget = ipw.VBox(
            [
                ipw.HBox([self.block, self.linear, self.capture_button]),
                self.status,
                self.stage,
                self.column,
                self.numbers,
                self.image,
            ]
        )

    @property
    def layer_name(self) -> str:
        return f"{self.spec.blocks}.{self.block.value}.{self.linear.value}"

    def _invalidate(self) -> None:
        self.trace = None
        self.stage.disabled = self.column.disabled = True
        self.status.value = f"{html.escape(self.layer_name)}: not captured yet."

    def capture(self) -> None:
        """Collect H for the chosen linear and quantize it with a per-column trace."""
        block = self.blocks[self.block.value]
        module = get_module(block, self.linear.value)
        if isinstance(module, QuantizedLinear):
            self.status.value = _error(f"{self.layer_name} is already quantized; use a fresh model")
            return
        inputs = capture_block_inputs(self.model, block, self.calibration, self.batch_size)
        with hessian_hooks({self.linear.value: module}) as accs:
            run_block(block, inputs)
        acc = accs[self.linear.value]
        self.W, self.H, self.tokens = linear_weight(module, self.spec.transposed).clone(), acc.hessian(), acc.tokens
        self.trace = column_trace(self.W, self.H, self.config)
        n = self.W.shape[1]
        self.status.value = (
            f"<b>{html.escape(self.layer_name)}</b>: W {tuple(self.W.shape)}, H over "
            f"{self.tokens} tokens; proxy loss {self.trace.qweight.info['proxy_loss_rel']:.4g}."
        )
        self.stage.disabled = self.column.disabled = False
        with self.column.hold_trait_notifications():
            self.column.max, self.column.value = n, n
        self.render()

    @property
    def proxy_loss_so_far(self) -> float:
        """Relative proxy loss after ``column.value`` columns (the rest compensated, unquantized)."""
        return float(self.trace.proxy_loss_feedback[self.column.value])

    def render(self) -> None:
        if self.trace is None:
            return
        fig, text = getattr(self, "_stage_" + self.stage.value.replace(" ", "_").replace("-", "_").lower())()
        self.numbers.value = text
        _show(self.image, fig)

    def _stage_h(self):
        d = torch.diagonal(self.H)
        text = (
            f"H = E[x xᵀ] over {self.tokens} tokens, {self.H.shape[0]}×{self.H.shape[0]}; "
            f"mean H_jj {float(d.mean()):.4g}, dead columns (H_jj = 0): {int((d == 0).sum())}"
        )
        return plots.matrix_heatmap(self.H, "H = E[x xᵀ] (activation²)", "input j", "input i"), text

    def _stage_damping(self):
        Hc, _, _ = condition_hessian(self.H, self.W, self.config.percdamp)
        d = torch.diagonal(self.H).clone()
        d[d == 0] = 1  # dead columns first get H_jj = 1
        fig = plots.hessian_diagonal(self.H)
        ax = fig.axes[0]
        ax.semilogy(torch.sort(torch.diagonal(Hc), descending=True).values.numpy(), color="C2", label="damped")
        ax.legend()
        text = (
            f"damping adds percdamp·mean(diag H) = {self.config.percdamp} × {float(d.mean()):.4g} = "
            f"{self.config.percdamp * float(d.mean()):.4g} to every H_jj (dead columns first get H_jj = 1)"
        )
        return fig, text

    def _stage_act_order(self):
        order = act_order(self.H)
        shown = ", ".join(str(int(j)) for j in order[:16])
        text = (
            f"act-order: columns by descending H_jj (enable_perm={self.config.enable_perm}); first: {shown}…; "
            f"outlier columns: {self.trace.outlier_size}"
        )
        return plots.hessian_diagonal(self.H, outlier_size=self.trace.outlier_size), text

    def _stage_cholesky(self):
        U = self.trace.U.double()
        Hc = self.trace.trace.prepared.H  # damped, working order
        err = float((U.T @ U @ Hc - torch.eye(U.shape[0], dtype=U.dtype)).abs().max())
        text = f"U: upper Cholesky factor of H⁻¹ (working order), Uᵀ U = H⁻¹; max |Uᵀ U H − I| = {err:.2e}"
        return plots.matrix_heatmap(U, "U = chol(H⁻¹)ᵀ, upper", "working column", "working row"), text

    def _stage_column_loop(self):
        c, n = self.column.value, self.trace.in_features
        fed = self.trace.fed_forward(c)
        text = (
            f"column {c} of {n}: quantized so far {c} columns; error fed forward to the remaining "
            f"{n - c}: ‖ΔW‖_F = {float(fed.norm()):.4g}; "
            f"<b>proxy loss so far {self.proxy_loss_so_far:.6g}</b> "
            f"(final {float(self.trace.proxy_loss_feedback[-1]):.6g}, "
            f"no feedback {float(self.trace.proxy_loss_no_feedback[-1]):.6g})"
        )
        return plots.column_loop_state(self.trace, c), text


def build_calibration_stepper(
    model: torch.nn.Module, calibration_ids: torch.Tensor, config: VPTQConfig, block: int = 0, linear: str | None = None
) -> ipw.VBox:
    """The :class:`CalibrationStepper` widget (``.explorer`` holds the object)."""
    stepper = CalibrationStepper(model, calibration_ids, config, block, linear)
    stepper.widget.explorer = stepper
    return stepper.widget


# Codebook explorer ----------------------------------------------------------------------------------
class CodebookExplorer:
    """Pick a kept layer (``report.store``): codebook usage, PCA of vectors and centroids, and one
    vector's reconstruction. Vector i is rows ``r·v … r·v+v−1`` of original column ``j``, ``i = j·R + r``."""

    def __init__(self, store: Any):
        self.store = dict(getattr(store, "store", store))
        if not self.store:
            raise ValueError("nothing to explore: quantize with keep=True (or keep=[names]) to fill report.store")
        names = list(self.store)
        self.layer = ipw.Dropdown(options=names, value=names[0], description="layer", layout=ipw.Layout(width="420px"))
        self.vector = ipw.IntSlider(value=0, min=0, max=1, description="vector", continuous_update=False)
        self.stats = ipw.HTML()
        self.usage, self.projection = ipw.Image(format="png"), ipw.Image(format="png")
        self.detail = ipw.HTML()
        self._W_hat: torch.Tensor | None = None
        self.layer.observe(lambda _: self.select(), "value")
        self.vector.observe(lambda _: self.show_vector(), "value")
        self.widget = ipw.VBox(
            [self.layer, self.stats, ipw.HBox([self.usage, self.projection]), self.vector, self.detail]
        )
        self.select()

    @property
    def entry(self):
        return self.store[self.layer.value]

    def select(self) -> None:
        e = self.entry
        qw = e.qweight
        self._W_hat = dequantize(qw)
        s = plots.codebook_stats(qw)
        self.stats.value = (
            f"k={s['num_centroids']} × {s['groups']} group(s): {s['used']} used, {s['dead']} dead, "
            f"utilisation {100 * s['utilisation']:.1f}%, usage perplexity {s['perplexity']:.1f}"
        )
        _show(self.usage, plots.codebook_usage(qw))
        _show(self.projection, plots.vector_projection(e.W, qw, max_points=2000))
        with self.vector.hold_trait_notifications():
            self.vector.value = 0
            self.vector.max = qw.in_features * qw.num_rows - 1
        self.show_vector()

    def vector_info(self, i: int) -> dict[str, Any]:
        """Original and reconstructed values of vector i, with its codes."""
        qw, Wt = self.entry.qweight, self.entry.W
        R, v = qw.num_rows, qw.vector_len
        j, r = divmod(i, R)
        rows = list(range(r * v, min(r * v + v, qw.out_features)))
        perm = qw.perm.to(torch.int64) & 0xFFFF if qw.perm is not None else torch.arange(qw.in_features)
        p = int(torch.argsort(perm)[j])  # working position of original column j
        info = {
            "column": j,
            "rows": rows,
            "original": Wt[rows, j].tolist(),
            "reconstructed": self._W_hat[rows, j].tolist(),
        }
        if p < qw.outlier_size:
            codes = (qw.outlier_indices.to(torch.int64) & 0xFFFF)[0, :, p]  # [R0]
            info.update(part="outlier", codes=sorted({int(codes[x // qw.outlier_vector_len]) for x in rows}))
            return info
        g, s = divmod(p - qw.outlier_size, qw.group_size)
        idx, res = qw.codes()
        info.update(
            part="main",
            group=g,
            code=int(idx[g, r, s]),
            codeword=qw.centroids[g].float().reshape(-1, v)[int(idx[g, r, s])].tolist(),
        )
        if res is not None:
            info.update(
                res_code=int(res[g, r, s]),
                res_codeword=qw.res_centroids[g].float().reshape(-1, v)[int(res[g, r, s])].tolist(),
            )
        return info

    def show_vector(self) -> None:
        info = self.vector_info(self.vector.value)
        head = f"vector {self.vector.value}: column {info['column']}, rows {info['rows'][0]}–{info['rows'][-1]}; "
        if info["part"] == "outlier":
            head += f"outlier column, outlier codes {info['codes']}"
        else:
            head += f"group {info['group']}, centroid #{info['code']}"
            head += f" + residual #{info['res_code']}" if "res_code" in info else ""
        cells = "".join(
            f"<tr><td>{r}</td><td>{o:+.5f}</td><td>{q:+.5f}</td><td>{q - o:+.2e}</td></tr>"
            for r, o, q in zip(info["rows"], info["original"], info["reconstructed"])
        )
        self.detail.value = (
            f"<p>{head}</p><table><tr><th>row</th><th>original</th><th>codeword "
            f"(dequantized)</th><th>error</th></tr>{cells}</table>"
        )


def build_codebook_explorer(report_or_store: Any) -> ipw.VBox:
    """The :class:`CodebookExplorer` widget over ``report.store`` (or a ``{name: LayerStore}`` dict)."""
    explorer = CodebookExplorer(report_or_store)
    explorer.widget.explorer = explorer
    return explorer.widget


# Outlier explorer ---------------------------------------------------------------------------------------
class OutlierExplorer:
    """How many columns leave for the outlier codebook, what it costs in bits, and what it buys.

    The npercent slider re-plots diag(H) with the cutoff and recomputes the bits (cheap); the
    *recompute* button re-runs ``vptq_quantize`` for the proxy loss. The outlier codebook is
    ``(v0, k0)`` from ``config`` when it has one, else ``(v, k1)``.
    """

    def __init__(self, weight: torch.Tensor, H: torch.Tensor, config: VPTQConfig, max_npercent: float = 20.0):
        self.W, self.H, self.base = weight, H, config
        v0, k0 = config.vector_lens[0], config.num_centroids[0]
        self.outlier_codebook = (v0, k0) if v0 > 0 else (config.v, config.k1)
        self.npercent = ipw.FloatSlider(
            value=config.npercent,
            min=0.0,
            max=max_npercent,
            step=0.5,
            description="npercent",
            continuous_update=False,
            readout_format=".1f",
        )
        self.recompute_button = ipw.Button(
            description="recompute proxy loss", button_style="primary", layout=ipw.Layout(width="auto")
        )
        self.bits_label, self.columns_label, self.loss_label = ipw.HTML(), ipw.HTML(), ipw.HTML()
        self.image = ipw.Image(format="png")
        self.history: list[dict[str, Any]] = []
        self.bits: BitBreakdown | None = None
        self.npercent.observe(lambda _: self.update(), "value")
        self.recompute_button.on_click(lambda _: self.recompute())
        self.widget = ipw.VBox(
            [self.npercent, self.bits_label, self.columns_label, self.image, self.recompute_button, self.loss_label]
        )
        self.update()

    def config_for(self, npercent: float) -> VPTQConfig:
        if npercent <= 0:
            return self.base.replace(npercent=0.0, vector_lens=(-1, self.base.v), num_centroids=(-1, self.base.k1))
        v0, k0 = self.outlier_codebook
        return self.base.replace(
            npercent=float(npercent), vector_lens=(v0, self.base.v), num_centroids=(k0, self.base.k1)
        )

    @property
    def config(self) -> VPTQConfig:
        return self.config_for(self.npercent.value)

    @property
    def outlier_columns(self) -> torch.Tensor:
        """Original indices of the columns that leave, largest H_jj first."""
        size = layer_plan(self.config, self.W.shape[1])[0]
        return act_order(self.H)[:size]

    def update(self) -> None:
        try:
            cfg, cols = self.config, self.outlier_columns
        except ValueError as exc:
            self.bits = None
            self.bits_label.value = _error(str(exc))
            return
        self.bits = bits_per_weight(cfg, tuple(self.W.shape), "paper")
        stored = bits_per_weight(cfg, tuple(self.W.shape), "stored")
        self.bits_label.value = (
            f"<b>{self.bits.bits_per_weight:.4f}</b> bits/weight (paper accounting), "
            f"{stored.bits_per_weight:.4f} stored; outlier codebook v0={cfg.vector_lens[0]}, "
            f"k0={cfg.num_centroids[0]}"
        )
        shown = ", ".join(str(int(c)) for c in cols[:24]) + ("…" if len(cols) > 24 else "")
        self.columns_label.value = f"{len(cols)} of {self.W.shape[1]} columns leave: [{shown}]"
        _show(self.image, plots.hessian_diagonal(self.H, outlier_size=len(cols)))

    def recompute(self) -> dict[str, Any]:
        """Quantize the layer at the current npercent; returns (and keeps) the row added to ``history``."""
        qw = vptq_quantize(self.W, self.H, self.config)
        row = {
            "npercent": self.npercent.value,
            "outlier_columns": qw.outlier_size,
            "bits": self.bits.bits_per_weight,
            "proxy_loss_rel": qw.info["proxy_loss_rel"],
        }
        self.history.append(row)
        import pandas as pd

        self.loss_label.value = (
            f"proxy loss at npercent={row['npercent']:.1f}: <b>{row['proxy_loss_rel']:.5g}</b>"
            + _table(pd.DataFrame(self.history))
        )
        return row


def build_outlier_explorer(
    weight: torch.Tensor, H: torch.Tensor, config: VPTQConfig, max_npercent: float = 20.0
) -> ipw.VBox:
    """The :class:`OutlierExplorer` widget for one layer: W [out, in], H [in, in]."""
    explorer = OutlierExplorer(weight, H, config, max_npercent)
    explorer.widget.explorer = explorer
    return explorer.widget


# Layer error browser ---------------------------------------------------------------------------------------
class LayerErrorBrowser:
    """A sortable table over all layers and methods, the by-role chart, and one layer's details.

    df: one row per (layer, method) with at least name, block, role, method, proxy_loss_rel.
    """

    def __init__(self, df, max_rows: int = 60):
        missing = {"name", "block", "role", "method", "proxy_loss_rel"} - set(df.columns)
        if missing:
            raise ValueError(f"layer table lacks columns {sorted(missing)}; pass report.to_dataframe()")
        self.df, self.max_rows = df.reset_index(drop=True), max_rows
        self.sort_by = ipw.Dropdown(options=list(df.columns), value="proxy_loss_rel", description="sort by")
        self.ascending = ipw.Checkbox(value=False, description="ascending")
        self.method = ipw.Dropdown(
            options=["all"] + list(dict.fromkeys(df["method"])), value="all", description="method"
        )
        names = list(dict.fromkeys(df["name"]))
        self.layer = ipw.Dropdown(options=names, value=names[0], description="layer", layout=ipw.Layout(width="420px"))
        self.table, self.details = ipw.HTML(), ipw.HTML()
        self.chart = ipw.Image(format="png")
        for control in (self.sort_by, self.ascending, self.method):
            control.observe(lambda _: self.refresh(), "value")
        self.layer.observe(lambda _: self.show_layer(), "value")
        self.widget = ipw.VBox(
            [ipw.HBox([self.sort_by, self.ascending, self.method]), self.table, self.chart, self.layer, self.details]
        )
        self.refresh()
        self.show_layer()

    def view(self):
        """The rows shown, sorted (all of them, before ``max_rows``)."""
        df = self.df if self.method.value == "all" else self.df[self.df["method"] == self.method.value]
        return df.sort_values(self.sort_by.value, ascending=self.ascending.value, kind="stable")

    def refresh(self) -> None:
        df = self.view()
        more = f"<p>… {len(df) - self.max_rows} more rows</p>" if len(df) > self.max_rows else ""
        self.table.value = f"<div style='max-height:320px;overflow:auto'>{_table(df.head(self.max_rows))}</div>" + more
        _show(self.chart, plots.proxy_loss_by_role(df))

    def show_layer(self) -> None:
        rows = self.df[self.df["name"] == self.layer.value]
        self.details.value = f"<p><b>{html.escape(self.layer.value)}</b></p>" + rows.set_index("method").T.to_html(
            border=0, float_format=lambda x: f"{x:.4g}"
        )


def build_layer_error_browser(df, max_rows: int = 60) -> ipw.VBox:
    """The :class:`LayerErrorBrowser` widget over a per-layer DataFrame (e.g. concatenated reports)."""
    browser = LayerErrorBrowser(df, max_rows)
    browser.widget.explorer = browser
    return browser.widget


# Bit budget comparator -------------------------------------------------------------------------------------
def _as_config(value: Any) -> VPTQConfig | None:
    """A results row's config (a VPTQConfig, a dict or its JSON) through the one config parser, which refuses
    unknown keys with a hint; None for a row without one (the unquantized row's empty config)."""
    if isinstance(value, VPTQConfig):
        return value
    if value is None or value in ("", "{}", {}) or (isinstance(value, float) and math.isnan(value)):
        return None
    return VPTQConfig.from_dict(json.loads(value) if isinstance(value, str) else dict(value))


_COMPARED = ("vector_lens", "num_centroids", "num_res_centroids", "npercent", "group_num", "enable_norm", "enable_perm")


class BitBudgetComparator:
    """Sliders for v, k1, k2, npercent and group_num; the live bit breakdown per layer shape and for the
    model (``bits.py``), and the measured perplexity of the nearest config already run.

    results_df: columns method, config (VPTQConfig, dict or JSON), bits, perplexity; only ``vptq`` rows count.
    The outlier codebook is ``(v, k1)`` unless ``config`` sets one.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, int]], results_df=None, config: VPTQConfig | None = None):
        self.shapes = dict(shapes)
        self.base = config or VPTQConfig()
        self.results = self._measured(results_df)
        powers = [2**i for i in range(1, 17)]
        b = self.base
        self.v = ipw.IntSlider(value=b.v, min=1, max=16, description="v", continuous_update=False)
        self.k1 = ipw.SelectionSlider(options=powers, value=b.k1, description="k1", continuous_update=False)
        self.k2 = ipw.SelectionSlider(
            options=[0] + powers, value=b.k2, description="k2 (0: none)", continuous_update=False
        )
        self.npercent = ipw.FloatSlider(
            value=b.npercent, min=0.0, max=10.0, step=0.5, description="npercent", continuous_update=False
        )
        self.group_num = ipw.IntSlider(
            value=b.group_num, min=1, max=8, description="group_num", continuous_update=False
        )
        self.mode = ipw.ToggleButtons(options=["paper", "stored"], value="paper", description="accounting")
        self.summary, self.per_layer, self.measured = ipw.HTML(), ipw.HTML(), ipw.HTML()
        self.image = ipw.Image(format="png")
        self.model_breakdown: BitBreakdown | None = None
        self.nearest: dict[str, Any] | None = None
        controls = (self.v, self.k1, self.k2, self.npercent, self.group_num, self.mode)
        for control in controls:
            control.observe(lambda _: self.update(), "value")
        self.widget = ipw.VBox(
            [
                ipw.HBox([ipw.VBox(controls[:3]), ipw.VBox(controls[3:])]),
                self.summary,
                self.measured,
                self.per_layer,
                self.image,
            ]
        )
        self.update()

    @staticmethod
    def _measured(results_df) -> list[dict[str, Any]]:
        if results_df is None or len(results_df) == 0:
            return []
        df = results_df[results_df["method"] == "vptq"] if "method" in results_df else results_df
        rows = []
        for _, row in df.iterrows():
            cfg = _as_config(row.get("config"))
            if cfg is not None and not math.isnan(float(row["perplexity"])):
                rows.append({"config": cfg, "bits": float(row["bits"]), "perplexity": float(row["perplexity"])})
        return rows

    def config(self) -> VPTQConfig:
        """The config the sliders describe (ValueError when invalid)."""
        k2, n = self.k2.value, self.npercent.value
        v0, k0 = self.base.vector_lens[0], self.base.num_centroids[0]
        if v0 <= 0:
            v0, k0 = self.v.value, self.k1.value
        return self.base.replace(
            vector_lens=(v0 if n > 0 else -1, self.v.value),
            num_centroids=(k0 if n > 0 else -1, self.k1.value),
            num_res_centroids=(-1, k2 if k2 else -1),
            npercent=float(n),
            group_num=self.group_num.value,
        )

    def update(self) -> None:
        try:
            cfg = self.config()
            per_shape = {s: bits_per_weight(cfg, s, self.mode.value) for s in dict.fromkeys(self.shapes.values())}
        except ValueError as exc:
            self.model_breakdown = None
            self.summary.value = _error(f"invalid config: {exc}")
            return
        total = BitBreakdown()
        for shape in self.shapes.values():
            total = total + per_shape[shape]
        self.model_breakdown = total
        self.summary.value = (
            f"model: <b>{total.bits_per_weight:.4f}</b> bits/weight ({self.mode.value} accounting), "
            f"compression {total.compression:.2f}× vs fp16 over {len(self.shapes)} linears"
        )
        self._show_per_layer(per_shape)
        self._show_nearest(cfg, total.bits_per_weight)

    def _show_per_layer(self, per_shape: dict[tuple[int, int], BitBreakdown]) -> None:
        import pandas as pd

        count = {s: sum(1 for x in self.shapes.values() if x == s) for s in per_shape}
        names = {s: next(n for n, x in self.shapes.items() if x == s).rsplit(".", 1)[-1] for s in per_shape}
        rows = [
            {
                "shape": f"{s[0]}×{s[1]}",
                "example": names[s],
                "linears": count[s],
                **{
                    k: b.to_dict()[k] / b.num_weights
                    for k in (
                        "index_bits",
                        "codebook_bits",
                        "outlier_index_bits",
                        "outlier_codebook_bits",
                        "norm_bits",
                        "perm_bits",
                    )
                },
                "bits_per_weight": b.bits_per_weight,
            }
            for s, b in per_shape.items()
        ]
        self.per_layer.value = "<p>bits per weight, by layer shape:</p>" + _table(pd.DataFrame(rows))
        labels = {f"{s[0]}×{s[1]}": b for s, b in per_shape.items()}
        _show(self.image, plots.bit_budget({**labels, "model": self.model_breakdown}))

    def _show_nearest(self, cfg: VPTQConfig, bits: float) -> None:
        if not self.results:
            self.nearest = None
            self.measured.value = "no measured config yet"
            return
        self.nearest = min(self.results, key=lambda r: abs(r["bits"] - bits))
        near = self.nearest["config"]
        same = all(getattr(near, f) == getattr(cfg, f) for f in _COMPARED)
        desc = f"v={near.v}, k1={near.k1}, k2={near.k2 or '–'}, npercent={near.npercent:g}, group_num={near.group_num}"
        self.measured.value = (
            f"{'this exact config' if same else 'nearest measured config'} ({desc}) at "
            f"{self.nearest['bits']:.3f} bits: perplexity <b>{self.nearest['perplexity']:.3f}</b>"
            + ("" if same else f" (Δbits {self.nearest['bits'] - bits:+.3f})")
        )


def build_bit_budget_comparator(
    shapes: Mapping[str, tuple[int, int]], results_df=None, config: VPTQConfig | None = None
) -> ipw.VBox:
    """The :class:`BitBudgetComparator` widget (e.g. ``shapes = budget.SMOLLM2_135M_SHAPES``)."""
    comparator = BitBudgetComparator(shapes, results_df, config)
    comparator.widget.explorer = comparator
    return comparator.widget


# Sensitivity explorer -------------------------------------------------------------------------------------
class SensitivityExplorer:
    """The sensitivity table (``vptq_lab.lab.allocation.model_sensitivity``) behind a rung picker, and the mixed
    allocation at a budget: its bits per block and role, and how many linears each rung gets.

    ``table``: one row per linear and rung with linear, block, role, rung, out, in, bits, predicted_kl.
    """

    def __init__(self, table):
        from vptq_lab.lab.allocation import uniform_bits_of_rung

        missing = {"linear", "block", "role", "rung", "out", "in", "bits", "predicted_kl"} - set(table.columns)
        if missing:
            raise ValueError(f"sensitivity table lacks columns {sorted(missing)}; pass model_sensitivity(...)")
        self.table = table
        rungs = list(dict.fromkeys(table["rung"]))
        self.rung = ipw.Dropdown(options=rungs, value=rungs[len(rungs) // 2], description="config")
        low, high = (uniform_bits_of_rung(table, r) for r in (rungs[0], rungs[-1]))
        self.budget = ipw.FloatSlider(
            value=round(uniform_bits_of_rung(table, self.rung.value), 3),
            min=round(low, 3),
            max=round(high, 3),
            step=0.01,
            description="budget",
            continuous_update=False,
        )
        self.heatmap, self.allocation = ipw.Image(format="png"), ipw.Image(format="png")
        self.summary = ipw.HTML()
        self.found = None
        self.rung.observe(lambda _: self.show_rung(), "value")
        self.budget.observe(lambda _: self.allocate(), "value")
        self.widget = ipw.VBox(
            [ipw.HBox([self.rung, self.budget]), ipw.HBox([self.heatmap, self.allocation]), self.summary]
        )
        self.show_rung()
        self.allocate()

    def show_rung(self) -> None:
        _show(self.heatmap, plots.sensitivity_heatmap(self.table, self.rung.value))

    def allocate(self) -> None:
        from vptq_lab.lab.allocation import allocate_mixed

        try:
            self.found = allocate_mixed(self.table, self.budget.value)
        except VPTQLabError as exc:  # a budget below the cheapest rung: say so, keep the last picture
            self.summary.value = _error(str(exc))
            return
        _show(self.allocation, plots.allocation_heatmap(self.table, self.found.rungs))
        counts = "".join(f"<li>{html.escape(r)}: {n} linears</li>" for r, n in self.found.counts().items())
        self.summary.value = (
            f"<p>{self.found.bits:.4f} bits per weight, predicted KL {self.found.cost:.4g} nats per token</p>"
            f"<ul>{counts}</ul>"
        )


def build_sensitivity_explorer(table) -> ipw.VBox:
    """The :class:`SensitivityExplorer` widget over a sensitivity table."""
    explorer = SensitivityExplorer(table)
    explorer.widget.explorer = explorer
    return explorer.widget
