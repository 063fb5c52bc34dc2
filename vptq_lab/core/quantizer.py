"""VPTQ for one linear: ``vptq_quantize(W, H, config) -> QuantizedWeight``.

The steps (docs/algorithm.md, section 2), each a function you can call alone:

1. :func:`prepare_layer`: per-column normalisation, dead columns, damping,
   act-order, ``U = chol(H^-1)^T``. Everything after works in this
   *working space* (normalised, permuted), where the loss uses ``D H D``.
2. :func:`init_codebooks`: weighted k-means per part (outliers, then groups)
   on all vectors of the part; centroids rounded to fp16 right away, so what
   is stored is what the column loop used.
3. :func:`quantize_columns`: GPTQ's column loop with nearest-centroid VQ
   (or, ``feedback=False``, plain nearest assignment: the paper's ablation).
4. :func:`add_residual_codebooks`: k-means on the first pass's residual, then
   step 3 again from the original W with both codebooks fixed.
5. :func:`pack_layer`: the official layout (``qweight.QuantizedWeight``).

A *vector* is ``v`` consecutive output rows of one input column; rows are
zero-padded to ``R * v`` with ``R = ceil(out / v)``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch

from vptq_lab.core.config import VPTQConfig, layer_plan
from vptq_lab.core.hessian_ops import (
    act_order,
    column_loop,
    condition_hessian,
    inverse_cholesky_upper,
    proxy_loss,
    proxy_losses,
)
from vptq_lab.core.kmeans import CHUNK_BYTES, codebook, nearest_in, weighted_kmeans
from vptq_lab.core.packing import as_int16_bits, index_bits, merge_codes, pack_codes
from vptq_lab.core.qweight import QuantizedWeight, dequantize

__all__ = [
    "Prepared",
    "Part",
    "Pass",
    "VPTQTrace",
    "vptq_quantize",
    "vq_no_feedback",
    "shared_codebooks",
    "quantize_with_trace",
    "kmeans_only_loss",
    "prepare_layer",
    "normalise_columns",
    "column_order",
    "init_codebooks",
    "fit_part_codebook",
    "part_shapes",
    "quantize_columns",
    "add_residual_codebooks",
    "pack_layer",
    "to_vectors",
    "from_vectors",
]


# Data -------------------------------------------------------------------------
@dataclass(frozen=True)
class Prepared:
    """A layer in working space. W [out, in] fp32 and H [in, in] f64 are normalised,
    conditioned and permuted; U [in, in] fp32 or None (no feedback)."""

    W: torch.Tensor
    H: torch.Tensor
    U: torch.Tensor | None
    perm: torch.Tensor | None  # int64 [in]: working column j = original column perm[j]
    scale: torch.Tensor | None  # fp16 [in], original order
    bias: torch.Tensor | None  # fp16 [in], original order
    dead: torch.Tensor  # bool [in], original order
    outlier_size: int
    group_num: int
    group_size: int


@dataclass(frozen=True)
class Part:
    """One codebook region: working columns [start, stop). C [k, v], C_res [k2, v] fp32 (fp16 values)."""

    start: int
    stop: int
    v: int
    C: torch.Tensor
    C_res: torch.Tensor | None = None


@dataclass(frozen=True)
class Pass:
    """One quantization pass in working space: Q [out, in], E [out, in] (loop errors, zeros
    without feedback), residual [out, in] = what the pass left, codes per column j: int64 [R_j]."""

    Q: torch.Tensor
    residual: torch.Tensor
    codes: list[torch.Tensor]
    res_codes: list[torch.Tensor | None]


@dataclass
class VPTQTrace:
    """Intermediate results of one layer, for notebooks: reconstructions in the ORIGINAL space."""

    prepared: Prepared
    parts: list[Part]
    kmeans_only: torch.Tensor | None  # [out, in] codebook init + nearest assignment, no feedback (None: computed
    # by another process, see kmeans_only_loss)
    first_pass: torch.Tensor  # [out, in] main codebook only
    reconstruction: torch.Tensor  # [out, in] final (what dequantize(qw) must give)


# Vectors ----------------------------------------------------------------------
def to_vectors(W: torch.Tensor, v: int) -> torch.Tensor:
    """Columns to vectors: W [out, S] -> X [S * R, v]; vector s*R + r = rows r*v..r*v+v-1 of column s."""
    out, s = W.shape
    r = -(-out // v)
    Wp = torch.nn.functional.pad(W, (0, 0, 0, r * v - out))  # [R * v, S]
    return Wp.reshape(r, v, s).permute(2, 0, 1).reshape(s * r, v)  # [R, v, S] -> [S, R, v] -> [S*R, v]


def from_vectors(X: torch.Tensor, out: int, s: int) -> torch.Tensor:
    """Inverse of :func:`to_vectors`: X [S * R, v] -> W [out, S] (padded rows dropped)."""
    v = X.shape[1]
    r = X.shape[0] // s
    return X.reshape(s, r * v).T[:out]  # [S, R*v] -> [R*v, S] -> [out, S]


# Step 1: working space ----------------------------------------------------------
def normalise_columns(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per input column ``(W - min) / (max - min)``. W [out, in] -> (Wn [out, in], scale fp16 [in], bias fp16 [in]).

    scale and bias are rounded to fp16 first, so ``Wn * scale + bias`` is exact
    to fp32 with the stored values. A constant column gets scale 1.
    """
    lo, hi = W.float().min(0).values, W.float().max(0).values  # [in]
    scale = (hi - lo).half()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # also catches fp16 underflow
    bias = lo.half()
    return (W.float() - bias.float()) / scale.float(), scale, bias


