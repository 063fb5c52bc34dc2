"""Second-order building blocks shared by VPTQ and a scalar GPTQ baseline.

Each function is pure (inputs are never mutated) and can be called alone:

- :func:`proxy_loss`: ``tr(dW H dW^T)`` (optionally relative to ``tr(W H W^T)``)
- :func:`condition_hessian`: dead columns and damping
- :func:`act_order`: columns by descending ``diag H``
- :func:`inverse_cholesky_upper`: ``U`` with ``U^T U = H^-1`` (GPTQ's ``Hinv``)
- :func:`column_loop`: GPTQ's column loop with lazy block updates, generic over
  a per-column quantizer callback.

Worked 2x2 example of the loop's feedback: with ``H = [[1, .9], [.9, 1]]`` the
inputs are strongly correlated, so the rounding error of column 0 is pushed
onto column 1 (``w1 -= err0 * U[0, 1]``), which cancels most of its effect on
the output.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

__all__ = ["proxy_loss", "proxy_losses", "condition_hessian", "act_order", "inverse_cholesky_upper", "column_loop"]

log = logging.getLogger(__name__)

ColumnQuantizer = Callable[[torch.Tensor, int], torch.Tensor]  # (w_col [out], j) -> q_col [out]


def proxy_loss(W: torch.Tensor, Wq: torch.Tensor, H: torch.Tensor, relative: bool = True) -> float:
    """``tr((W - Wq) H (W - Wq)^T)``, divided by ``tr(W H W^T)`` when ``relative``.

    W, Wq: [out, in]; H: [in, in]. Computed in float64: a sum per row, then ``math.fsum`` of the rows (exactly
    rounded), so the value does not depend on how many threads split the reduction.
    """
    if not relative:
        return _quadratic(W.double() - Wq.double(), H.double())
    return proxy_losses(W, [Wq], H)[0]


def proxy_losses(W: torch.Tensor, reconstructions: list[torch.Tensor], H: torch.Tensor) -> list[float]:
    """:func:`proxy_loss` (relative) of several reconstructions of the same W, ``tr(W H W^T)`` formed once."""
    Wd, Hd = W.double(), H.double()
    den = _quadratic(Wd, Hd)
    out = []
    for Wq in reconstructions:
        num = _quadratic(Wd - Wq.double(), Hd)
        out.append(num / den if den != 0 else (0.0 if num == 0 else float("inf")))
    return out


def _quadratic(A: torch.Tensor, H: torch.Tensor) -> float:
    """``tr(A H A^T)`` of float64 A [out, in] and H [in, in]: row sums, then ``math.fsum``."""
    return math.fsum(((A @ H) * A).sum(dim=1).tolist())


def condition_hessian(
    H: torch.Tensor, W: torch.Tensor, percdamp: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dead columns and damping, GPTQ style. Returns new ``(H' [in, in] f64, W' [out, in], dead [in] bool)``.

    Dead columns (``H_jj == 0``: the input is always zero) get ``H_jj = 1`` and
    a zero weight column. Then ``percdamp * mean(diag H)`` is added to the
    diagonal. An all-zero H becomes ``(1 + percdamp) I``; ``dead.all()`` flags it.
    """
    Hc = H.double().clone()  # [in, in]
    dead = torch.diag(Hc) == 0  # [in]
    Hc[dead, dead] = 1.0
    Wc = W.clone()
    Wc[:, dead] = 0
    damp = percdamp * torch.diag(Hc).mean()
    Hc.diagonal().add_(damp)
    return Hc, Wc, dead


def act_order(H: torch.Tensor) -> torch.Tensor:
    """Column order by descending ``diag H`` (ties keep index order). H [in, in] -> int64 perm [in]."""
    return torch.sort(torch.diag(H), descending=True, stable=True).indices


def inverse_cholesky_upper(H: torch.Tensor, max_tries: int = 5) -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``H^-1`` (``U^T U = H^-1``), as fp32 [in, in].

    Computed in float64. If H is not positive definite, retries with 10x more
    damping each time (starting at 1e-4 mean diag), then raises ValueError.
    """
    Hd = H.double()
    if not torch.isfinite(Hd).all():
        raise ValueError(
            "the Hessian contains NaN or inf (the calibration activations overflowed): "
            "run the model in float32 and check the calibration data"
        )
    base = torch.diag(Hd).abs().mean().clamp_min(1e-12)
    damp = 0.0
    for attempt in range(max_tries + 1):
        Hk = Hd + damp * torch.eye(Hd.shape[0], dtype=Hd.dtype, device=Hd.device)
        L, info = torch.linalg.cholesky_ex(Hk)
        if info == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if info == 0:
                if damp:
                    log.warning("H was not positive definite; added %.3g to its diagonal", damp)
                return U.float()
        damp = float(base) * 1e-4 * 10**attempt
    raise ValueError(
        f"Hessian is not positive definite even with {damp:.3g} added to the diagonal; "
        f"raise percdamp or collect more calibration samples"
    )


def column_loop(
    W: torch.Tensor, U: torch.Tensor, quantize_column: ColumnQuantizer, blocksize: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ's column loop with lazy block updates, generic over ``quantize_column``.

    W: [out, in] (already permuted); U: [in, in] upper factor of H^-1.
    ``quantize_column(w_col [out], j) -> q_col [out]`` quantizes the *updated*
    column j. Returns ``(Q [out, in], E [out, in])`` with ``E[:, j] = (w_j - q_j) / U_jj``;
    ``E[:, j] * U_jj`` is the residual of the column actually quantized.
    """
    W = W.float().clone()  # [out, in]: the running, error-updated weights
    U = U.float()
    Q, E = torch.zeros_like(W), torch.zeros_like(W)
    n = W.shape[1]
    for i1 in range(0, n, blocksize):
        i2 = min(i1 + blocksize, n)
        Q[:, i1:i2], E[:, i1:i2] = _block(W[:, i1:i2], U[i1:i2, i1:i2], quantize_column, i1)
        W[:, i2:] -= E[:, i1:i2] @ U[i1:i2, i2:]  # lazy update of the later blocks
    return Q, E


def _block(
    W1: torch.Tensor, U1: torch.Tensor, quantize_column: ColumnQuantizer, offset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One block: W1 [out, b], U1 [b, b] -> (Q1, E1) [out, b]. Updates within the block eagerly."""
    W1 = W1.clone()
    Q1, E1 = torch.zeros_like(W1), torch.zeros_like(W1)
    for i in range(W1.shape[1]):
        q = quantize_column(W1[:, i], offset + i)  # [out]
        err = (W1[:, i] - q) / U1[i, i]  # [out]
        W1[:, i:].addr_(err, U1[i, i:], alpha=-1.0)  # W1[:, i:] -= err (x) U1[i, i:], [out, b - i]
        Q1[:, i], E1[:, i] = q, err
    return Q1, E1
