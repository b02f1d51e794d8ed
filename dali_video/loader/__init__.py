"""The library a training script imports: what a clip is (``config``), which clips (``sampling``, the
native reader in ``native``), the DALI pipeline (``pipeline``), the TensorFlow dataset (``dataset``),
GPU memory (``gpu``) and resuming at a clip (``resume``). ``dali_video`` re-exports its public names."""
