"""The library a training script imports: what a clip is (``config``), which clips (``sampling``, the
native reader in ``native``), the DALI pipeline (``pipeline``), the TensorFlow dataset (``dataset``),
GPU memory (``gpu``), per-video averages of evaluation predictions (``evaluation``) and resuming at a
clip (``resume``). ``dali_video`` re-exports its public names."""
