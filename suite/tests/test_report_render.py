"""The fixture report renders in headless Chromium (no JavaScript, no network) to a non-blank page."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from suite.report.render import render_report

FIXTURE = Path(__file__).parent / "data" / "fixture_run"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
def test_headless_chromium_screenshot_is_not_blank(tmp_path):
    index = render_report(FIXTURE, tmp_path / "report")
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-javascript",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000", index.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists(), f"no screenshot; chromium said: {done.stderr[-2000:]}"
    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.var() > 0.005, "screenshot is (nearly) uniform"
    ink = (pixels.mean(axis=2) < 0.85).mean()  # share of non-background pixels: text, rules, tables, figures
    assert ink > 0.03, f"only {ink:.1%} of the page has content"
