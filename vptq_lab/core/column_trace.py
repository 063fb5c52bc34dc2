"""Column-by-column view of VPTQ's loop, for the calibration stepper and ``plots.column_error``.

``column_trace(W, H, config)`` quantizes one layer exactly as :func:`vptq_quantize`
does (same codebooks, same codes) and keeps what the loop did at every column,
so a notebook slider can walk the loop without running it again.

Why a prefix sum is exact. In working space (normalised, permuted, damped
``Hc``) the loop leaves ``W - Q = E U`` with ``U`` upper triangular and
``Uᵀ U = Hc⁻¹`` (each column's error ``E_j`` is pushed onto later columns
through row ``U_j,:``). Stop after ``c`` columns and keep the rest in full
precision, compensated: the weight is off by ``E[:, :c] U[:c, :]``, whose loss
under any ``H'`` is the sum of the top-left ``c x c`` block of
``(EᵀE) ∘ (U H' Uᵀ)``. Under the damped ``Hc``, ``U Hc Uᵀ = I`` and this is
``Σ_j ||E_j||²``: monotone. We report it under the *undamped* H, the metric of
``qw.info["proxy_loss_rel"]``, so the last value is the quantizer's own number
(up to the float32 rounding of the loop). The price: ``H = Hc - damp·I``, so
the curve is ``Σ_{j<c} ||E_j||² - damp·||E[:, :c] U[:c, :]||²`` and can dip by
a hair (of order ``percdamp`` times the loss) where a column's error cancels
part of what was fed forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vptq_lab.core.config import VPTQConfig
from vptq_lab.core.hessian_ops import proxy_loss
from vptq_lab.core.quantizer import VPTQTrace, quantize_columns, quantize_with_trace
from vptq_lab.core.qweight import QuantizedWeight

__all__ = ["ColumnTrace", "column_trace"]


@dataclass
class ColumnTrace:
    """One layer's loop, column by column. Working space: columns in the loop's order
    (``order[j]`` = original column of working column j), normalised if ``enable_norm``.

    Tensors: W, Q, Q_no_feedback, E [out, in] fp32; U [in, in] fp32; H [in, in] f64
    (undamped, working space). Per-column arrays are relative to ``tr(W H Wᵀ)``.
    """

    qweight: QuantizedWeight
    trace: VPTQTrace
    order: torch.Tensor  # int64 [in]
    outlier_size: int
    W: torch.Tensor  # working weights before the loop (dead columns zeroed)
    Q: torch.Tensor  # final pass, with feedback
    Q_no_feedback: torch.Tensor  # same codebooks, nearest assignment, no feedback
    E: torch.Tensor  # loop errors: (updated w_j - q_j) / U_jj
    U: torch.Tensor
    H: torch.Tensor
    error_feedback: torch.Tensor  # f64 [in]: ||w~_j - q_j||² H_jj of the column actually quantized
    error_no_feedback: torch.Tensor  # f64 [in]: ||w_j - q_j||² H_jj
    proxy_loss_feedback: torch.Tensor  # f64 [in + 1]: entry c = loss after c columns (rest compensated)
    proxy_loss_no_feedback: torch.Tensor  # f64 [in + 1]: entry c = loss after c columns (rest untouched)

    @property
    def in_features(self) -> int:
        return self.W.shape[1]

    def fed_forward(self, c: int) -> torch.Tensor:
        """What the first c columns' errors have added to the later ones: [out, in - c] (subtracted)."""
        return self.E[:, :c] @ self.U[:c, c:]  # [out, c] @ [c, in - c]

    def weights_at(self, c: int) -> torch.Tensor:
        """The working weights after c columns: quantized [:, :c], compensated rest [:, c:]. [out, in]"""
        return torch.cat([self.Q[:, :c], self.W[:, c:] - self.fed_forward(c)], 1)

    def to_dataframe(self):
        """One row per working column: its original index, errors and the proxy loss after it."""
        import pandas as pd

        return pd.DataFrame(
            {
                "column": range(self.in_features),
                "original_column": self.order.tolist(),
                "outlier": [j < self.outlier_size for j in range(self.in_features)],
                "error_feedback": self.error_feedback.tolist(),
                "error_no_feedback": self.error_no_feedback.tolist(),
                "proxy_loss_feedback": self.proxy_loss_feedback[1:].tolist(),
                "proxy_loss_no_feedback": self.proxy_loss_no_feedback[1:].tolist(),
            }
        )


def _working_hessian(H: torch.Tensor, trace: VPTQTrace) -> torch.Tensor:
    """The undamped H in working space: D H D (normalisation), permuted. [in, in] f64"""
    prep = trace.prepared
    Hw = H.double()
    if prep.scale is not None:
        d = prep.scale.double()  # [in]
        Hw = Hw * d.unsqueeze(0) * d.unsqueeze(1)
    if prep.perm is not None:
        Hw = Hw[prep.perm][:, prep.perm]
    return Hw


def _prefix_loss(G: torch.Tensor, M: torch.Tensor, denom: float) -> torch.Tensor:
    """Entry c = sum of the top-left c x c block of G ∘ M, / denom. G, M [in, in] -> f64 [in + 1]."""
    S = (G * M).cumsum(0).cumsum(1)  # [in, in]
    return torch.cat([S.new_zeros(1), torch.diagonal(S)]) / denom


def column_trace(W: torch.Tensor, H: torch.Tensor, config: VPTQConfig) -> ColumnTrace:
    """Quantize W [out, in] with H [in, in] like :func:`vptq_quantize` and keep the loop per column."""
    qw, trace = quantize_with_trace(W, H, config)
    prep, parts = trace.prepared, trace.parts
    final = quantize_columns(prep, parts, config.blocksize, feedback=True)  # the same pass, replayed
    plain = quantize_columns(prep, parts, feedback=False)
    E = final.residual / torch.diag(prep.U).unsqueeze(0)  # [out, in]
    Hw = _working_hessian(H, trace)
    denom = proxy_loss(W, torch.zeros_like(W), H, relative=False) or 1.0
    Ud, Ed, D0 = prep.U.double(), E.double(), (prep.W - plain.Q).double()
    n = prep.W.shape[1]
    return ColumnTrace(
        qweight=qw,
        trace=trace,
        order=prep.perm if prep.perm is not None else torch.arange(n),
        outlier_size=prep.outlier_size,
        W=prep.W,
        Q=final.Q,
        Q_no_feedback=plain.Q,
        E=E,
        U=prep.U,
        H=Hw,
        error_feedback=(final.residual.double() ** 2).sum(0) * torch.diag(Hw) / denom,
        error_no_feedback=(D0**2).sum(0) * torch.diag(Hw) / denom,
        proxy_loss_feedback=_prefix_loss(Ed.T @ Ed, Ud @ Hw @ Ud.T, denom),
        proxy_loss_no_feedback=_prefix_loss(D0.T @ D0, Hw, denom),
    )
