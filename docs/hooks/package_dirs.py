"""mkdocs hook: the API reference finds dali_video.writer and dali_video.index_tools where they live.

pyproject.toml installs the repository's top-level writer/ and index_tools/ as dali_video.writer and
dali_video.index_tools (setuptools' package-dir). griffe, which reads the sources for mkdocstrings,
knows no such mapping: it looks for submodules inside dali_video/ only. This hook adds the two folders
to what it scans for dali_video's submodules, under their installed names.
"""
from pathlib import Path

from griffe import ModuleFinder

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = {"writer": ROOT / "writer", "index_tools": ROOT / "index_tools"}  # as in pyproject.toml

_submodules = ModuleFinder.submodules


def _with_package_dirs(self, module):
    found = _submodules(self, module)
    if module.path == "dali_video":
        for name, folder in PACKAGE_DIRS.items():
            found.append(((name,), folder / "__init__.py"))
            found.extend(((name, *parts), path) for parts, path in self.iter_submodules(folder))
    return sorted(found, key=lambda item: len(item[0]))


ModuleFinder.submodules = _with_package_dirs
