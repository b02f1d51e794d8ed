"""The documentation: the MkDocs site builds with --strict, and the Python examples of the README
and of docs/ run as written, in a folder holding the `videos/` and `data/` they name."""
import functools
import importlib.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dali_video
from tests.conftest import ROOT, has_gpu, run_module
from dali_video.tools.sample_data import make_folder_dataset

BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.M | re.S)
# Examples that hand the writer's shards to other engines run where those engines are installed.
ENGINES = {"dask": "dask", "ray": "ray", "sc": "pyspark"}


def _examples():
    seen = set()
    for path in [Path(ROOT, "README.md"), *sorted(Path(ROOT, "docs").glob("*.md"))]:
        text = path.read_text()
        for m in BLOCK.finditer(text):
            code = textwrap.dedent(m.group(2))
            if code not in seen:  # the README's quick start is also the loading guide's first example
                seen.add(code)
                line = text.count("\n", 0, m.start()) + 2
                yield pytest.param(code, id=f"{path.relative_to(ROOT)}:{line}")


def test_the_docs_build_strictly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", tmp_path / "site"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "dali_video.clip_dataset" in (tmp_path / "site" / "reference" / "index.html").read_text()


def test_the_readmes_install_section_names_the_cloud_extra():
    """29.12: s3:// and gs:// need the `cloud` extra, which the README's Install section did not name."""
    import tomllib

    extras = tomllib.loads(Path(ROOT, "pyproject.toml").read_text())["project"]["optional-dependencies"]
    readme = Path(ROOT, "README.md").read_text()
    install = readme[readme.index("## Install"):readme.index("\n## ", readme.index("## Install") + 1)]
    assert "cloud" in extras and 'whl[cloud]"' in install and '".[cloud]"' in install
    assert "`s3://` or `gs://` need the `cloud` extra" in install


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """videos/ and data/ as the examples name them: frames large enough for their 224-pixel crops, videos long
    enough for their recipes (x3d_m's 16 frames 5 apart at 30 fps read 66 frames at 25 fps)."""
    root = tmp_path_factory.mktemp("examples")
    make_folder_dataset(root / "videos", videos_per_class=2, frames=(66, 70), height=256, width=288)
    run_module("dali_video.writer", root / "videos", root / "data", "--resize", "0", "--workers", "1")
    return root


def _build_and_compile():
    """The reader's own model, which the examples assume: the smallest that fits clips to labels."""
    import keras

    model = keras.Sequential([keras.layers.GlobalAveragePooling3D(), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.mark.slow
@pytest.mark.parametrize("code", _examples())
def test_the_examples_run_as_written(code, workdir, monkeypatch):
    missing = [module for name, module in ENGINES.items()
               if re.search(rf"\b{name}\.", code) and importlib.util.find_spec(module) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}, which dali-video does not depend on")
    if not has_gpu():  # the same examples on the CPU fallback: one argument, as the docs say
        code = code.replace('device="gpu"', 'device="cpu"')
        for name in ("clip_dataset", "clip_pipeline"):  # and where they leave the device to the default
            monkeypatch.setattr(dali_video, name, functools.partial(getattr(dali_video, name), device="cpu"))
    monkeypatch.chdir(workdir)
    exec(compile(code, "<example>", "exec"), {"model": _build_and_compile(), "build_and_compile": _build_and_compile})


@pytest.mark.slow
def test_the_resume_example_records_its_run_and_refuses_another(workdir, tmp_path, monkeypatch):
    """29.10: docs/long-runs.md's example saved "run": null, so a restart with another seed went on."""
    from dali_video.loader.resume import read_position

    code = next(textwrap.dedent(m.group(2)) for m in BLOCK.finditer(Path(ROOT, "docs", "long-runs.md").read_text()))
    (tmp_path / "data").symlink_to(workdir / "data")
    monkeypatch.chdir(tmp_path)
    if not has_gpu():
        monkeypatch.setattr(dali_video, "clip_dataset", functools.partial(dali_video.clip_dataset, device="cpu"))
    exec(compile(code.replace("epochs=10", "epochs=1"), "<example>", "exec"), {"build_and_compile": _build_and_compile})
    position = read_position("ckpt/")
    assert position["epoch"] == 1 and position["run"]["seed"] == 0 and position["run"]["dataset"]
    other = code.replace("batch, seed, clips = 8, 0,", "batch, seed, clips = 8, 1,")
    assert other != code
    with pytest.raises(ValueError, match=r"ckpt/ holds another run: its seed was 0, this run's is 1; resume it "
                                         r"with the same seed, or pass another checkpoint folder"):
        exec(compile(other, "<example>", "exec"), {"build_and_compile": _build_and_compile})
