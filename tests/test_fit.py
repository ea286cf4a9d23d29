"""The one memory-fit check (models/fit.py): a model's weights before it is loaded to serve, and
a job's worst batch at submit, each refused with how much it needs and how much is free."""
import json
from pathlib import Path

import pytest

from tunerd.config.schema import TrainConfig
from tunerd.models.fit import check_fits
from tunerd.training.memory import DoesNotFit


def test_a_model_or_a_job_too_big_for_free_memory_is_a_clear_error(tmp_path: Path, tiny_model_dir):
    (tmp_path / "model.safetensors").write_bytes(bytes(10_000))
    with pytest.raises(MemoryError, match="needs about .* GiB .* free"):
        check_fits(str(tmp_path), "torch", available=5_000)
    check_fits(str(tmp_path), "torch", available=50_000)                      # fits
    check_fits(str(tmp_path), "torch", quantization="4bit", available=5_000)  # 4-bit fits

    job = TrainConfig(model=tiny_model_dir, per_device_train_batch_size=8, max_seq_length=512)
    with pytest.raises(DoesNotFit, match="this job will not fit: a batch of 8 x 512 tokens on torch"):
        check_fits(tiny_model_dir, "torch", job=job, available=1_000)
    check_fits(tiny_model_dir, "torch", job=job, available=2 ** 40)           # fits
    assert json.loads((Path(tiny_model_dir) / "config.json").read_text())    # read from there
    check_fits(str(tmp_path / "not-downloaded"), "torch", job=job, available=1)   # no config.json: the loop checks
