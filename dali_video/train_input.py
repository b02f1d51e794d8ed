"""``python -m dali_video.train_input``: dali-video-train (see :mod:`dali_video.tools.train`)."""
import sys

from .tools.train import main

if __name__ == "__main__":
    sys.exit(main())
