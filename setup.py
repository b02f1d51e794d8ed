"""The wheel carries dali-video's native DALI operator, compiled for the DALI that pyproject.toml pins.

Everything else about the package is in pyproject.toml; this file only adds the compile step (the
same build as ``python -m dali_video.loader.native``) and tags the wheel with the platform.
"""
import importlib.util
import warnings
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

NATIVE = Path(__file__).parent / "dali_video" / "loader" / "native"


class BuildWithOperator(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            return  # `make setup` builds it in the source tree: python -m dali_video.loader.native
        # Loaded from its file: importing the dali_video package would need all its dependencies.
        spec = importlib.util.spec_from_file_location("_dali_video_native", NATIVE / "__init__.py")
        native = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(native)
        try:
            path = native.build(folder=Path(self.build_lib, "dali_video", "loader", "native", "_build"))
        except RuntimeError as e:
            if "needs a C++ compiler" not in str(e):
                raise
            # An sdist installed without g++: the package then builds the operator on first use.
            warnings.warn(f"dali-video is installed without its native reader: {e}")
        else:
            print(f"built {path}")


class WithLibrary(Distribution):
    def has_ext_modules(self):
        return True  # the wheel holds a compiled library: a platform wheel


class PlatformWheel(bdist_wheel):
    def get_tag(self):
        # The operator links against DALI's library, not against Python's: any Python 3, this platform.
        return "py3", "none", super().get_tag()[2]


setup(distclass=WithLibrary, cmdclass={"build_py": BuildWithOperator, "bdist_wheel": PlatformWheel})
