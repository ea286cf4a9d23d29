"""Quantization as one concept (tunerd/quantization.py): names, aliases, bits, per-backend mapping."""
import pytest

from tunerd import quantization as q
from tunerd.backends.base import ModelSpec
from tunerd.config.rules import _CHOICES


@pytest.mark.parametrize("name, canonical, bits", [
    ("none", "none", 0), ("", "none", 0), (None, "none", 0), ("4bit", "4bit", 4), ("NF4", "4bit", 4),
    ("int4", "4bit", 4), ("fp4", "4bit", 4), ("8bit", "8bit", 8), ("int8", "8bit", 8)])
def test_every_alias_has_one_meaning(name, canonical, bits):
    assert q.canonical(name) == canonical and q.bits(name) == bits


def test_each_backend_maps_the_names_it_runs():
    assert q.mlx_bits("nf4") == 4 and q.mlx_bits("4bit", 3) == 3 and q.mlx_bits("int8", 3) == 8
    assert q.mlx_bits("none") == 0 and q.mlx_bits("4bit", 7) == 4   # 7: not an MLX width
    assert q.torch_mode("int4") == "4bit" and q.torch_mode("int8") == "8bit" and q.torch_mode("") is None
    assert q.bnb_4bit_type("fp4", "nf4") == "fp4" and q.bnb_4bit_type("4bit", "nf4") == "nf4"
    with pytest.raises(ValueError, match="on mlx"):
        q.mlx_bits("fp4")   # bitsandbytes' fp4 has no MLX counterpart


def test_unknown_names_are_refused_with_the_allowed_ones():
    with pytest.raises(ValueError, match="quantization: '3bit' is not one of none, 4bit"):
        q.canonical("3bit")


def test_the_config_accepts_exactly_these_names():
    assert set(_CHOICES["quantization"]) == set(q.NAMES)
    assert ModelSpec(model="m").quantization in q.NAMES
