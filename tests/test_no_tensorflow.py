"""dali-video where TensorFlow is not installed: a venv that sees every dependency of this one except
TensorFlow, Keras and DALI's TF plugin builds the native reader with the CUDA headers of the header
wheels (pyproject.toml's cuda12-headers extra), reads clips with ``clip_pipeline`` on the CPU, refuses
the TensorFlow functions by name, and runs ``dali-video-gpu-check``, which says "no GPU" here."""
import json
import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from dali_video.loader.gpu import usable_gpus
from dali_video.loader.native import HEADER_WHEELS

from .conftest import ROOT

PYPROJECT = tomllib.loads(Path(ROOT, "pyproject.toml").read_text())
HIDDEN = ("tensorflow", "tf_keras", "keras", "tensorboard", "nvidia_dali_tf_plugin", "_main_deps.pth")


def _site_dirs() -> list[Path]:
    """This interpreter's site-packages folders, in import order (its own, then those a .pth adds)."""
    return [Path(p) for p in dict.fromkeys(sys.path) if p.endswith("site-packages") and Path(p).is_dir()]


def _link_all(source: Path, dest: Path, skip=(), but=()) -> None:
    """Symlink every entry of ``source`` into ``dest`` that ``dest`` lacks (the first found wins), but
    those whose name starts with one of ``skip`` or is one of ``but``."""
    for entry in source.iterdir():
        if not entry.name.startswith(skip) and entry.name not in but and not (dest / entry.name).exists():
            (dest / entry.name).symlink_to(entry)


@pytest.fixture(scope="module")
def tf_free(tmp_path_factory):
    """(python, env) of a venv without TensorFlow: a folder of symlinks to this environment's packages
    less TensorFlow, Keras and DALI's TF plugin on its path (the same pins, nothing copied), this
    tree's editable dali_video, and the CUDA 12 header wheels (pip-installed where this environment
    lacks them; `make` installs them with the test extra)."""
    tmp = tmp_path_factory.mktemp("no-tf")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", tmp / "venv"], check=True)
    python = tmp / "venv" / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    deps = tmp / "deps"
    (deps / "nvidia").mkdir(parents=True)
    for folder in _site_dirs():
        for entry in folder.glob("__editable__*dali_video*"):  # the editable finder, run by its .pth at startup
            if not (site / entry.name).exists():
                (site / entry.name).symlink_to(entry)
        if (folder / "nvidia").is_dir():  # DALI's namespace, less its TF plugin
            _link_all(folder / "nvidia", deps / "nvidia", skip=("dali_tf_plugin",))
        _link_all(folder, deps, skip=(*HIDDEN, "__editable__"), but=("nvidia",))
    if not all((deps / "nvidia" / sub).is_dir() for sub in HEADER_WHEELS[12]):
        pins = PYPROJECT["project"]["optional-dependencies"]["cuda12-headers"]
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                        "--target", tmp / "headers", *pins], check=True, capture_output=True)
        _link_all(tmp / "headers" / "nvidia", deps / "nvidia")
    (site / "_deps.pth").write_text(f"{deps}\n")
    # No nvcc (this machine's is CUDA 13's), no CUDA_HOME: the headers must come from the wheels.
    env = {"HOME": os.environ["HOME"], "PATH": "/usr/bin:/bin", "DALI_VIDEO_CACHE": str(tmp / "cache"),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    return python, env, tmp


def _run(tf_free, code, *args, timeout=300):
    python, env, tmp = tf_free
    proc = subprocess.run([python, "-c", code, *map(str, args)], capture_output=True, text=True, env=env, cwd=tmp,
                          timeout=timeout)
    return proc


def test_the_venv_has_no_tensorflow(tf_free):
    proc = _run(tf_free, "import importlib.util as u; print([u.find_spec(m) is None for m in "
                         "('tensorflow', 'tf_keras', 'keras', 'nvidia.dali_tf_plugin')])")
    assert proc.stdout.strip() == "[True, True, True, True]", proc.stdout + proc.stderr


BUILD_AND_READ = """
import json, sys
from pathlib import Path
import dali_video
from dali_video.loader import native
native.BUILD_DIR = Path(sys.argv[2])  # built here, from nothing, and loaded from here
built = native.build(folder=native.BUILD_DIR)
includes, source = native.cuda_includes()
pipe = dali_video.clip_pipeline(sys.argv[1], batch_size=2, clip_len=4, crop_size=32, device="cpu", seed=0,
                                layout="clips", dtype="uint8", std=(1, 1, 1))
clips, labels, meta, frames = pipe.pipeline.run()
errors = []
for call in (lambda: dali_video.clip_dataset(sys.argv[1], batch_size=2), lambda: dali_video.InputMonitor()):
    try:
        call()
    except ImportError as e:
        errors.append(str(e))
print(json.dumps({"built": str(built), "loaded": str(native.load()), "source": source,
                  "includes": [str(i) for i in includes], "clips": list(clips.as_array().shape),
                  "frames": frames.as_array().tolist(), "errors": errors}))
"""


def test_builds_the_operator_with_header_wheels_and_reads_clips(tf_free, dataset):
    proc = _run(tf_free, BUILD_AND_READ, dataset, tf_free[2] / "build")
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["built"] == got["loaded"] and got["built"].startswith(str(tf_free[2] / "build"))
    assert got["source"] == "the CUDA 12 header wheels", got
    assert got["clips"] == [2, 4, 32, 32, 3]
    assert all(row == list(range(row[0], row[0] + 4)) for row in got["frames"]), got["frames"]
    assert len(got["errors"]) == 2 and all(
        e.startswith("dali_video.") and "needs TensorFlow, which is not installed here" in e and "clip_pipeline" in e
        for e in got["errors"]), got["errors"]


def test_gpu_check_says_no_gpu_with_its_json(tf_free):
    if usable_gpus()[0]:
        pytest.skip("this host has a GPU")
    out = tf_free[2] / "gpu-check.json"
    proc = _run(tf_free, "import sys; from importlib.metadata import entry_points; "
                         "sys.exit(entry_points(group='console_scripts')['dali-video-gpu-check'].load()(sys.argv[1:]))",
                "--out", out)
    assert proc.returncode == 2, proc.stdout + proc.stderr[-4000:]
    assert proc.stdout.startswith("dali-video-gpu-check: no GPU ("), proc.stdout
    report = json.loads(out.read_text())
    assert report["ok"] is False and report["gpu"] is None and report["why"].startswith("no GPU (")
    assert report["versions"]["tensorflow"] is None and report["versions"]["dali"] == "2.4.0"
    assert report["cpu_pipeline"]["clips"] == [2, 16, 224, 224, 3], report["cpu_pipeline"]