def column_order(H: torch.Tensor, enable_perm: bool, outlier_size: int) -> torch.Tensor | None:
    """Working order of the columns. H [in, in] -> int64 perm [in] or None.

    Act-order when enabled; otherwise, with outliers, only the ``outlier_size``
    largest-``H_jj`` columns move to the front (in index order).
    """
    order = act_order(H)  # [in]
    if enable_perm:
        return order
    if outlier_size == 0:
        return None
    front = torch.sort(order[:outlier_size]).values  # [O]
    rest = torch.ones(H.shape[0], dtype=torch.bool, device=H.device)
    rest[front] = False
    return torch.cat([front, rest.nonzero().flatten()])


def prepare_layer(W: torch.Tensor, H: torch.Tensor, config: VPTQConfig, feedback: bool = True) -> Prepared:
    """Normalise, condition and permute. W [out, in], H [in, in] -> :class:`Prepared`."""
    outlier, groups, size = layer_plan(config, W.shape[1])
    scale = bias = None
    Wn, Hn = W.float(), H.double()
    if config.enable_norm:
        Wn, scale, bias = normalise_columns(W)
        d = scale.double()  # loss in normalised space: dW H dW^T = dWn (D H D) dWn^T
        Hn = Hn * d.unsqueeze(0) * d.unsqueeze(1)  # [in, in]
    Hc, Wc, dead = condition_hessian(Hn, Wn, config.percdamp)
    perm = column_order(Hc, config.enable_perm, outlier)
    if perm is not None:
        Wc, Hc = Wc[:, perm], Hc[perm][:, perm]  # [out, in], [in, in] in working order
    U = inverse_cholesky_upper(Hc) if feedback else None
    return Prepared(Wc, Hc, U, perm, scale, bias, dead, outlier, groups, size)


# Step 2: codebooks --------------------------------------------------------------
def _part_bounds(prep: Prepared, config: VPTQConfig) -> list[tuple[int, int, int, int]]:
    """(start, stop, v, k) per part: the outlier part first (if any), then the groups."""
    bounds = []
    if prep.outlier_size:
        bounds.append((0, prep.outlier_size, config.vector_lens[0], config.num_centroids[0]))
    for g in range(prep.group_num):
        start = prep.outlier_size + g * prep.group_size
        bounds.append((start, start + prep.group_size, config.v, config.k1))
    return bounds


