"""Triton kernels vs the pure-torch reference, and the `vq_linear` dispatcher.

Without CUDA the kernels run under Triton's interpreter, which must be chosen
before any kernel module is imported: hence the environment line at the top.
The same tests run unchanged on a GPU (``DEVICE`` follows availability).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before vptq_lab.kernels' Triton modules are imported

import subprocess
import sys

import pytest

from vptq_lab.kernels import dispatch
from vptq_lab.kernels.dispatch import FORCE_REFERENCE_ENV, resolve_backend, vq_linear
from vptq_lab.kernels.reference import dequant_ref, vq_linear_ref
from vptq_lab.kernels.testing import random_qweight

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
triton = pytest.importorskip("triton")

from vptq_lab.kernels.dequant import dequant  # noqa: E402
from vptq_lab.kernels.gemm import vq_gemm  # noqa: E402
from vptq_lab.kernels.gemv import MAX_TOKENS, vq_gemv  # noqa: E402

# (out, in, random_qweight kwargs): each case adds one feature to a tiny odd-shaped layer.
CASES = {
    "v2": (37, 50, dict(v=2, k1=16)),
    "v4": (37, 50, dict(v=4, k1=256)),
    "v6": (37, 50, dict(v=6, k1=16)),
    "v8": (37, 50, dict(v=8, k1=256)),
    "v12": (37, 50, dict(v=12, k1=16)),
    "v16": (37, 50, dict(v=16, k1=16)),
    "residual": (37, 50, dict(v=8, k1=256, k2=16)),
    "straddle17": (37, 50, dict(v=6, k1=2048, k2=64)),  # 17-bit codes cross word boundaries
    "k65536": (12, 20, dict(v=4, k1=65536)),
    "bits32": (10, 24, dict(v=2, k1=65536, k2=65536)),  # full 32-bit merged codes
    "outliers": (37, 50, dict(v=8, k1=256, outlier_size=6, v0=4, k0=16)),
    "outliers_v0_6": (37, 50, dict(v=4, k1=16, k2=16, outlier_size=5, v0=6, k0=256)),
    "groups": (37, 51, dict(v=6, k1=64, k2=16, group_num=3)),
    "perm": (37, 50, dict(v=8, k1=256, perm=True)),
    "norm": (37, 50, dict(v=6, k1=256, norm=True)),
    "everything": (45, 70, dict(v=12, k1=2048, k2=64, outlier_size=6, v0=2, k0=64, group_num=4, perm=True, norm=True)),
    "fp32_codebook": (37, 50, dict(v=8, k1=64, k2=16, perm=True, norm=True, codebook_dtype=torch.float32)),
    "bf16_codebook": (37, 50, dict(v=4, k1=64, k2=16, outlier_size=2, codebook_dtype=torch.bfloat16)),
    # past one tile in every direction for every autotune config: S = 300 columns > BLOCK_S (at most 256),
    # R = 21 vector rows > BLOCK_R (at least 2)
    "wide": (41, 306, dict(v=2, k1=16, k2=16, outlier_size=6, v0=2, k0=16, perm=True, norm=True)),
}
FP32_TOL = dict(rtol=1e-5, atol=1e-5)  # fp32 accumulation in a different order than the reference


def make(case: str, seed: int = 0):
    out, inp, kwargs = CASES[case]
    return random_qweight(out, inp, seed=seed, device=DEVICE, **kwargs)


def tokens(qw, *lead: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(*lead, qw.in_features, generator=gen).to(DEVICE, dtype)


def out_bias(qw) -> torch.Tensor:
    return torch.linspace(-1, 1, qw.out_features, device=DEVICE)


@pytest.mark.parametrize("case", CASES)
def test_dequant_matches_reference(case):
    qw = make(case)
    ref = dequant_ref(qw)
    torch.testing.assert_close(dequant(qw), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dequant(qw, torch.float16).float(), ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("case", ["everything", "outliers", "bits32"])
def test_dequant_stored_order_skips_perm_and_norm(case):
    qw = make(case)
    plain = dequant_ref(qw.__class__(**{**qw.__dict__, "perm": None, "weight_scale": None, "weight_bias": None}))
    torch.testing.assert_close(dequant(qw, stored_order=True), plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("lead", [(1,), (3,), (2, 4)], ids=["batch1", "tokens3", "shape2x4"])
@pytest.mark.parametrize("case", CASES)
def test_gemv_matches_reference(case, lead):
    qw = make(case)
    x = tokens(qw, *lead)
    torch.testing.assert_close(vq_gemv(x, qw, out_bias(qw)), vq_linear_ref(x, qw, out_bias(qw)), **FP32_TOL)


@pytest.mark.parametrize("method", ["dequant", "fused"])
@pytest.mark.parametrize("case", CASES)
def test_gemm_matches_reference(case, method):
    qw = make(case)
    x = tokens(qw, 20)
    torch.testing.assert_close(
        vq_gemm(x, qw, out_bias(qw), method=method), vq_linear_ref(x, qw, out_bias(qw)), **FP32_TOL
    )


@pytest.mark.parametrize("path", ["gemv", "gemm_dequant", "gemm_fused"])
def test_half_precision_activations(path):
    qw = make("everything")
    x = tokens(qw, 2 if path == "gemv" else 20, dtype=torch.float16)
    run = {
        "gemv": lambda: vq_gemv(x, qw),
        "gemm_dequant": lambda: vq_gemm(x, qw, method="dequant"),
        "gemm_fused": lambda: vq_gemm(x, qw, method="fused"),
    }[path]
    y = run()
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), vq_linear_ref(x.float(), qw), rtol=2e-2, atol=2e-2)


def test_gemv_rejects_too_many_tokens():
    qw = make("v8")
    with pytest.raises(ValueError, match="GEMM"):
        vq_gemv(tokens(qw, MAX_TOKENS + 1), qw)


# ---- dispatcher -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "triton", "torch", "reference"])
@pytest.mark.parametrize("n", [1, 20], ids=["decode", "prefill"])
def test_vq_linear_runs_the_backend_it_names_and_matches_the_reference(backend, n, monkeypatch):
    # Each implementation logs its name when the dispatcher calls it: a backend routed to the reference (the cached
    # dense path and the reference share dequant_ref, so their outputs alone cannot tell) fails here.
    from vptq_lab.kernels import gemm as gemm_mod
    from vptq_lab.kernels import gemv as gemv_mod

    qw = make("everything")
    x = tokens(qw, n)
    want = vq_linear_ref(x, qw, out_bias(qw))
    ran = []
    for module, name, label in (
        (dispatch, "vq_linear_ref", "reference"),
        (dispatch, "dense_weight", "torch"),
        (gemv_mod, "vq_gemv", "triton gemv"),
        (gemm_mod, "vq_gemm", "triton gemm"),
    ):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=real, _label=label, **k: ran.append(_label) or _f(*a, **k))
    got = vq_linear(x, qw, out_bias(qw), backend=backend)
    named = ("triton" if DEVICE == "cuda" else "torch") if backend == "auto" else backend
    if named == "triton":
        named = "triton gemv" if n <= MAX_TOKENS else "triton gemm"
    assert ran == [named]
    torch.testing.assert_close(got, want, **FP32_TOL)


def test_auto_backend_follows_device():
    assert resolve_backend(torch.zeros(1), "auto") == "torch"
    if torch.cuda.is_available():
        assert resolve_backend(torch.zeros(1, device="cuda"), "auto") == "triton"
    with pytest.raises(ValueError, match="backend"):
        resolve_backend(torch.zeros(1), "cublas")


def test_torch_backend_caches_the_dense_weight(monkeypatch):
    calls = []
    monkeypatch.setattr(dispatch, "dequant_ref", lambda qw: calls.append(1) or dequant_ref(qw))
    qw = make("residual", seed=3)
    x = tokens(qw, 4)
    first = vq_linear(x, qw, backend="torch")
    second = vq_linear(x, qw, backend="torch")
    assert len(calls) == 1
    torch.testing.assert_close(first, second)
    qw.centroids.mul_(2)  # in-place edits invalidate the cache
    torch.testing.assert_close(vq_linear(x, qw, backend="torch"), vq_linear_ref(x, qw), **FP32_TOL)
    assert len(calls) == 2
    other = make("residual", seed=4)  # another object: its own entry
    vq_linear(x, other, backend="torch")
    assert len(calls) == 3


def test_drop_dense_weight_frees_one_weights_cache():
    qw, other = make("residual", seed=3), make("residual", seed=4)
    x = tokens(qw, 4)
    vq_linear(x, qw, backend="torch")
    vq_linear(x, other, backend="torch")
    dispatch.drop_dense_weight(qw)
    assert not dispatch._DENSE_CACHE[id(qw)][1] and dispatch._DENSE_CACHE[id(other)][1]
    dispatch.drop_dense_weight(make("v8"))  # nothing cached: nothing to do


def test_fine_tuning_frees_the_layers_cached_dense_weight():
    from vptq_lab.model.layers import QuantizedLinear

    layer = QuantizedLinear(make("residual", seed=5))
    with dispatch.prefer_backend("torch"):
        layer(tokens(layer.qweight, 4))  # as the quantizer's propagation runs it: the dense weight is cached
    assert dispatch._DENSE_CACHE[id(layer.qweight)][1]
    layer.trainable_centroids()
    assert not dispatch._DENSE_CACHE[id(layer.qweight)][1]  # not read while training: freed for the run


def test_force_reference_env(monkeypatch):
    calls = []
    monkeypatch.setattr(dispatch, "vq_linear_ref", lambda *a: calls.append(1) or vq_linear_ref(*a))
    monkeypatch.setenv(FORCE_REFERENCE_ENV, "1")
    qw = make("v8")
    for backend in ["auto", "torch", "triton"]:
        vq_linear(tokens(qw, 2), qw, backend=backend)
    assert len(calls) == 3


def test_triton_on_cpu_without_interpreter_says_how_to_fix(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    qw = random_qweight(16, 32, v=8, k1=16)  # CPU tensors, whatever DEVICE is
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        vq_linear(torch.randn(1, 32), qw, backend="triton")


def test_missing_triton_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` fail
    qw = make("v8")
    with pytest.raises(ImportError, match="pip install"):
        vq_linear(tokens(qw, 1), qw, backend="triton")


def test_importing_the_package_does_not_import_triton():
    code = "import sys, vptq_lab.kernels; assert 'triton' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _each_config(kernel):
    """Run the body once per autotune config of ``kernel``, that config alone (the interpreter uses only the
    first otherwise)."""
    configs = list(kernel.configs)
    try:
        for config in configs:
            kernel.configs = [config]
            kernel.cache.clear()
            yield config
    finally:
        kernel.configs = configs
        kernel.cache.clear()


@pytest.mark.parametrize("case", ["wide", "everything"])
def test_every_autotune_config_matches_the_reference(case):
    from vptq_lab.kernels import dequant as dequant_mod
    from vptq_lab.kernels import gemm as gemm_mod
    from vptq_lab.kernels import gemv as gemv_mod

    qw = make(case)
    assert qw.group_size > 256 or case != "wide"  # the S > BLOCK_S case, for every config
    W = dequant_ref(qw)
    for config in _each_config(dequant_mod._dequant_kernel):
        torch.testing.assert_close(dequant(qw), W, **FP32_TOL, msg=f"dequant {config}")
    x1, x5 = tokens(qw, 1), tokens(qw, 5)
    for config in _each_config(gemv_mod._vq_gemv_kernel):
        got = vq_gemv(x1, qw, out_bias(qw))
        torch.testing.assert_close(got, vq_linear_ref(x1, qw, out_bias(qw)), **FP32_TOL, msg=f"gemv {config}")
    for config in _each_config(gemm_mod._vq_gemm_kernel):
        got = vq_gemm(x5, qw, out_bias(qw), method="fused")
        torch.testing.assert_close(got, vq_linear_ref(x5, qw, out_bias(qw)), **FP32_TOL, msg=f"gemm {config}")
