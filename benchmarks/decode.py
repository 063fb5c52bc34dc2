"""Decode tokens/s of a LLaMA-2-7B-shaped decoder whose linears are VQ weights, vs fp16.

    python benchmarks/decode.py              # on a GPU machine (7B shapes, 256 new tokens)
    python benchmarks/decode.py --cpu-smoke  # tiny decoder on CPU, checks the script only

A minimal hand-written decoder (embedding, 32 blocks of RoPE attention with a
static KV cache and a SwiGLU MLP, fp16 lm_head) generates greedily from a
1-token prompt, as in the VPTQ paper's table (docs/algorithm.md, Published numbers). Every
block linear is ``vq_linear`` on a random ``QuantizedWeight`` (speed does not
depend on the codes), or ``F.linear`` on a dense fp16 weight for the baseline.
Each model runs eagerly and, on GPU, as one CUDA graph per decode step.
Results go to ``benchmarks/results/decode.{json,csv}``.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from _bench import parse_args, write_results

LLAMA2_7B = dict(hidden=4096, inter=11008, heads=32, layers=32, vocab=32000)
TINY = dict(hidden=64, inter=172, heads=4, layers=2, vocab=128)
BITS = {"2bit_v8_k65536": dict(v=8, k1=65536), "3bit_v8_k65536_k256": dict(v=8, k1=65536, k2=256)}
TINY_BITS = {"2bit_v8_k256": dict(v=8, k1=256)}


class Linear(nn.Module):
    """A bias-free linear: dense ``weight [out, in]`` or a VQ weight through ``vq_linear``."""

    def __init__(self, out: int, inp: int, dtype: torch.dtype, device: str, vq: dict | None, seed: int) -> None:
        super().__init__()
        from vptq_lab.kernels.testing import random_qweight

        self.qw = random_qweight(out, inp, codebook_dtype=dtype, device=device, seed=seed, **vq) if vq else None
        dense = None if vq else torch.randn(out, inp, device=device, dtype=dtype) * inp**-0.5
        self.weight = None if dense is None else nn.Parameter(dense, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from vptq_lab.kernels import vq_linear

        return F.linear(x, self.weight) if self.qw is None else vq_linear(x, self.qw)

    def nbytes(self) -> int:
        if self.qw is None:
            return self.weight.numel() * self.weight.element_size()
        return sum(t.numel() * t.element_size() for t in self.qw.tensors().values())


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [1, H, 1, hd]; cos, sin [1, hd/2] (half-split rotary embedding)."""
    x1, x2 = x.chunk(2, dim=-1)  # [1, H, 1, hd/2] each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Block(nn.Module):
    def __init__(self, cfg: dict, max_len: int, dtype: torch.dtype, device: str, vq: dict | None, seed: int) -> None:
        super().__init__()
        h, inter = cfg["hidden"], cfg["inter"]
        self.heads, self.hd = cfg["heads"], h // cfg["heads"]
        shapes = {
            "q": (h, h),
            "k": (h, h),
            "v": (h, h),
            "o": (h, h),
            "gate": (inter, h),
            "up": (inter, h),
            "down": (h, inter),
        }
        self.lin = nn.ModuleDict(
            {n: Linear(*s, dtype, device, vq, seed * 7 + i) for i, (n, s) in enumerate(shapes.items())}
        )
        self.norm1 = nn.Parameter(torch.ones(h, device=device, dtype=dtype), requires_grad=False)
        self.norm2 = nn.Parameter(torch.ones(h, device=device, dtype=dtype), requires_grad=False)
        self.register_buffer("k_cache", torch.zeros(1, self.heads, max_len, self.hd, device=device, dtype=dtype))
        self.register_buffer("v_cache", torch.zeros(1, self.heads, max_len, self.hd, device=device, dtype=dtype))

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """x [1, 1, h]; pos [1] (long); cos, sin [1, hd/2]; valid [max_len] bool (cache slots <= pos)."""
        a = rms_norm(x, self.norm1)
        q, k, v = (self.lin[n](a).view(1, 1, self.heads, self.hd).transpose(1, 2) for n in "qkv")  # [1, H, 1, hd]
        self.k_cache.index_copy_(2, pos, rope(k, cos, sin))
        self.v_cache.index_copy_(2, pos, v)
        att = F.scaled_dot_product_attention(
            rope(q, cos, sin), self.k_cache, self.v_cache, attn_mask=valid[None, None, None, :]
        )  # [1, H, 1, hd]
        x = x + self.lin["o"](att.transpose(1, 2).reshape(1, 1, -1))
        m = rms_norm(x, self.norm2)
        return x + self.lin["down"](F.silu(self.lin["gate"](m)) * self.lin["up"](m))


