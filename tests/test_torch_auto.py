"""`backend: auto` (tunerd.backends.auto.choose_backend): the rule, on fake host facts."""
from __future__ import annotations

import sys

import pytest

from tunerd.backends.auto import HostFacts, choose_backend, detect, mlx_blas_library
from tunerd.config.schema import TrainConfig

OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"


def host(**kw) -> HostFacts:
    base = dict(system="Linux", machine="x86_64", mlx_available=True, torch_available=True, cuda=False,
                mlx_blas=None)
    return HostFacts(**{**base, **kw})


def test_apple_silicon_with_mlx_picks_mlx_even_for_4bit():
    facts = host(system="Darwin", machine="arm64")
    assert choose_backend(TrainConfig(quantization="4bit"), facts) == "mlx"


def test_mac_without_mlx_and_cuda_hosts_pick_torch():
    assert choose_backend(TrainConfig(), host(system="Darwin", machine="arm64", mlx_available=False)) == "torch"
    assert choose_backend(TrainConfig(), host(cuda=True, mlx_blas=OPENBLAS)) == "torch"


def test_only_installed_backend_wins():
    assert choose_backend(TrainConfig(), host(torch_available=False)) == "mlx"
    assert choose_backend(TrainConfig(), host(mlx_available=False, mlx_blas=OPENBLAS)) == "torch"
    with pytest.raises(RuntimeError, match="no training backend"):
        choose_backend(TrainConfig(), host(torch_available=False, mlx_available=False))


def test_linux_cpu_without_optimized_blas_or_quantized_picks_torch():
    assert choose_backend(TrainConfig(), host(mlx_blas=None)) == "torch"
    mlx_ref = "/x/site-packages/mlx_cpu.libs/libblas-bd8a282c.so.3.10.0"
    assert not host(mlx_blas=mlx_ref).mlx_blas_optimized
    assert choose_backend(TrainConfig(quantization="4bit"), host(mlx_blas=OPENBLAS)) == "torch"


@pytest.mark.skipif(sys.platform != "linux", reason="LD_PRELOAD interposition is a Linux matter")
def test_blas_detection_ignores_numpys_private_openblas():
    import numpy  # noqa: F401  (maps libscipy_openblas64_, which does not serve MLX)
    import os

    lib = mlx_blas_library()
    if "openblas" in os.environ.get("LD_PRELOAD", ""):
        assert lib and "openblas" in lib
    else:
        assert lib is None or "scipy_openblas" not in lib
    assert detect().system == "Linux"


def test_reason_names_the_blas_fact():
    from tunerd.backends.auto import choose_backend_with_reason

    name, why = choose_backend_with_reason(TrainConfig(), host(mlx_blas=None))
    assert name == "torch" and "reference BLAS" in why
    name, why = choose_backend_with_reason(TrainConfig(), host(mlx_blas=OPENBLAS))
    assert name == "torch" and OPENBLAS in why
    name, why = choose_backend_with_reason(TrainConfig(), host(torch_available=False))
    assert name == "mlx" and "LD_PRELOAD" in why
