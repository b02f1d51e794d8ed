"""dali-video's GPU check (``make gpu-check``): on a GPU host, from a fresh clone, runs
``dali-video-doctor --json``, the GPU tests with ``DALI_VIDEO_REQUIRE_GPU=1`` and
``dali-video-bench SAMPLE_DATA --device gpu --seconds 60 --quick`` (a 60-second GPU read), and writes
one JSON report to send back (README, "GPU hosts").

No machine dali-video is built on has a GPU: this report is how the GPU path is checked.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from ..loader.resources import gpu_resources
from .doctor import dataset_frames


def _run(cmd, timeout, env=None) -> dict:
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        code, out, err = "timeout", e.stdout or "", e.stderr or ""
        out, err = (s.decode() if isinstance(s, bytes) else s for s in (out, err))
    return {"cmd": cmd, "returncode": code, "seconds": round(time.perf_counter() - start, 1),
            "stdout_tail": out[-4000:], "stderr_tail": err[-4000:]}


def _tests(junit: Path) -> list[dict]:
    if not junit.exists():
        return []
    cases = []
    for case in ET.parse(junit).iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        message = next((child.get("message", "") for child in case if child.tag != "system-out"), "")
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time", 0)), "message": message[:2000]})
    return cases


# The bench's defaults, at a crop the sample data's 160x120 frames hold.
BATCH, CLIP_LEN, CROP = 8, 32, 112


def gpu_read(data, seconds: float, out: Path) -> tuple[dict, bool]:
    """``dali-video-bench --device gpu --seconds`` on ``data``: its dali_video row with the frame size and
    ``gpu_resources`` there, and the bench's whole JSON; or, when the bench failed, its run. True when it
    measured."""
    run = _run([sys.executable, "-m", "dali_video.tools.bench", str(data), "--device", "gpu", "--seconds",
                str(seconds), "--quick", "--out", str(out), "--batch-size", str(BATCH), "--clip-len", str(CLIP_LEN),
                "--crop-size", str(CROP)], seconds + 300)
    results = out / "bench.json"
    if run["returncode"] != 0 or not results.exists():
        return run, False
    bench = json.loads(results.read_text())
    hw, _ = dataset_frames(data)
    return {**bench["systems"]["dali_video"], "device": bench["device"], "frame_hw": hw,
            "gpu_resources": gpu_resources(CLIP_LEN, hw, BATCH, crop_size=CROP), "bench": bench}, True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dali_video.tools.gpu_check", description=__doc__)
    p.add_argument("--out", default="gpu-check.json", help="the report (default gpu-check.json)")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the GPU read (default 60)")
    args = p.parse_args(argv)
    from .sample_data import sample_dataset

    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="dali-video-gpu-check-") as tmp:
        doctor_json = Path(tmp) / "doctor.json"
        report["doctor_run"] = _run([sys.executable, "-m", "dali_video.tools.doctor", "--json", str(doctor_json)], 600)
        report["doctor"] = json.loads(doctor_json.read_text()) if doctor_json.exists() else None
        junit = Path(tmp) / "tests.xml"
        report["tests_run"] = _run([sys.executable, "-m", "pytest", "-q", "-rA", "-m", "gpu", "tests",
                                    f"--junitxml={junit}"], 600, env={"DALI_VIDEO_REQUIRE_GPU": "1"})
        report["tests"] = _tests(junit)
        report["gpu_read"], measured = gpu_read(sample_dataset(), args.seconds, Path(tmp) / "bench")
    report["ok"] = bool(report["doctor"] and report["doctor"]["ok"] and report["tests"] and measured
                        and all(t["outcome"] == "passed" for t in report["tests"]))
    tmp = f"{args.out}.tmp"
    Path(tmp).write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, args.out)
    print(f"gpu-check: {'ok' if report['ok'] else 'PROBLEMS'}; send {args.out} (README, GPU hosts)")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
