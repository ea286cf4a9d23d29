from pathlib import Path

import pytest

from tunerd.models.registry import check_fits_in_memory


def test_model_too_big_for_free_memory_is_a_clear_error(tmp_path: Path):
    (tmp_path / "model.safetensors").write_bytes(bytes(10_000))
    with pytest.raises(MemoryError, match="needs about .* GiB .* free"):
        check_fits_in_memory(str(tmp_path), available=5_000)
    check_fits_in_memory(str(tmp_path), available=50_000)                      # fits
    check_fits_in_memory(str(tmp_path), quantization="4bit", available=5_000)  # 4-bit fits
