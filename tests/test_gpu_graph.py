"""The GPU graph's CPU twins: one decoder and the regroup into clips, the resources a GPU pipeline takes,
the cores a process may use, and the input-wait monitor. Run here, without a GPU."""
import numpy as np
import pytest

import dali_video


@pytest.mark.parametrize("clip_len", [8, 32])
def test_one_decoder_regrouped_into_clips_gives_the_frame_layouts_pixels(dataset, clip_len):
    kw = dict(batch_size=2, clip_len=clip_len, crop_size=32, device="cpu", seed=2, dtype="uint8", std=(1, 1, 1),
              short_videos="loop", with_meta=True)
    with dali_video.clip_pipeline(dataset, layout="frames", **kw) as f, \
            dali_video.clip_pipeline(dataset, layout="clips", **kw) as c:
        assert c.pipeline.serialize().count(b"decoders__Image") == 1  # not one per frame position
        for _ in range(2):
            frames, frame_meta = (np.asarray(o.as_tensor()) for o in f.pipeline.run())
            clips, labels, meta = (np.asarray(o.as_tensor()) for o in c.pipeline.run())
            assert clips.shape == (2, clip_len, 32, 32, 3)
            assert np.array_equal(clips.reshape(frames.shape), frames)
            assert np.array_equal(meta, frame_meta[::clip_len]) and np.array_equal(labels, meta[:, 5])
