"""The image recipe (no Docker engine here: lint it, check its pins) and the console entry points."""
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .conftest import ROOT, run_module

DOCKERFILE = Path(ROOT, "docker", "Dockerfile")
PYPROJECT = Path(ROOT, "pyproject.toml")


def image_requirements(*which) -> list[str]:
    """The pins the image installs, by the script its build runs."""
    proc = subprocess.run([sys.executable, str(Path(ROOT, "docker", "requirements.py")), str(PYPROJECT), *which],
                          capture_output=True, text=True, check=True)
    return proc.stdout.split()


def test_dockerfile_is_hadolint_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_takes_every_pin_from_pyproject():
    text = DOCKERFILE.read_text()
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    extras = project["optional-dependencies"]
    # No second list of versions: no pin of a Python package appears in the Dockerfile.
    for requirement in project["dependencies"] + extras["tf-plugin"] + extras["cuda"] + extras["cloud"]:
        name = re.split(r"[=<>]", requirement)[0]
        assert name not in text, name
    assert image_requirements() == project["dependencies"] + extras["cuda"] + extras["cloud"]
    assert image_requirements("plugin") == extras["tf-plugin"]
    assert "requirements.py pyproject.toml > /tmp/requirements.txt" in text
    assert "requirements.py pyproject.toml plugin > /tmp/plugin.txt" in text
    assert "--no-build-isolation -r /tmp/plugin.txt" in text
    makefile = Path(ROOT, "Makefile").read_text()
    assert "nvidia-dali-tf-plugin-cuda120==" in makefile and "--no-build-isolation" in makefile
    assert 'ENTRYPOINT ["dali-video-train"]' in text and "USER 1001" in text
    # The native reader is compiled in the build stage, into the installed package the image keeps.
    build_stage = text.split("\nFROM ")[1]
    assert "python3 -I -m dali_video.loader.native" in build_stage and "g++" in build_stage


def test_image_has_no_second_cuda_and_shows_the_jpeg_engine():
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM (\S+)", text, re.M)
    # The CUDA libraries come from pip only: no CUDA or cuDNN base image with older copies.
    assert bases == ["ubuntu:24.04", "ubuntu:24.04"]
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video" in text
    assert "CUDA_CACHE_PATH=/home/dali/.cache/cuda" in text and "CUDA_CACHE_MAXSIZE=4294967296" in text
    assert "VOLUME /home/dali/.cache" in text


def test_cuda_extra_pins_every_library_of_tensorflows_and_cuda_extra():
    tf_requires = map(Requirement, importlib.metadata.requires("tensorflow"))
    tf_pins = {canonicalize_name(r.name): r.specifier for r in tf_requires
               if r.marker is not None and r.marker.evaluate({"extra": "and-cuda"})}
    cuda = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["cuda"]
    ours = {canonicalize_name(r.name): r.specifier for r in map(Requirement, cuda)}
    assert set(ours) == set(tf_pins)
    for name, spec in ours.items():
        (pin,) = spec
        assert pin.operator == "==" and tf_pins[name].contains(pin.version), (name, pin, tf_pins[name])


@pytest.mark.slow
def test_image_dependencies_resolve_to_what_tensorflow_needs(tmp_path):
    """pip resolves the image's requirements for its Python (3.12) and platform (Ubuntu 24.04, glibc
    2.39, x86_64) from PyPI, to versions that meet TensorFlow's own CUDA pins."""
    try:
        urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=20).close()
    except OSError as e:
        pytest.skip(f"PyPI is unreachable ({e}): cannot resolve the image's dependencies")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(image_requirements()))
    # Every tag pip accepts on glibc 2.39; pip 23 does not expand one tag into the older ones.
    tags = [f"manylinux_2_{minor}_x86_64" for minor in range(5, 40)] + [
        "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    platforms = [f"--platform={tag}" for tag in tags]
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--report", str(tmp_path / "report.json"), "--target", str(tmp_path / "target"), "--only-binary=:all:",
           "--python-version=3.12", "--implementation=cp", "--abi=cp312", *platforms, "-r", str(requirements)]
    # A fresh image has no pip configuration: no local indexes, constraints or caches of this machine.
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installs = json.loads((tmp_path / "report.json").read_text())["install"]
    resolved = {canonicalize_name(i["metadata"]["name"]): Version(i["metadata"]["version"]) for i in installs}
    tf = next(i["metadata"] for i in installs if i["metadata"]["name"] == "tensorflow")
    and_cuda = [r for r in map(Requirement, tf["requires_dist"])
                if r.marker is not None and r.marker.evaluate({"extra": "and-cuda"})]
    assert len(and_cuda) >= 10
    for r in and_cuda:
        assert resolved[canonicalize_name(r.name)] in r.specifier, (r, resolved.get(canonicalize_name(r.name)))
    assert resolved["nvidia-cudnn-cu12"] >= Version("9.3") and resolved["nvidia-nccl-cu12"] >= Version("2.27.7")
    assert "nvidia-cuda-nvcc-cu12" in resolved  # ptxas and libdevice for XLA


def test_entrypoint_trains_when_run_directly(dataset):
    proc = run_module("dali_video.train_input", "--data", dataset, "--cpu", "--epochs", "1", "--steps-per-epoch",
                      "2", "--batch-size", "2", "--clip-len", "4", "--crop-size", "32")
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["epoch"] == 1 and line["clips_per_s"] > 0 and 0 <= line["accuracy"] <= 1
    assert 0 <= line["input_wait"] <= 1  # printed per epoch (InputMonitor)


@pytest.mark.parametrize("recipe,shape", [("slowfast", "32x224x224"), ("mvit", "16x224x224"),
                                          ("movinet", "50x224x224")])
def test_train_runs_each_recipe_at_its_own_sizes(dataset, recipe, shape):
    proc = run_module("dali_video.train_input", "--data", dataset, "--cpu", "--recipe", recipe, "--epochs", "1",
                      "--steps-per-epoch", "2", "--batch-size", "2")
    assert f"clip {shape}, 2 classes, recipe {recipe}" in proc.stdout
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["epoch"] == 1 and line["clip"] == 4 and line["loss"] > 0


def test_train_reports_bad_data_clearly(tmp_path):
    proc = run_module("dali_video.train_input", "--data", tmp_path, "--cpu", check=False)
    assert proc.returncode == 1 and "dali-video-train: error: no" in proc.stderr


@pytest.mark.slow
def test_bench_quick_writes_results_for_every_system(dataset, tmp_path):
    from .test_bench import train_and_val

    data = train_and_val(dataset, tmp_path / "data")  # a normal train + val folder: --split picks one
    proc = run_module("dali_video.tools.bench", data, "--split", "train", "--out", tmp_path, "--quick", "--batches",
                      "2", "--crop-size", "32", "--batch-size", "2", "--clip-len", "8")
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
    for name in ("slowfast", "mvit", "tsm_ssv2"):  # at the recipes' own sizes, against the bound of the same windows
        r = results["recipes"][name]
        assert r["clips_per_s"] > 0 and r["bound_frames_per_s"] > 0 and r["vs_bound"] > 0, r
        assert f"recipe {name}" in proc.stdout
    assert (tmp_path / "bench.png").stat().st_size > 1000
    assert "dali_video" in proc.stdout and "T sweep" in proc.stdout and "Columns: clips/s" in proc.stdout