def _fit_codebook(W: torch.Tensor, diag: torch.Tensor, v: int, k: int, seed: int, config: VPTQConfig) -> torch.Tensor:
    """Weighted k-means over the vectors of W [out, S] (weight = H_jj of the column). -> C [k, v] fp16-valued fp32."""
    X = to_vectors(W, v)  # [S * R, v]
    w = diag.float().repeat_interleave(X.shape[0] // W.shape[1])  # [S * R]: column s's weight, R times
    C, _ = weighted_kmeans(X, k, w, seed=seed, iters=config.kmeans_iters, init=config.kmeans_init)
    return C.half().float()  # round now: the loop must use the stored values


def init_codebooks(prep: Prepared, config: VPTQConfig, codebooks: Sequence[torch.Tensor] | None = None) -> list[Part]:
    """Weighted k-means codebook per part (no residual yet); ``codebooks`` [k, v] per part: use these instead
    (shared codebooks, :func:`shared_codebooks`)."""
    diag = torch.diag(prep.H)  # [in]
    bounds = _part_bounds(prep, config)
    if codebooks is not None and [tuple(C.shape) for C in codebooks] != [(k, v) for _, _, v, k in bounds]:
        raise ValueError(
            f"codebooks of shapes {[tuple(C.shape) for C in codebooks]} do not fit this layer's parts "
            f"{[(k, v) for _, _, v, k in bounds]} (one [k, v] codebook per part, the outlier part first)"
        )
    parts = []
    for i, (start, stop, v, k) in enumerate(bounds):
        if codebooks is not None:
            C = codebooks[i].float()
        else:
            C = _fit_codebook(prep.W[:, start:stop], diag[start:stop], v, k, config.seed + i, config)
        parts.append(Part(start, stop, v, C))
    return parts


def fit_part_codebook(prep: Prepared, config: VPTQConfig, i: int) -> torch.Tensor:
    """The k-means codebook [k, v] of part ``i`` alone (what :func:`init_codebooks` fits for it), so the parts of
    several linears can be fitted by different processes; pass them back through ``codebooks=``."""
    start, stop, v, k = _part_bounds(prep, config)[i]
    diag = torch.diag(prep.H)[start:stop]  # [S]
    return _fit_codebook(prep.W[:, start:stop], diag, v, k, config.seed + i, config)


def part_shapes(config: VPTQConfig, in_features: int) -> list[tuple[int, int, int]]:
    """``(columns, v, k)`` per codebook part of a linear with ``in_features`` inputs, the outlier part first."""
    outlier, groups, size = layer_plan(config, in_features)
    head = [(outlier, config.vector_lens[0], config.num_centroids[0])] if outlier else []
    return head + [(size, config.v, config.k1)] * groups


def shared_codebooks(layers: Sequence[tuple[torch.Tensor, torch.Tensor]], config: VPTQConfig) -> list[torch.Tensor]:
    """One codebook per part for several linears: a weighted k-means over the union of their vectors.

    ``layers``: ``(W [out, in], H [in, in])`` pairs, prepared as :func:`vptq_quantize` prepares them (normalisation,
    damping, act-order). A vector's weight is its column's ``H_jj`` divided by the mean of its layer's diag H, so each
    linear counts by its size, not by the scale of its inputs. Returns ``[k, v]`` per part (the outlier part first),
    rounded to fp16 values, for ``vptq_quantize(..., codebooks=...)``.
    """
    preps = [prepare_layer(W, H, config, feedback=False) for W, H in layers]
    bounds = [_part_bounds(prep, config) for prep in preps]
    if len({len(b) for b in bounds}) != 1:
        raise ValueError("these layers split into different numbers of parts (outliers, groups): they cannot share")
    codebooks = []
    for i in range(len(bounds[0])):
        vectors, weights = [], []
        for prep, b in zip(preps, bounds):
            start, stop, v, k = b[i]
            diag = torch.diag(prep.H)[start:stop]  # [S]
            X = to_vectors(prep.W[:, start:stop], v)  # [S * R, v]
            weights.append((diag / diag.mean()).float().repeat_interleave(X.shape[0] // (stop - start)))  # [S * R]
            vectors.append(X)
        C, _ = weighted_kmeans(
            torch.cat(vectors),
            k,
            torch.cat(weights),
            seed=config.seed + i,
            iters=config.kmeans_iters,
            init=config.kmeans_init,
        )
        codebooks.append(C.half().float())  # round now: the loops must use the stored values
    return codebooks


# Step 3: the column loop ---------------------------------------------------------
class _ColumnVQ:
    """Per-column quantizer for :func:`column_loop`: nearest centroid, then nearest residual
    centroid of what is left. Records the codes of every column it sees (local state only)."""

    def __init__(self, parts: list[Part], out: int):
        self.out = out
        self.parts = parts
        self.part_of = [i for i, p in enumerate(parts) for _ in range(p.start, p.stop)]  # [in]
        self.main = [codebook(p.C) for p in parts]
        self.res = [codebook(p.C_res) if p.C_res is not None else None for p in parts]
        self.scratch = torch.empty(0)  # one search's distances, reused: a fresh [R, k] tensor per column is slow
        self.codes: dict[int, torch.Tensor] = {}
        self.res_codes: dict[int, torch.Tensor | None] = {}

    def encode(self, X: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Vectors X [m, v] of part i -> (reconstruction [m, v], codes [m], residual codes [m] or None)."""
        p = self.parts[i]
        idx = nearest_in(X, self.main[i], buf=self._scratch(X))  # [m]
        q = p.C[idx]  # [m, v]
        ridx = None
        if self.res[i] is not None:
            ridx = nearest_in(X - q, self.res[i], buf=self._scratch(X))  # [m]
            q = q + p.C_res[ridx]
        return q, idx, ridx

    def _scratch(self, X: torch.Tensor) -> torch.Tensor:
        if self.scratch.device != X.device or not self.scratch.numel():
            self.scratch = torch.empty(CHUNK_BYTES // 4, dtype=torch.float32, device=X.device)
        return self.scratch

    def __call__(self, w: torch.Tensor, j: int) -> torch.Tensor:
        i = self.part_of[j]
        x = torch.nn.functional.pad(w, (0, -w.shape[0] % self.parts[i].v)).reshape(-1, self.parts[i].v)  # [R, v]
        q, self.codes[j], self.res_codes[j] = self.encode(x, i)
        return q.reshape(-1)[: self.out]  # [out]

    def all_columns(self, W: torch.Tensor) -> torch.Tensor:
        """Every column of W [out, in] quantized as it is (no feedback), one search per part -> Q [out, in]."""
        Q = torch.empty_like(W)
        for i, p in enumerate(self.parts):
            X = to_vectors(W[:, p.start : p.stop], p.v)  # [S * R, v]: column by column
            q, idx, ridx = self.encode(X, i)
            Q[:, p.start : p.stop] = from_vectors(q, self.out, p.stop - p.start)
            for s, codes in enumerate(idx.view(p.stop - p.start, -1)):  # [S, R]
                self.codes[p.start + s] = codes
            for s in range(p.stop - p.start):
                self.res_codes[p.start + s] = None if ridx is None else ridx.view(p.stop - p.start, -1)[s]
        return Q


def _quantize_columns_once(W: torch.Tensor, parts: list[Part]) -> tuple[torch.Tensor, _ColumnVQ]:
    """No feedback: every column quantized as it is. W [out, in] -> Q [out, in]."""
    vq = _ColumnVQ(parts, W.shape[0])
    return vq.all_columns(W), vq


def quantize_columns(prep: Prepared, parts: list[Part], blocksize: int = 128, feedback: bool = True) -> Pass:
    """Quantize all working columns with fixed codebooks, with (GPTQ loop) or without feedback."""
    if feedback:
        if prep.U is None:
            raise ValueError("feedback=True needs prep.U; call prepare_layer(..., feedback=True)")
        vq = _ColumnVQ(parts, prep.W.shape[0])
        Q, E = column_loop(prep.W, prep.U, vq, blocksize)
        residual = E * torch.diag(prep.U).unsqueeze(0)  # [out, in]: updated column minus its code
    else:
        Q, vq = _quantize_columns_once(prep.W, parts)
        residual = prep.W - Q
    n = prep.W.shape[1]
    return Pass(Q, residual, [vq.codes[j] for j in range(n)], [vq.res_codes[j] for j in range(n)])


# Step 4: residual ----------------------------------------------------------------
def add_residual_codebooks(prep: Prepared, parts: list[Part], first: Pass, config: VPTQConfig) -> list[Part]:
    """Fit a k2 codebook per group on ``first.residual`` (weights H_jj, one per vector). Outliers get none."""
    diag = torch.diag(prep.H)  # [in]
    out = []
    for i, p in enumerate(parts):
        if p.start < prep.outlier_size:  # the outlier part
            out.append(p)
            continue
        seed = config.seed + 1000 + i
        C_res = _fit_codebook(first.residual[:, p.start : p.stop], diag[p.start : p.stop], p.v, config.k2, seed, config)
        out.append(replace(p, C_res=C_res))
    return out


# Step 5: pack ---------------------------------------------------------------------
def _group_codes(codes: list[torch.Tensor], prep: Prepared) -> torch.Tensor:
    """Per-column codes [R] of the groups -> [G, R, S]."""
    cols = torch.stack(codes[prep.outlier_size :], 1)  # [R, G * S]
    return cols.reshape(cols.shape[0], prep.group_num, prep.group_size).permute(1, 0, 2)  # [R, G, S] -> [G, R, S]


def pack_layer(prep: Prepared, parts: list[Part], final: Pass, config: VPTQConfig) -> QuantizedWeight:
    """Codes and codebooks -> :class:`QuantizedWeight` in the official layout."""
    out_f, in_f = prep.W.shape
    groups = parts[1:] if prep.outlier_size else parts
    b1 = index_bits(config.k1)
    idx = _group_codes(final.codes, prep)  # [G, R, S]
    res = _group_codes(final.res_codes, prep) if config.k2 else None  # [G, R, S]
    merged = merge_codes(idx, res, b1)  # [G, R, S]
    outlier = {}
    if prep.outlier_size:
        o = parts[0]
        oidx = torch.stack(final.codes[: prep.outlier_size], 1).unsqueeze(0)  # [1, R0, O]
        outlier = dict(outlier_centroids=o.C.half().reshape(1, -1), outlier_indices=as_int16_bits(oidx))
    return QuantizedWeight(
        out_features=out_f,
        in_features=in_f,
        vector_len=config.v,
        num_centroids=config.k1,
        num_res_centroids=config.k2,
        group_num=prep.group_num,
        group_size=prep.group_size,
        outlier_size=prep.outlier_size,
        outlier_vector_len=config.vector_lens[0] if prep.outlier_size else 0,
        outlier_num_centroids=config.num_centroids[0] if prep.outlier_size else 0,
        centroids=torch.stack([p.C.half().reshape(-1) for p in groups]),  # [G, k1 * v]
        indices=pack_codes(merged, b1 + index_bits(config.k2)),  # [G, R, words]
        res_centroids=torch.stack([p.C_res.half().reshape(-1) for p in groups]) if config.k2 else None,
        perm=as_int16_bits(prep.perm) if prep.perm is not None else None,
        weight_scale=prep.scale,
        weight_bias=prep.bias,
        **outlier,
    )


# Driver ---------------------------------------------------------------------------
def to_original(Q: torch.Tensor, prep: Prepared) -> torch.Tensor:
    """Working-space weights [out, in] -> original column order and scale."""
    if prep.perm is not None:
        Q = Q[:, torch.argsort(prep.perm)]
    if prep.scale is not None:
        Q = Q * prep.scale.float() + prep.bias.float()
    return Q


@contextlib.contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0


def _utilisation(codes: list[torch.Tensor | None], parts: list[Part], residual: bool = False) -> list[float]:
    """Fraction of each part's centroids that some vector uses."""
    used = []
    for p in parts:
        C = p.C_res if residual else p.C
        if C is None:
            continue
        cols = [c for c in codes[p.start : p.stop] if c is not None]
        used.append(torch.cat(cols).unique().numel() / C.shape[0] if cols else 0.0)
    return used


def quantize_with_trace(
    W: torch.Tensor,
    H: torch.Tensor,
    config: VPTQConfig,
    feedback: bool = True,
    codebooks: Sequence[torch.Tensor] | None = None,
    kmeans_only_loss: Callable[[], float] | None = None,
    prepared: Prepared | None = None,
) -> tuple[QuantizedWeight, VPTQTrace]:
    """:func:`vptq_quantize` that also returns the intermediate results (:class:`VPTQTrace`)."""
    if kmeans_only_loss is not None and not feedback:
        raise ValueError(
            "kmeans_only_loss= needs feedback=True: without feedback the k-means-only pass is the result itself"
        )
    if prepared is not None and (tuple(prepared.W.shape) != tuple(W.shape) or (feedback and prepared.U is None)):
        raise ValueError(
            "prepared= must be prepare_layer(W, H, config, feedback) of this W (with feedback=True, it holds U)"
        )
    seconds: dict[str, float] = {}
    with _timed(seconds, "prepare"):
        prep = prepared if prepared is not None else prepare_layer(W, H, config, feedback)
    with _timed(seconds, "kmeans"):
        parts = init_codebooks(prep, config, codebooks)
    kmeans_only = None
    if kmeans_only_loss is None:
        with _timed(seconds, "kmeans_only_assign"):
            kmeans_only = quantize_columns(prep, parts, feedback=False)
    first = kmeans_only
    if feedback:
        with _timed(seconds, "column_loop"):
            first = quantize_columns(prep, parts, config.blocksize, feedback=True)
    final = first
    if config.k2:
        with _timed(seconds, "residual"):
            parts = add_residual_codebooks(prep, parts, first, config)
            final = quantize_columns(prep, parts, config.blocksize, feedback)
    with _timed(seconds, "pack"):
        qw = pack_layer(prep, parts, final, config)
    assert first is not None and final is not None
    kmeans_only_q = to_original(kmeans_only.Q, prep) if kmeans_only is not None else None
    trace = VPTQTrace(prep, parts, kmeans_only_q, to_original(first.Q, prep), to_original(final.Q, prep))
    qw.info.update(_info(W, H, qw, trace, final, feedback, seconds, kmeans_only_loss))
    return qw, trace


def kmeans_only_loss(
    W: torch.Tensor, H: torch.Tensor, config: VPTQConfig, codebooks: Sequence[torch.Tensor] | None = None
) -> float:
    """``info["proxy_loss_rel_kmeans_only"]`` of :func:`vptq_quantize` alone (the same bits): the relative proxy loss
    of the nearest-centroid reconstruction without feedback. Another process can compute it while the first runs
    the column loop, and hand it over through ``vptq_quantize(..., kmeans_only_loss=)``."""
    prep = prepare_layer(W, H, config, feedback=False)
    parts = init_codebooks(prep, config, codebooks)
    return proxy_loss(W, to_original(quantize_columns(prep, parts, feedback=False).Q, prep), H)


def _info(
    W: torch.Tensor,
    H: torch.Tensor,
    qw: QuantizedWeight,
    trace: VPTQTrace,
    final: Pass,
    feedback: bool,
    seconds: dict[str, float],
    kmeans_only_loss: Callable[[], float] | None = None,
) -> dict:
    parts, prep = trace.parts, trace.prepared
    groups = parts[1:] if prep.outlier_size else parts
    reconstructions = [dequantize(qw), trace.first_pass]
    if trace.kmeans_only is not None:
        reconstructions.append(trace.kmeans_only)
    losses = proxy_losses(W, reconstructions, H)  # tr(W H W^T) once for all three
    if trace.kmeans_only is not None:
        kmeans_only = losses[2]
    else:
        assert kmeans_only_loss is not None
        kmeans_only = kmeans_only_loss()
    info = {
        "proxy_loss_rel": losses[0],
        "proxy_loss_rel_first_pass": losses[1],
        "proxy_loss_rel_kmeans_only": kmeans_only,
        "codebook_utilisation": _mean(_utilisation(final.codes, groups)),
        "feedback": feedback,
        "dead_columns": int(prep.dead.sum()),
        "hessian_all_zero": bool(prep.dead.all()),
        "seconds": seconds,
    }
    if qw.num_res_centroids:
        info["res_codebook_utilisation"] = _mean(_utilisation(final.res_codes, groups, residual=True))
    if prep.outlier_size:
        info["outlier_codebook_utilisation"] = _mean(_utilisation(final.codes, parts[:1]))
    return info


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def vptq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    config: VPTQConfig,
    feedback: bool = True,
    codebooks: Sequence[torch.Tensor] | None = None,
    kmeans_only_loss: Callable[[], float] | None = None,
    prepared: Prepared | None = None,
) -> QuantizedWeight:
    """Quantize one linear with VPTQ. W [out, in], H [in, in] -> :class:`QuantizedWeight`.

    Pure: W and H are not modified; nothing is printed. ``qw.info`` holds the
    relative proxy losses (final, first pass, k-means only), codebook
    utilisation and seconds per step. ``feedback=False`` is plain weighted
    k-means VQ (no second-order column loop) with the same v and k. ``codebooks``: fixed codebooks (one
    ``[k, v]`` per part, e.g. :func:`shared_codebooks`) in place of this layer's own k-means.
    ``kmeans_only_loss`` (with feedback): a callable giving ``info["proxy_loss_rel_kmeans_only"]`` computed
    elsewhere (:func:`kmeans_only_loss` in another process); the k-means-only pass is then skipped here.
    ``prepared``: :func:`prepare_layer` ``(W, H, config, feedback)`` computed already (it is not computed again).
    """
    return quantize_with_trace(W, H, config, feedback, codebooks, kmeans_only_loss, prepared)[0]


def vq_no_feedback(
    W: torch.Tensor,
    H: torch.Tensor,
    config: VPTQConfig,
    codebooks: Sequence[torch.Tensor] | None = None,
    prepared: Prepared | None = None,
) -> QuantizedWeight:
    """Baseline: weighted k-means VQ with nearest assignment, no second-order feedback."""
    return vptq_quantize(W, H, config, feedback=False, codebooks=codebooks, prepared=prepared)
