"""The device's measured peak FLOP/s (MFU's denominator, what `dtype: auto` weighs) is remembered in
the daemon's own home (backends/peak.py): the home it was given, whether or not $TUNER_HOME names it."""
from __future__ import annotations

import json
import uuid

import pytest

from tunerd.backends import peak
from tunerd.core import Core


@pytest.fixture
def core_home(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNER_HOME", raising=False)   # a daemon started with --home alone
    home = tmp_path / "home"
    home.mkdir()   # the daemon made it (server.prepare_home)
    core = Core(home)
    yield home
    core.shutdown(5)
    peak.keep_peaks_in(None)


def test_a_measured_peak_is_written_to_the_daemons_home(core_home):
    device = f"test-device-{uuid.uuid4().hex[:8]}"
    assert peak.cached_peak(device, "float32", lambda: 2.5e12) == 2.5e12
    stored = json.loads((core_home / "device_peak.json").read_text())
    assert stored[f"{device}|float32"] == 2.5e12


def test_a_peak_in_the_daemons_home_is_read_not_measured_again(core_home):
    device = f"test-device-{uuid.uuid4().hex[:8]}"
    (core_home / "device_peak.json").write_text(json.dumps({f"{device}|bfloat16": 7e12}))

    def measure():
        raise AssertionError("measured although the home had it")
    assert peak.cached_peak(device, "bfloat16", measure) == 7e12
