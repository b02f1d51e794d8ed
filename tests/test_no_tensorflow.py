"""dali-video where TensorFlow is not installed: a venv that sees every dependency of this one except
TensorFlow, Keras and DALI's TF plugin builds the native reader with the CUDA headers of the header
wheels (pyproject.toml's cuda12-headers extra), reads clips with ``clip_pipeline`` on the CPU, refuses
the TensorFlow functions by name, and runs ``dali-video-gpu-check``, which says "no GPU" here."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from dali_video.loader.gpu import usable_gpus
from dali_video.loader import native
from dali_video.loader.native import HEADER_WHEELS

from .conftest import ROOT

PYPROJECT = tomllib.loads(Path(ROOT, "pyproject.toml").read_text())
HIDDEN = ("tensorflow", "tf_keras", "keras", "tensorboard", "nvidia_dali_tf_plugin")


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


# dali-video-gpu-check as its console script's entry point runs it.
GPU_CHECK = ("import sys; from importlib.metadata import entry_points; "
             "sys.exit(entry_points(group='console_scripts')['dali-video-gpu-check'].load()(sys.argv[1:]))")


def test_gpu_check_says_no_gpu_with_its_json(tf_free):
    if usable_gpus()[0]:
        pytest.skip("this host has a GPU")
    out = tf_free[2] / "gpu-check.json"
    proc = _run(tf_free, GPU_CHECK, "--out", out)
    assert proc.returncode == 2, proc.stdout + proc.stderr[-4000:]
    assert proc.stdout.startswith("dali-video-gpu-check: no GPU ("), proc.stdout
    report = json.loads(out.read_text())
    assert report["ok"] is False and report["gpu"] is None and report["why"].startswith("no GPU (")
    assert report["versions"]["tensorflow"] is None and report["versions"]["dali"] == "2.4.0"
    assert report["cpu_pipeline"]["clips"] == [2, 16, 224, 224, 3], report["cpu_pipeline"]


@pytest.mark.gpu
def test_gpu_check_passes_with_dali_alone(tf_free):
    out = tf_free[2] / "gpu-check-gpu.json"
    proc = _run(tf_free, GPU_CHECK, "--out", out, "--seconds", "1", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["tensorflow"] is None and report["versions"]["driver"]
    assert len(report["parity"]) == 12 and len(report["throughput"]) == 6


# Install lines of the docs (Install, "Without TensorFlow"; GPU hosts, "Offline install for GPU hosts").
VALUE_FLAGS = {"--dest", "--python-version", "--implementation", "--abi", "--platform", "--find-links"}
TF = {"tensorflow", "tf-keras"}
DALI_CUDA12 = {"nvidia-dali-cuda120", "nvidia-nvimgcodec-cu12", "nvidia-nvjpeg-cu12"}
# What DALI for CUDA 13 and its decoder require (their wheels' METADATA, Requires-Dist, as PyPI serves
# it to `pip install --dry-run --report`): the pins must meet these, checked without the network.
CUDA13_REQUIRES = {
    "nvidia-dali-cuda130": ["astunparse<=1.6.3,>=1.6.0", "gast<=0.7.0,>=0.3.3", "six<=1.17,>=1.16", "optree",
                            "packaging<=26.3", "numpy", "nvtx", "makefun", "libcst~=1.8",
                            "nvidia-nvimgcodec-cu13[all]<0.10.0,>=0.9.0", "nvidia-libnvcomp-cu13==5.3.0.16"],
    "nvidia-nvimgcodec-cu13": ['nvidia-nvjpeg; extra == "all"', 'nvidia-nvjpeg2k-cu13; extra == "all"',
                               'nvidia-nvtiff-cu13>=0.8.0; extra == "all"',
                               'nvidia-libnvcomp-cu13<6,>=5; extra == "all"'],
}


def _commands(doc: str, start: str) -> list[list[str]]:
    lines = Path(ROOT, "docs", doc).read_text().splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.startswith(start)]


def _requirements(words) -> set[str]:
    """The requirement arguments of a pip command line (no flags, no flag values, no wheel files)."""
    out, skip = set(), False
    for w in words[2:]:
        if skip or w.startswith("-"):
            skip = not skip and w in VALUE_FLAGS
            continue
        if not w.startswith(("wheels/", "dist/", "dali_video-")):
            out.add(str(Requirement(w)))
    return out


def _named(requirements) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, requirements)}


def _sets() -> dict[str, set[str]]:
    project, extras = PYPROJECT["project"], PYPROJECT["project"]["optional-dependencies"]
    cuda12 = [r for r in project["dependencies"] if canonicalize_name(Requirement(r).name) not in TF]
    cuda13 = [r for r in cuda12 if canonicalize_name(Requirement(r).name) not in DALI_CUDA12]
    cuda13 += PYPROJECT["tool"]["dali-video"]["dali-cuda13"] + extras["cuda13-headers"]
    return {k: {str(Requirement(r)) for r in v} for k, v in (("cuda12", cuda12), ("cuda13", cuda13),
            ("cuda12-headers", extras["cuda12-headers"]), ("cuda13-headers", extras["cuda13-headers"]))}


def test_the_install_lines_are_pyprojects_pins():
    sets = _sets()
    download = {("cuda13" if "nvidia-dali-cuda130==2.4.0" in words else "cuda12"): words
                for words in _commands("gpu-hosts.md", "pip download") if "--no-binary=:all:" not in words
                and not any(w.endswith("[cuda]") for w in words)}
    assert {k: _requirements(w) for k, w in download.items()} == {"cuda12": sets["cuda12"], "cuda13": sets["cuda13"]}
    host = [w for w in _commands("gpu-hosts.md", "pip install --no-index") if _requirements(w)]
    assert [_requirements(w) for w in host] == [sets["cuda12"], {
        str(Requirement(r)) for r in PYPROJECT["project"]["optional-dependencies"]["tf-plugin"]}]
    install = [_requirements(w) for w in _commands("install.md", "pip install") if "--no-deps" not in w]
    assert sets["cuda12"] in install and sets["cuda12-headers"] in install and sets["cuda13-headers"] in install
    wheel = f"dali_video-{PYPROJECT['project']['version']}-py3-none-"
    text = Path(ROOT, "docs", "gpu-hosts.md").read_text() + Path(ROOT, "docs", "install.md").read_text()
    assert all(name.startswith(wheel) for name in re.findall(r"dali_video-[^\s/\"\[]+\.whl", text))


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@pytest.mark.parametrize("cuda", ["cuda12", "cuda13"])
def test_the_download_lines_resolve_against_the_pins(cuda):
    """Offline: every pin is met by what this environment installed from it (the lock `make` installs
    and the tests use), and every DALI wheel's own requirement on a pinned package is met by its pin
    (CUDA 12's from the installed METADATA, CUDA 13's as recorded above)."""
    pins = _named(_sets()[cuda])
    version = {}
    for name, req in pins.items():
        exact, installed = [s.version for s in req.specifier if s.operator == "=="], _installed(name)
        version[name] = exact[0] if exact else installed
        assert installed is not None or cuda == "cuda13" and exact, f"{req} is not installed here"
        assert installed is None or req.specifier.contains(installed, prereleases=True), \
            f"{req} is pinned, {name} {installed} installed"
    for name, req in pins.items():
        requires = CUDA13_REQUIRES.get(name) if cuda == "cuda13" else None
        if requires is None and _installed(name) == version[name]:
            requires = metadata.requires(name) or []
        for dep in map(Requirement, requires or []):
            env = {"python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux",
                   "platform_machine": "x86_64"}
            if dep.marker and not any(dep.marker.evaluate({**env, "extra": e}) for e in (req.extras or {""})):
                continue
            dep_name = canonicalize_name(dep.name)
            if dep_name in pins:
                assert dep.specifier.contains(version[dep_name], prereleases=True), f"{name} needs {dep}, pinned " \
                                                                                     f"{version[dep_name]}"
                assert dep.extras <= pins[dep_name].extras, f"{name} needs {dep}, pinned {pins[dep_name]}"
    assert {"cuda12": "nvidia-dali-cuda120", "cuda13": "nvidia-dali-cuda130"}[cuda] in pins


# Where the native reader's CUDA headers come from (dali_video.loader.native.cuda_includes).

def _headers(folder: Path, cudart: int, parts=("cuda_runtime_api.h", "crt/host_config.h", "cuda/std/type_traits")):
    for part in parts:
        (folder / part).parent.mkdir(parents=True, exist_ok=True)
        (folder / part).write_text(f"#define CUDART_VERSION  {cudart}\n" if part == "cuda_runtime_api.h" else "")
    return folder


def test_headers_of_another_cuda_are_passed_over(tmp_path, monkeypatch):
    cuda13, cuda12 = _headers(tmp_path / "13", 13000), _headers(tmp_path / "12", 12050)
    monkeypatch.setattr(native, "dali_cuda", lambda: 12)
    monkeypatch.setattr(native, "_header_candidates", lambda major: iter([("nvcc (/usr/bin/nvcc)", [cuda13]),
                                                                          ("the CUDA 12 header wheels", [cuda12])]))
    assert native.cuda_includes() == ([cuda12], "the CUDA 12 header wheels")


def test_no_headers_names_what_was_found_and_what_to_install(tmp_path, monkeypatch):
    partial = _headers(tmp_path / "tf", 12050, parts=("cuda_runtime_api.h",))
    monkeypatch.setattr(native, "dali_cuda", lambda: 12)
    monkeypatch.setattr(native, "_header_candidates", lambda major: iter([
        ("TensorFlow's wheel", [partial]), ("CUDA_HOME=/opt/cuda-13", [_headers(tmp_path / "13", 13000)]),
        ("the CUDA 12 header wheels", [tmp_path / "absent"])]))
    pins = " ".join(PYPROJECT["project"]["optional-dependencies"]["cuda12-headers"])
    with pytest.raises(RuntimeError, match=re.escape(
            "building dali-video's native reader needs the CUDA 12 headers that DALI's operator.h includes "
            "(cuda_runtime_api.h, crt/host_config.h, cuda/std/type_traits), for DALI 2.4.0 built for CUDA 12, and none "
            "were found (TensorFlow's wheel: lacks crt/host_config.h, cuda/std/type_traits; CUDA_HOME=/opt/cuda-13: "
            "CUDA 13, not 12; the CUDA 12 header wheels: lacks cuda_runtime_api.h, crt/host_config.h, "
            f"cuda/std/type_traits): pip install {pins} (no GPU needed), or set CUDA_HOME to a CUDA 12 toolkit")):
        native.cuda_includes()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH")
def test_nvccs_include_folders_are_what_it_compiles_with():
    folders = native._nvcc_includes(shutil.which("nvcc"))
    assert folders and (folders[0] / "cuda_runtime_api.h").is_file(), folders


def test_the_librarys_name_says_which_cuda_dali_is_built_for(monkeypatch):
    name = native.library_name()
    monkeypatch.setattr(native, "dali_cuda", lambda: 13)
    assert native.library_name() != name


def test_without_dalis_tf_plugin_clip_dataset_names_it(monkeypatch, dataset):
    import nvidia.dali.plugin as plugin

    import dali_video

    monkeypatch.setitem(sys.modules, "nvidia.dali.plugin.tf", None)  # as if the plugin were not installed
    monkeypatch.delattr(plugin, "tf", raising=False)
    with pytest.raises(ImportError, match=r"^dali_video.clip_dataset needs DALI's TensorFlow plugin, which is not "
                                          r"installed here \(.+\): pip install --no-build-isolation "
                                          r"nvidia-dali-tf-plugin-cuda120 at the version of pyproject.toml's "
                                          r"tf-plugin extra \(make setup does\)$"):
        dali_video.clip_dataset(dataset, batch_size=2, clip_len=4, crop_size=32, device="cpu")
