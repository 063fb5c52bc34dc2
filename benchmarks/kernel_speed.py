"""Time the VQ kernels on LLaMA-2 7B/13B linear shapes against fp16 F.linear.

    python benchmarks/kernel_speed.py              # on a GPU machine
    python benchmarks/kernel_speed.py --cpu-smoke  # tiny shapes on CPU, checks the script only

For every layer shape, bit budget and batch (1 and 16 tokens) it times:
fp16 ``F.linear`` on the dense weight; the torch-dequant path (reference
dequantization, then ``F.linear``, every call); Triton ``dequant`` alone; the
``vq_linear(backend="triton")`` dispatch; and, per batch, the fused GEMV or the
two GEMM methods. Results go to ``benchmarks/results/kernels.{json,csv}``;
``gemm_best`` says which GEMM method the dispatcher should use there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _bench import device_name, parse_args, timer, write_results

SHAPES = {  # (out, in)
    "7b_qkvo": (4096, 4096),
    "7b_up": (11008, 4096),
    "7b_down": (4096, 11008),
    "13b_qkvo": (5120, 5120),
    "13b_up": (13824, 5120),
}
TINY_SHAPES = {"tiny_square": (64, 48), "tiny_up": (96, 64)}
BITS = {  # name -> random_qweight kwargs; index bits per weight = (b1 + b2) / v
    "2bit_v8_k65536": dict(v=8, k1=65536),
    "2bit_v6_k4096": dict(v=6, k1=4096),
    "3bit_v8_k65536_k256": dict(v=8, k1=65536, k2=256),
}
BATCHES = (1, 16)


def bench_layer(qw, batch: int, dtype: torch.dtype, time_ms) -> dict:
    """Milliseconds of each path for x [batch, in]."""
    from vptq_lab.kernels import vq_linear
    from vptq_lab.kernels.dequant import dequant
    from vptq_lab.kernels.gemm import vq_gemm
    from vptq_lab.kernels.gemv import MAX_TOKENS, vq_gemv
    from vptq_lab.kernels.reference import dequant_ref

    device = qw.indices.device
    x = torch.randn(batch, qw.in_features, device=device, dtype=dtype)
    w = dequant(qw, dtype)  # [out, in] dense copy for the baseline
    row = {
        "dense_ms": time_ms(lambda: F.linear(x, w)),
        "torch_dequant_ms": time_ms(lambda: F.linear(x, dequant_ref(qw).to(dtype))),
        "triton_dequant_only_ms": time_ms(lambda: dequant(qw, dtype)),
        "vq_linear_triton_ms": time_ms(lambda: vq_linear(x, qw, backend="triton")),
    }
    if batch <= MAX_TOKENS:
        row["gemv_ms"] = time_ms(lambda: vq_gemv(x, qw))
    for method in ("dequant", "fused"):
        row[f"gemm_{method}_ms"] = time_ms(lambda: vq_gemm(x, qw, method=method))
    row["gemm_best"] = min(("dequant", "fused"), key=lambda m: row[f"gemm_{m}_ms"])
    row["speedup_vs_dense"] = row["dense_ms"] / row["vq_linear_triton_ms"]
    return row


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    from vptq_lab.kernels.testing import random_qweight

    device = "cpu" if args.smoke else "cuda"
    dtype = torch.float32 if args.smoke else torch.float16
    time_ms = timer(args.smoke)
    bits = {"2bit_v8_k256": dict(v=8, k1=256), "3bit_v4_k64_k16": dict(v=4, k1=64, k2=16)} if args.smoke else BITS
    rows = []
    for shape_name, (out, inp) in (TINY_SHAPES if args.smoke else SHAPES).items():
        for bits_name, kwargs in bits.items():
            qw = random_qweight(out, inp, codebook_dtype=dtype, device=device, **kwargs)
            index_bytes = qw.indices.numel() * 4
            for batch in BATCHES:
                rows.append(
                    {
                        "shape": shape_name,
                        "out": out,
                        "in": inp,
                        "bits": bits_name,
                        "batch": batch,
                        "index_bits_per_weight": index_bytes * 8 / (out * inp),
                        **bench_layer(qw, batch, dtype, time_ms),
                    }
                )
    path = write_results(args.out, "kernels", args.smoke, rows, {"dtype": str(dtype), "device_name": device_name()})
    print(f"wrote {path} ({len(rows)} rows)")
    for row in rows:
        print(
            f"{row['shape']:>12} {row['bits']:>20} b={row['batch']:<3} dense {row['dense_ms']:.4f} ms  "
            f"triton {row['vq_linear_triton_ms']:.4f} ms  x{row['speedup_vs_dense']:.2f}  "
            f"gemm_best={row['gemm_best']}"
        )


if __name__ == "__main__":
    main()
