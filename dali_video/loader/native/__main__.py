"""python -m dali_video.loader.native: build the native reader for the installed DALI (a no-op when built)."""
from . import _sanitize, build

print(build(_sanitize()))
