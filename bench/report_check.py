"""`make report-check` (not in CI): train the tiny demo model with generation metrics at each eval,
write `tunerctl report` for the job, and screenshot it with headless Chromium.

    python bench/report_check.py [OUT_DIR]     writes OUT_DIR/report.html and OUT_DIR/report.png

Needs chromium (or chromium-headless-shell / google-chrome) on PATH and matplotlib. Runs its own
daemon in a temporary $TUNER_HOME; nothing leaves the machine.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from daemon_utils import DaemonProcess, cli, json_lines, short_home, write_config  # noqa: E402
from tunerd.demo.tiny import build_demo  # noqa: E402

BROWSERS = ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome", "chrome")


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs").resolve()
    out.mkdir(parents=True, exist_ok=True)
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        print("report-check needs headless Chromium (apt-get install chromium-headless-shell)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="report-check-"))
    bundle = build_demo(work / "demo")
    cfg = write_config(work / "demo.yaml", bundle, max_steps=60, eval_steps=20, save_steps=20, eval_generate_rows=8,
                       eval_generate_max_tokens=16, metric_for_best_model="rougeL", load_best_model_at_end=True)
    daemon = DaemonProcess(short_home()).start()
    try:
        events = json_lines(cli(daemon.home, "train", str(cfg), "--json", check=True).stdout)
        job = events[0]["job_id"]
        cli(daemon.home, "report", job, "-o", str(out / "report.html"), "--generate", "6", "--max-tokens", "16",
            check=True)
        print(cli(daemon.home, "evaluate", "--job", job, "--base", "--generate", "8", "--max-tokens", "16",
                  "--show", "0", check=True).stdout)
    finally:
        daemon.stop()
    headless = [] if "headless-shell" in Path(browser).name else ["--headless"]
    subprocess.run([browser, *headless, "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,2400", f"--screenshot={out / 'report.png'}",
                    (out / "report.html").as_uri()], check=True, capture_output=True,
                   env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})  # Chromium traps on the BLAS preload
    print(json.dumps({"html": str(out / "report.html"), "png": str(out / "report.png")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