class Decoder(nn.Module):
    def __init__(self, cfg: dict, max_len: int, dtype: torch.dtype, device: str, vq: dict | None) -> None:
        super().__init__()
        h, hd = cfg["hidden"], cfg["hidden"] // cfg["heads"]
        self.embed = nn.Parameter(torch.randn(cfg["vocab"], h, device=device, dtype=dtype), requires_grad=False)
        self.blocks = nn.ModuleList(Block(cfg, max_len, dtype, device, vq, i) for i in range(cfg["layers"]))
        self.norm = nn.Parameter(torch.ones(h, device=device, dtype=dtype), requires_grad=False)
        self.lm_head = nn.Parameter(
            torch.randn(cfg["vocab"], h, device=device, dtype=dtype) * h**-0.5, requires_grad=False
        )
        inv = 1.0 / 10000 ** (torch.arange(0, hd, 2, device=device).float() / hd)  # [hd/2]
        angles = torch.arange(max_len, device=device).float()[:, None] * inv[None, :]  # [max_len, hd/2]
        self.register_buffer("cos", angles.cos().to(dtype))
        self.register_buffer("sin", angles.sin().to(dtype))
        self.register_buffer("slots", torch.arange(max_len, device=device))

    @torch.no_grad()
    def step(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """token [1, 1], pos [1] (long, on device) -> next token [1, 1] (greedy)."""
        x = self.embed[token]  # [1, 1, h]
        cos, sin, valid = self.cos[pos], self.sin[pos], self.slots <= pos  # [1, hd/2], [1, hd/2], [max_len]
        for block in self.blocks:
            x = block(x, pos, cos, sin, valid)
        logits = F.linear(rms_norm(x, self.norm), self.lm_head)  # [1, 1, vocab]
        return logits.argmax(-1)

    def weight_bytes(self) -> int:
        dense = sum(t.numel() * t.element_size() for t in (self.embed, self.lm_head))
        return dense + sum(lin.nbytes() for b in self.blocks for lin in b.lin.values())


def decode_tokens_per_s(model: Decoder, new_tokens: int, cuda_graph: bool) -> float:
    """Generate ``new_tokens`` after a 1-token prompt; returns tokens per second."""
    device = model.embed.device
    token = torch.zeros(1, 1, dtype=torch.long, device=device)
    pos = torch.zeros(1, dtype=torch.long, device=device)
    run = lambda: model.step(token, pos)  # noqa: E731
    if device.type == "cuda":
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (and Triton autotuning) before any capture
            for _ in range(3):
                run()
        torch.cuda.current_stream().wait_stream(side)
    if cuda_graph:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = run()
        run = lambda: (graph.replay(), out)[1]  # noqa: E731
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for i in range(new_tokens):
        pos.fill_(i)
        token.copy_(run())
    sync()
    return new_tokens / (time.perf_counter() - start)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    smoke = args.smoke
    device, dtype = ("cpu", torch.float32) if smoke else ("cuda", torch.float16)
    cfg, new_tokens = (TINY, 8) if smoke else (LLAMA2_7B, 256)
    rows = []
    for name, vq in [("fp16" if not smoke else "dense", None), *(TINY_BITS if smoke else BITS).items()]:
        model = Decoder(cfg, new_tokens + 1, dtype, device, vq)
        for graph in [False] if smoke else [False, True]:
            rows.append(
                {
                    "model": name,
                    "cuda_graph": graph,
                    "new_tokens": new_tokens,
                    "weights_gb": model.weight_bytes() / 1e9,
                    "tokens_per_s": decode_tokens_per_s(model, new_tokens, graph),
                }
            )
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    path = write_results(args.out, "decode", smoke, rows, {"config": cfg, "dtype": str(dtype)})
    print(f"wrote {path}")
    for row in rows:
        print(
            f"{row['model']:>22} graph={row['cuda_graph']!s:5} {row['weights_gb']:.3f} GB  "
            f"{row['tokens_per_s']:.1f} tok/s"
        )


if __name__ == "__main__":
    main()
