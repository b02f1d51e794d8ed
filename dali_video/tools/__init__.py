"""The command-line tools around the library: dali-video-train (``train``), dali-video-bench
(``bench``, with its baselines), dali-video-doctor (``doctor``) and the sample data they use."""
