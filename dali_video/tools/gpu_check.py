"""dali-video's GPU check (``make gpu-check``): on a GPU host, from a fresh clone, runs
``dali-video-doctor --json``, the GPU tests with ``DALI_VIDEO_REQUIRE_GPU=1`` and a 60-second GPU
read of the sample data, and writes one JSON report to send back (README, "GPU hosts").

No machine dali-video is built on has a GPU: this report is how the GPU path is checked.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path


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


RATE = """
import json, re, sys, time
import dali_video
dali_video.enable_memory_growth()
def threads():
    return int(re.search(r"Threads:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
before = threads()
ds = dali_video.clip_dataset(sys.argv[1], device="gpu", batch_size=8, clip_len=32, crop_size=224, seed=0)
it = iter(ds)
next(it)
n, start = 0, time.perf_counter()
while time.perf_counter() - start < float(sys.argv[2]):
    clips, labels = next(it)
    n += 1
_ = clips.numpy()  # wait for the last batch
seconds = time.perf_counter() - start
loader = ds._dali_video_loader
hw = (int(loader.table.height.max()), int(loader.table.width.max()))
print("RATE " + json.dumps({"clips_per_s": n * 8 / seconds, "frames_per_s": n * 8 * 32 / seconds, "batches": n,
      "device": clips.device, "threads_started": threads() - before, "frame_hw": hw,
      "gpu_resources": dali_video.gpu_resources(32, hw, 8, crop_size=224)}))
"""


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
    rate = _run([sys.executable, "-c", RATE, str(sample_dataset()), str(args.seconds)], args.seconds + 300)
    found = re.search(r"^RATE (.*)$", rate["stdout_tail"], re.M)
    report["gpu_read"] = json.loads(found.group(1)) if found else rate
    report["ok"] = bool(report["doctor"] and report["doctor"]["ok"] and report["tests"] and found
                        and all(t["outcome"] == "passed" for t in report["tests"]))
    tmp = f"{args.out}.tmp"
    Path(tmp).write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, args.out)
    print(f"gpu-check: {'ok' if report['ok'] else 'PROBLEMS'}; send {args.out} (README, GPU hosts)")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
