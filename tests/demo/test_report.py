"""The run report renders every section in headless Chromium, without console errors."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from demo.report import SECTIONS, InterestSummary, ProfileChange, ReportData, render_report, report_from_run, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def full_report() -> ReportData:
    rng = np.random.default_rng(0)
    curve = [{"epoch": e, "loss": 5.0 / e, "valid_ndcg@10": 0.01 * e} for e in range(1, 6)]
    return ReportData(
        title="g2rec demo <test>",
        metrics={"g2rec (valid)": {"ndcg@10": 0.05, "recall@10": 0.09}, "g2rec (test)": {"ndcg@10": 0.04, "recall@10": 0.08}},
        curves={"g2rec": curve, "items": curve[:3]},
        cluster_sizes=rng.integers(0, 50, 64).tolist(),
        changes=[ProfileChange(1, 2, 0.03, 400)],
        interests=[InterestSummary(3, 49, ["B00A", "B00B"])],
        live_update_s=1.25,
        phases={"replay": 10.0, "train": 30.5},
    )


def test_every_section_is_present_and_escaped():
    page = render_report(full_report())
    for key in SECTIONS:
        assert f'<section id="{key}">' in page
    assert "&lt;test&gt;" in page and "<test>" not in page
    assert "http://" not in page and "https://" not in page  # self-contained
    empty = render_report(ReportData(title="empty"))
    assert all(f'<section id="{key}">' in empty for key in SECTIONS) and empty.count('class="missing"') == len(SECTIONS)


def test_report_from_a_run_directory(tmp_path):
    import json

    (tmp_path / "metrics.json").write_text(json.dumps({
        "valid": {"masked": {"ndcg@10": 0.1}}, "test": {"masked": {"ndcg@10": 0.09}},
        "curve": [{"epoch": 1, "loss": 2.0, "valid_ndcg@10": 0.1}], "cluster_sizes": [2, 1], "train_seconds": 3.0}))
    (tmp_path / "config.json").write_text(json.dumps({"model": {"mode": "g2rec"}}))
    np.savez(tmp_path / "profiles.npz", clusters=np.array([[0, 0], [0, 1], [1, 0], [0, 1]]),
             weights=np.ones((4, 2)) / 2, item_ids=np.array([0, 10, 20, 30]), n_clusters=2, version=1)
    data = report_from_run(tmp_path)
    assert data.metrics["g2rec (test)"]["ndcg@10"] == 0.09
    assert data.interests[0] == InterestSummary(0, 2, ["10", "30"])


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make system-deps installs it)")
def test_report_renders_in_headless_chromium_without_console_errors(tmp_path):
    path = write_report(full_report(), tmp_path / "report.html")
    out = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
                          "--v=0", "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    for key in SECTIONS:
        assert re.search(rf'<section id="{key}">\s*<h2>', out.stdout), key
    assert out.stdout.count("<img") == 2
    console = [line for line in out.stderr.splitlines() if "CONSOLE" in line]
    assert console == []
