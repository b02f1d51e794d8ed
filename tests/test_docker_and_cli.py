"""The image recipe (no Docker engine here: lint it, check its pins) and the console entry points."""
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from .conftest import ROOT, run_module

DOCKERFILE = Path(ROOT, "docker", "Dockerfile")


def test_dockerfile_is_hadolint_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_takes_every_pin_from_pyproject():
    text = DOCKERFILE.read_text()
    project = tomllib.loads(Path(ROOT, "pyproject.toml").read_text())["project"]
    # No second list of versions: no pin of a Python package appears in the Dockerfile.
    for requirement in project["dependencies"] + project["optional-dependencies"]["tf-plugin"]:
        name = re.split(r"[=<>]", requirement)[0]
        assert name not in text, name
    assert "p['dependencies']" in text and "p['optional-dependencies']['tf-plugin']" in text
    assert "--no-build-isolation -r /tmp/plugin.txt" in text
    makefile = Path(ROOT, "Makefile").read_text()
    assert "nvidia-dali-tf-plugin-cuda120==" in makefile and "--no-build-isolation" in makefile
    assert 'ENTRYPOINT ["dali-video-train"]' in text and "USER 1001" in text
    # The native reader is compiled in the build stage, into the installed package the image keeps.
    build_stage = text.split("\nFROM ")[1]
    assert "python3 -I -m dali_video.native" in build_stage and "g++" in build_stage


def test_entrypoint_trains_when_run_directly(dataset):
    proc = run_module("dali_video.train_input", "--data", dataset, "--cpu", "--epochs", "1", "--steps-per-epoch",
                      "2", "--batch-size", "2", "--clip-len", "4", "--crop-size", "32")
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["epoch"] == 1 and line["clips_per_s"] > 0 and 0 <= line["accuracy"] <= 1


def test_train_reports_bad_data_clearly(tmp_path):
    proc = run_module("dali_video.train_input", "--data", tmp_path, "--cpu", check=False)
    assert proc.returncode == 1 and "dali-video-train: error: no" in proc.stderr


@pytest.mark.slow
def test_bench_quick_writes_results_for_every_system(dataset, tmp_path):
    proc = run_module("dali_video.bench", dataset, "--out", tmp_path, "--quick", "--batches", "2", "--crop-size",
                      "32", "--batch-size", "2", "--clip-len", "8")
    results = json.loads((tmp_path / "bench.json").read_text())
    assert set(results["systems"]) == {"dali_video", "dali_video_uint8", "dali_video_tf_norm", "tfdata", "dali_tfrecord",
                                       "decode_bound",
                                       "feed_native", "feed_native_x2", "feed_native_bytes", "feed_python"}
    for system in ("feed_native", "feed_native_x2", "feed_native_bytes", "feed_python"):
        assert results["systems"][system]["frames_per_s"] > 0
    for system in ("dali_video", "tfdata"):
        r = results["systems"][system]
        assert r["clips_per_s"] > 0 and r["cold"]["clips_per_s"] > 0 and r["peak_rss_mb"] > 0
    assert results["systems"]["dali_video"]["read_amplification"] < 1.1
    assert results["systems"]["tfdata"]["read_amplification"] > 2
    assert results["systems"]["decode_bound"]["frames_per_s"] > 0
    assert (tmp_path / "bench.png").stat().st_size > 1000
    assert "dali_video" in proc.stdout and "T sweep" in proc.stdout
