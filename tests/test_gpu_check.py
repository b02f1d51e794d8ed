"""dali-video-gpu-check's plumbing, with the GPU pipeline replaced by the CPU one and the CUDA driver by
a stand-in: the report's parity rows, throughput rows next to gpu_resources, the printed table, and a
failed check named with exit status 1. On a GPU host it runs for real in a venv without TensorFlow
(tests/test_no_tensorflow.py, marked gpu)."""
import json

import pytest

from dali_video.tools import gpu_check


class FakeCuda:
    def __init__(self, device=0):
        pass

    def used(self):
        return 0

    def name(self):
        return "NVIDIA H100 80GB HBM3 (stand-in)"


@pytest.fixture
def cpu_as_gpu(monkeypatch):
    """The tool's 'gpu' pipelines built on the CPU (the GPU-only options dropped), one clip length, B=2."""
    build = gpu_check._pipeline

    def on_the_cpu(data, device, clip_len, batch_size, **kw):
        kw.pop("hw_decoder_load", None)
        kw.pop("jpeg_fancy_upsampling", None)
        return build(data, "cpu", clip_len, batch_size, **kw)

    monkeypatch.setattr(gpu_check, "_pipeline", on_the_cpu)
    monkeypatch.setattr(gpu_check, "_Cuda", FakeCuda)
    monkeypatch.setattr(gpu_check, "usable_gpus", lambda: (1, ""))
    monkeypatch.setattr(gpu_check, "_measure_in_process", gpu_check.measure)  # in this process, patched
    monkeypatch.setattr(gpu_check, "hw_decoder", lambda data, name: {"gpu_has_engine": True, "used": True})
    monkeypatch.setattr(gpu_check, "CLIP_LENS", (16,))
    monkeypatch.setattr(gpu_check, "BATCH", 2)


def test_the_report_holds_parity_throughput_and_resources(cpu_as_gpu, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert gpu_check.main(["--out", str(out), "--seconds", "0.2", "--no-tensorflow"]) == 0
    report = json.loads(out.read_text())
    assert report["ok"] and report["problems"] == [] and report["tensorflow"] is None
    assert [(r["dtype"], r["hw_decoder_load"]) for r in report["parity"]] == [
        ("uint8", 0.0), ("uint8", 0.65), ("float32", 0.0), ("float32", 0.65)]
    for row in report["parity"]:  # the same decoder on both sides here: exact, every frame its number
        assert row["shape"] == [2, 16, 224, 224, 3] and row["max_diff"] == 0 and row["frame_numbers_ok"], row
    labels = report["labels"]  # the heads' labels as the pipeline gives them: multi-hot, then indices
    assert labels["ok"] and len(labels["multi_hot"]["tags"][0]) == 3 and set(labels["multi_hot"]["verb"]) <= {0, 1}
    assert all(len(ids) == 3 for ids in labels["indices"]["tags"])  # up to 3 tags a video (abc[:k % 4]), -1 padded
    assert [r["hw_decoder_load"] for r in report["throughput"]] == [0.0, 0.65]
    for row in report["throughput"]:
        assert row["batches"] >= 3 and row["frames_per_s"] == pytest.approx(row["clips_per_s"] * 16, abs=1)
        assert row["measured"]["threads"] > 0 and set(row["gpu_resources"]) == {"num_threads", "threads",
                                                                               "pinned_bytes", "device_bytes"}
    printed = capsys.readouterr().out
    assert "parity GPU vs CPU" in printed and "hardware JPEG decoder: used (the GPU has one)" in printed
    assert "labels by head, GPU = CPU: True" in printed
    assert printed.rstrip().splitlines()[-1].startswith("dali-video-gpu-check: ok in ")


def test_a_parity_failure_is_named_and_exits_1(cpu_as_gpu, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(gpu_check, "TOLERANCE", {0.0: {"max": -1, "mean": 1.0}})
    out = tmp_path / "report.json"
    assert gpu_check.main(["--out", str(out), "--seconds", "0.1", "--no-tensorflow"]) == 1
    printed = capsys.readouterr().out
    assert ("FAILED: parity T=16 uint8 hw_decoder_load=0.0: max 0.0, mean 0.0 levels (tolerance {'max': -1, "
            "'mean': 1.0}), meta equal True, frames equal True, frame numbers True") in printed
    assert json.loads(out.read_text())["ok"] is False

