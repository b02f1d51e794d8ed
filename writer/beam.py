"""The writer as an Apache Beam pipeline (``dali-video-write --runner beam``).

    Create(shard plans left to write) -> Reshuffle -> Map(write_shard) -> ToList -> Map(write_manifests)

One element per shard: a PCollection holds shard plans and small results, never video bytes (a
worker encodes and writes its shard's videos one at a time). Every shard is written by the same
``write_shard`` as the local writer, so the output is the same bytes whatever the runner and the
number of workers. The videos must lie on a filesystem that every worker and the machine that
starts the job see at the same paths; the output may also be an ``s3://`` or ``gs://`` URL.
"""
from __future__ import annotations

import json
import logging

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions, WorkerOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner.fn_runner import ExtendedProvisionInfo, FnApiRunner
from apache_beam.runners.portability.portable_runner import JobServiceHandle
from apache_beam.runners.runner import PipelineState

from ..index_tools import format as fmt
from ..index_tools import storage

from .write import DatasetPlan, ShardResult, WriteError, write_manifests, write_shard

log = logging.getLogger(__name__)
NAMESPACE = "dali_video"


def _counts(result: ShardResult) -> dict[str, int]:
    if result.reused:
        return {"shards_reused": 1}
    return {"shards_written": 1, "videos_written": result.videos, "frames_written": result.frames,
            "videos_skipped": len(result.failures)}


def _write_counted(shard, out_dir: str, opts, on_error: str) -> ShardResult:
    # isolate: a decoder that crashes on one file becomes a reported failure, as in the local
    # writer, instead of killing the Beam worker and with it the job.
    result = write_shard(shard, out_dir, opts, on_error=on_error, isolate=True)
    for name, n in _counts(result).items():
        Metrics.counter(NAMESPACE, name).inc(n)
    return result


def _write_manifests(results, plan: DatasetPlan) -> None:
    write_manifests(plan, results)


def pipeline(beam_args, workers: int) -> beam.Pipeline:
    """A pipeline with ``beam_args`` as its options; without ``--runner``, ``workers`` local processes.

    Locally that is the DirectRunner's batch engine, the FnApiRunner, set up as the DirectRunner
    sets it up (the workers get the pipeline options, and log warnings only unless these say
    otherwise) but named directly: the DirectRunner first tries Prism, a binary it downloads,
    which ignores ``direct_running_mode``.
    """
    options = PipelineOptions(list(beam_args))
    if options.view_as(StandardOptions).runner is not None:
        return beam.Pipeline(options=options)
    direct = options.view_as(DirectOptions)
    direct.direct_num_workers, direct.direct_running_mode = workers, "multi_processing"
    worker = options.view_as(WorkerOptions)
    worker.default_sdk_harness_log_level = worker.default_sdk_harness_log_level or "WARNING"
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return beam.Pipeline(runner=FnApiRunner(provision_info=info), options=options)


def write_with_beam(plan: DatasetPlan, *, workers: int, beam_args=()) -> dict:
    """Run ``plan`` as a Beam pipeline; return the manifests by split (read back from the output)."""
    if not plan.todo:  # every shard complete (a resumed run): nothing for workers to do
        return write_manifests(plan, [])
    p = pipeline(beam_args, workers)
    if isinstance(p.runner, FnApiRunner) and len(plan.shards) < workers:
        log.warning("%d shards for %d workers: a shard is the unit of work, so %d workers idle; "
                    "plan more shards (--num-shards, --shard-size)", len(plan.shards), workers,
                    workers - len(plan.shards))
    _ = (p
         | "Shards" >> beam.Create(plan.todo)
         | "Spread" >> beam.Reshuffle()  # else a runner may keep Create's one bundle on one worker
         | "WriteShard" >> beam.Map(_write_counted, plan.out_dir, plan.opts, plan.on_error)
         | "AllResults" >> beam.combiners.ToList()
         | "WriteManifests" >> beam.Map(_write_manifests, plan))
    try:
        result = p.run()
        state = result.wait_until_finish()
    except Exception as e:  # noqa: BLE001 - runners raise their own types; the worker's error is in the text
        raise WriteError(f"the Beam pipeline failed: {_last_line(e)}") from e
    if state != PipelineState.DONE:
        raise WriteError(f"the Beam pipeline ended in state {state}")
    counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    log.info("beam metrics: %s", ", ".join(f"{c.key.metric.name}={c.committed}" for c in
                                           sorted(counters, key=lambda c: c.key.metric.name)))
    return {split: json.loads(storage.read(fmt.manifest_path(plan.out_dir, split))) for split in plan.splits}


def _last_line(e: Exception) -> str:
    """The worker's own error: runners wrap it in a traceback whose last line it is."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__
