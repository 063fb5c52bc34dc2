"""`QuantizedLinear`: a drop-in for nn.Linear (and GPT-2's Conv1D) backed by a QuantizedWeight."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import torch
from torch import nn

from vptq_lab.core.format import layer_config
from vptq_lab.core.packing import as_int16_bits, merge_codes, pack_codes
from vptq_lab.core.qweight import QuantizedWeight, dequantize
from vptq_lab.core.reencode import ReencodeResult, reencode

__all__ = ["QuantizedLinear", "module_tensors", "is_quantized"]

_TENSOR_FIELDS = tuple(f.name for f in fields(QuantizedWeight) if f.type.startswith("torch.Tensor"))


class QuantizedLinear(nn.Module):
    """``y = x Wᵀ + b`` with W held as a :class:`QuantizedWeight`.

    The format tensors are buffers (so ``.to(device)`` moves them); ``self.qweight``
    is one stable object, so the dispatcher's dense-weight cache stays valid
    between calls. For layer-wise fine-tuning, :meth:`trainable_centroids` exposes
    fp32 copies of the codebooks whose gradients flow through the dequantization.
    """

    def __init__(self, qweight: QuantizedWeight, bias: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features = qweight.in_features, qweight.out_features
        for name in _TENSOR_FIELDS:
            self.register_buffer(name, getattr(qweight, name))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self._meta = {f.name: getattr(qweight, f.name) for f in fields(qweight) if f.name not in _TENSOR_FIELDS}
        # Fine-tuning parameters live outside the module tree: they never reach state_dict or repr.
        self.__dict__["_trainable"] = None
        self.__dict__["_codes"] = None  # during fine-tuning: qweight.codes(), unpacked once, stored compact
        self.__dict__["_target"] = None  # during fine-tuning with code updates: the straight-through displacement
        self._rebuild()

    def _rebuild(self) -> None:
        self.qweight = QuantizedWeight(**self._meta, **{n: getattr(self, n) for n in _TENSOR_FIELDS})

    def _apply(self, fn, recurse=True):
        module = super()._apply(fn, recurse)
        if self._codes is not None:  # moved with the layer during a fine-tuning run (integer: dtype casts skip it)
            self.__dict__["_codes"] = tuple(None if c is None else c.to(self.indices.device) for c in self._codes)
        if self._target is not None:
            self._target.data = self._target.data.to(self.indices.device)
        self._rebuild()
        return module

    def extra_repr(self) -> str:
        qw = self.qweight
        b1, b2 = qw.index_bits
        return (
            f"in={self.in_features}, out={self.out_features}, v={qw.vector_len}, k1={qw.num_centroids}, "
            f"k2={qw.num_res_centroids}, outliers={qw.outlier_size}, groups={qw.group_num}, index_bits={b1 + b2}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._trainable is not None:
            return _RecomputedLinear.apply(x, self.bias, self, *self._trainable.values())
        from vptq_lab.kernels.dispatch import vq_linear

        return vq_linear(x, self.qweight, self.bias)

    # Layer-wise fine-tuning ----------------------------------------------------
    _CODEBOOKS = ("centroids", "res_centroids", "outlier_centroids")
    _COLUMN_NORM = ("weight_scale", "weight_bias")

    def trainable_centroids(self, column_norm: bool = False) -> list[nn.Parameter]:
        """Start fine-tuning: fp32 codebook parameters that the forward pass differentiates through.

        ``column_norm``: also ``weight_scale`` and ``weight_bias`` (when the layer has them, ``enable_norm``).
        """
        from vptq_lab.kernels.dispatch import drop_dense_weight

        # the dense fp32 weight an earlier forward cached (the quantizer's propagation fills it for every layer, 0.42
        # GB on the default model) is not read while training: free it for the run
        drop_dense_weight(self.qweight)
        names = self._CODEBOOKS + (self._COLUMN_NORM if column_norm else ())
        self.__dict__["_trainable"] = {
            name: nn.Parameter(getattr(self, name).float().clone()) for name in names if getattr(self, name) is not None
        }
        self._keep_codes(*self.qweight.codes())  # unpacked once for the run (they change only by set_codes)
        return list(self._trainable.values())

    def _keep_codes(self, idx: torch.Tensor, res_idx: torch.Tensor | None) -> None:
        """Keep the unpacked codes for the run in the narrowest integer type that holds them: int16 for up to
        32,768 centroids (the presets' 512 included) instead of int64, a quarter of the memory (0.15 GB for the
        2-bit default model, more for a mixed one with residual codes). The gathers widen one layer at a time."""

        def narrow(c: torch.Tensor | None, k: int) -> torch.Tensor | None:
            return None if c is None else c.to(torch.int16 if k <= 2**15 else torch.int32)

        qw = self.qweight
        self.__dict__["_codes"] = (narrow(idx, qw.num_centroids), narrow(res_idx, max(qw.num_res_centroids, 0)))

    @property
    def trainable(self) -> dict[str, nn.Parameter]:
        """The parameters of the fine-tuning in progress (name -> fp32 parameter), empty outside one."""
        return dict(self._trainable or {})

    def straight_through_target(self) -> nn.Parameter:
        """Start code updates (during a fine-tuning run): the straight-through displacement, an fp32 [out, in]
        parameter that starts at zero and receives, in backward, the gradient w.r.t. the dequantized weight. An
        optimizer moves it; :meth:`reencode_codes` then moves the codes towards the weight as it is now plus
        this displacement (so the target follows the codebooks as they train)."""
        if self._trainable is None:
            raise RuntimeError("straight_through_target() needs a fine-tuning run: call trainable_centroids() first")
        self.__dict__["_target"] = nn.Parameter(torch.zeros(self.out_features, self.in_features))
        return self._target

    def reencode_codes(self, max_fraction: float) -> ReencodeResult:
        """New codes towards the weight plus its straight-through displacement, the trained codebooks as they are
        now (at most ``max_fraction`` of the vectors change; see :func:`vptq_lab.core.reencode.reencode`). What a
        new code realises leaves the displacement: it keeps the rest, target minus the new weight."""
        values = [p.detach() for p in self._trainable.values()]
        target = self._dequantize_trainable(values) + self._target.detach()  # [out, in]
        qw = replace(self.qweight, **dict(zip(self._trainable, values)))
        found = reencode(qw, tuple(None if c is None else c.long() for c in self._codes), target, max_fraction)
        self.set_codes(found.idx, found.res_idx, found.outlier_idx)
        self._target.data = target - self._dequantize_trainable(values)
        return found

    def set_codes(self, idx: torch.Tensor, res_idx: torch.Tensor | None, outlier_idx: torch.Tensor | None) -> None:
        """Replace the codes (unpacked int64: [G, R, S] each, and [1, R0, O] for the outliers): the packed
        buffers in the official layout and, during fine-tuning, the unpacked copy the forward pass reads."""
        b1, b2 = self.qweight.index_bits
        with torch.no_grad():
            self.indices = pack_codes(merge_codes(idx, res_idx, b1), b1 + b2).to(self.indices.device)
            if outlier_idx is not None:
                self.outlier_indices = as_int16_bits(outlier_idx).to(self.outlier_indices.device)
        self._rebuild()
        if self._codes is not None:
            self._keep_codes(idx, res_idx)

    def set_packed_codes(self, indices: torch.Tensor, outlier_indices: torch.Tensor | None) -> None:
        """Replace the codes from their stored form (the ``indices`` and ``outlier_indices`` buffers' layout, as
        :meth:`set_codes` leaves them); during fine-tuning the unpacked copy follows."""
        with torch.no_grad():
            self.indices = indices.to(self.indices.device)
            if outlier_indices is not None:
                self.outlier_indices = outlier_indices.to(self.outlier_indices.device)
        self._rebuild()
        if self._codes is not None:
            self._keep_codes(*self.qweight.codes())

    def _dequantize_trainable(self, values: list[torch.Tensor]) -> torch.Tensor:
        """fp32 W [out, in] from the trainable tensors' ``values`` (in ``self._trainable``'s order)."""
        return dequantize(replace(self.qweight, **dict(zip(self._trainable, values))), self._codes)

    def commit_centroids(self) -> None:
        """End fine-tuning: store the trained codebooks back in fp16 (indices are unchanged)."""
        with torch.no_grad():
            for name, param in self._trainable.items():
                setattr(self, name, param.detach().to(getattr(self, name).dtype))
        self.__dict__["_trainable"] = None
        self.__dict__["_codes"] = None
        self.__dict__["_target"] = None
        self._rebuild()


class _RecomputedLinear(torch.autograd.Function):
    """``x Wᵀ + b`` with W dequantized from the trainable codebooks, kept neither for the backward pass nor after:
    backward dequantizes it again. Autograd through ``F.linear(x, dequantize(...))`` would keep every layer's fp32 W
    (and the unpacked indices of its gathers) from the forward pass to the backward pass: for the default 135M model
    about 0.6 GB more at the peak of each fine-tuning step, for one more dequantization per layer and step."""

    @staticmethod
    def forward(ctx, x, bias, layer, *params):
        ctx.layer = layer
        ctx.save_for_backward(x, *params)
        w = layer._dequantize_trainable(params)  # [out, in] fp32, no graph
        return nn.functional.linear(x, w.to(x.dtype), bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, *params = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [p.detach().requires_grad_(True) for p in params]
            w = ctx.layer._dequantize_trainable(leaves)  # [out, in]
            grad_w = grad_out.reshape(-1, grad_out.shape[-1]).T.to(w.dtype) @ x.reshape(-1, x.shape[-1]).to(w.dtype)
            grads = torch.autograd.grad(w, leaves, grad_w, allow_unused=True)
        target = ctx.layer._target
        if target is not None:  # code updates: the straight-through displacement takes the gradient w.r.t. W
            grad_w = grad_w.detach()  # a new tensor: no copy needed
            target.grad = grad_w if target.grad is None else target.grad + grad_w
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        grad_x = (grad_out.to(w.dtype) @ w).to(x.dtype) if ctx.needs_input_grad[0] else None
        grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(0) if ctx.needs_input_grad[1] else None
        return grad_x, grad_b, None, *grads


def module_tensors(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """A module's tensors, its QuantizedLinear layers under their official names, and those layers' configs."""
    layers = {name: m for name, m in module.named_modules() if isinstance(m, QuantizedLinear)}
    tensors = {k: v for k, v in module.state_dict().items() if k.rpartition(".")[0] not in layers}
    configs = {}
    for name, layer in layers.items():
        configs[name] = layer_config(layer.qweight, layer.bias is not None)
        tensors.update({f"{name}.{k}": v for k, v in layer.qweight.tensors().items()})
        if layer.bias is not None:
            tensors[f"{name}.bias"] = layer.bias.detach()
    return tensors, configs


def is_quantized(module: nn.Module) -> bool:
    """A linear that a quantization has already replaced (QuantizedLinear) or rewritten (scalar baselines)."""
    return isinstance(module, QuantizedLinear) or hasattr(module, "vptq_lab_method")
