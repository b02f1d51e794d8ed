"""dali-video-bench and the baselines it measures dali-video against."""
