import os
import shutil
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

from dali_video.tools.sample_data import make_folder_dataset  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, *args, check=True):
    """Run ``python -m module args`` from the repository root; return the CompletedProcess."""
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": ROOT})
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def videos(tmp_path_factory):
    """2 classes x 5 synthetic videos of 20-40 frames, 48x64."""
    return make_folder_dataset(tmp_path_factory.mktemp("videos"), videos_per_class=5, frames=(20, 40))


@pytest.fixture(scope="session")
def dataset(videos, tmp_path_factory):
    """The videos written as 3 shards, frames kept at 48x64."""
    out = tmp_path_factory.mktemp("dataset")
    run_module("dali_video.writer", videos, out, "--resize", "0", "--num-shards", "3", "--workers", "2")
    return out


@pytest.fixture
def dataset_copy(dataset, tmp_path):
    """A copy that a test may damage."""
    return shutil.copytree(dataset, tmp_path / "ds")


def has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0


def pytest_collection_modifyitems(config, items):
    if has_gpu() or os.environ.get("DALI_VIDEO_REQUIRE_GPU") == "1":
        return
    skip = pytest.mark.skip(reason="no NVIDIA GPU (set DALI_VIDEO_REQUIRE_GPU=1 to fail instead)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

from .storage import bucket, gcs, gcs_server, moto_server, s3  # noqa: E402,F401  (fixtures)
