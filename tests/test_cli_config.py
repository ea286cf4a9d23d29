"""The README's own example, `tunerctl train configs/examples/demo.yaml`, whose paths start with
`${TUNER_HOME}`: the home of the daemon in use (--home), not ~/.tuner (issue 23, item 3)."""
from __future__ import annotations

from pathlib import Path

import pytest
from daemon_utils import DaemonProcess, cli, job_state, json_lines, short_home, wait_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def user_home(demo_bundle, tmp_path_factory):
    """A daemon with its own --home (not ~/.tuner: $HOME has no demo) holding the demo where
    configs/examples/demo.yaml expects it (${TUNER_HOME}/demo)."""
    home = tmp_path_factory.mktemp("user")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.delenv("TUNER_HOME", raising=False)
        d = DaemonProcess(short_home()).start()
        demo = d.home / "demo"
        (demo / "data").mkdir(parents=True)
        (demo / "model").symlink_to(demo_bundle["model"])
        (demo / "data" / "train.jsonl").symlink_to(demo_bundle["train"])
        (demo / "data" / "valid.jsonl").symlink_to(demo_bundle["valid"])
        try:
            yield d.home, d
        finally:
            d.stop()


def test_readme_example_config_trains_in_the_daemons_home(user_home, tmp_path):
    home, d = user_home
    p = cli(d.home, "train", str(ROOT / "configs" / "examples" / "demo.yaml"), "--detach", "--json",
            "--set", "max_steps=2", "--set", "backend=torch", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    job = json_lines(p.stdout)[0]
    assert job["model"] == str((home / "demo" / "model").resolve())  # ${TUNER_HOME} expanded, then resolved
    state = wait_for(lambda: (s := job_state(d.stub(), job["id"])) in ("succeeded", "failed") and s,
                     timeout=180, what="the demo job to finish")
    assert state == "succeeded", cli(d.home, "jobs", "show", job["id"]).stdout


def test_data_inspect_uses_the_configs_model_in_the_home(user_home):
    _, d = user_home
    p = cli(d.home, "data", "inspect", str(ROOT / "configs" / "examples" / "demo.yaml"), "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    r = json_lines(p.stdout)[0]
    assert r["tokenizer"] and r["train_rows"] == 32 and r["validation_rows"] == 8 and r["tokens_total"] > 0
