"""Independent study jobs (train, robustness, sharpness), run on Ray or in-process, resumable.

A :class:`Job` names a registered job *kind* (a function ``fn(**params) -> result dict``) and a
directory. A job is finished when ``DIR/result.json`` exists: it is written atomically after the
function returns, so a killed job has no result file and runs again (resuming from its own
checkpoints where the kind supports it). ``DIR/job.json``, written when the job starts, holds its
kind and parameters: a directory is reused (finished, or resumed) only by the same work, and a job
with other parameters is refused with an error instead of silently taking the other's result.
:func:`run_jobs` skips finished jobs, runs the others (at most ``max_parallel`` at once, each as soon
as the jobs it comes ``after`` have succeeded), reports a failure and retries it once, and returns one
:class:`JobOutcome` per job; a job whose prerequisite failed is reported failed without running.

Executors: ``"ray"`` (default; a local Ray instance with one CPU per job slot, or the cluster at
``ray_address``) and ``"local"`` (in this process, one after another; for debugging and fast tests).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sharprl.checkpoint import atomic_write_text
from sharprl.errors import SharprlError

RESULT_FILE = "result.json"
WORK_FILE = "job.json"
EXECUTORS = ("ray", "local")
JobFn = Callable[..., dict[str, Any]]
_KINDS: dict[str, JobFn] = {}


def register_kind(kind: str, fn: JobFn) -> None:
    """Make ``fn(out_dir=..., **params) -> dict`` runnable as jobs of ``kind`` (in importing processes)."""
    _KINDS[kind] = fn


@dataclasses.dataclass(frozen=True)
class Job:
    """One unit of work of a study."""

    name: str  # unique, human-readable id (used in reports and logs)
    kind: str  # registered job kind (see register_kind)
    out_dir: str  # directory owned by the job; DIR/result.json marks it finished
    params: tuple[tuple[str, Any], ...] = ()  # keyword arguments of the kind's function (JSON-able)
    after: tuple[str, ...] = ()  # names of earlier jobs of the same run_jobs call that must succeed first

    @property
    def result_path(self) -> Path:
        return Path(self.out_dir) / RESULT_FILE

    @property
    def work_path(self) -> Path:
        return Path(self.out_dir) / WORK_FILE

    def work(self) -> dict[str, Any]:
        """Kind and parameters, as stored in job.json (JSON types: tuples become lists)."""
        return json.loads(json.dumps({"kind": self.kind, **self.kwargs()}))

    def is_done(self) -> bool:
        return self.result_path.is_file()

    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)


def make_job(name: str, kind: str, out_dir: str | Path, **params: Any) -> Job:
    """A Job with keyword parameters (sorted, so equal jobs compare equal)."""
    return Job(name, kind, str(out_dir), tuple(sorted(params.items())))


@dataclasses.dataclass(frozen=True)
class JobOutcome:
    """What happened to one job in a run_jobs call."""

    job: Job  # the job
    status: str  # "skipped" (already finished), "done", "failed" (after the retry), "pending" (not run)
    attempts: int  # attempts made in this call (0 when skipped)
    result: dict[str, Any] | None  # the job's result (None when failed)
    errors: tuple[str, ...] = ()  # one line per failed attempt


def check_same_work(job: Job) -> None:
    """Raise SharprlError when ``job``'s directory was started by a job with another kind or parameters.

    Directories without job.json (written before it existed) are taken as they are.
    """
    if not job.work_path.is_file():
        return
    try:
        before = json.loads(job.work_path.read_text())
    except (OSError, ValueError) as exc:
        raise SharprlError(f"{job.work_path}: unreadable job parameters ({exc})") from None
    now = job.work()
    if before != now:
        diffs = "; ".join(
            f"{key} {str(before.get(key))[:200]} there, {str(now.get(key))[:200]} now"
            for key in sorted(set(before) | set(now))
            if before.get(key) != now.get(key)
        )
        raise SharprlError(
            f"{job.out_dir}: job {job.name!r} ran there with other settings ({diffs}); "
            "use another output directory, or delete that one to redo the job"
        )


def read_result(job: Job) -> dict[str, Any]:
    """The stored result of a finished job."""
    try:
        return json.loads(job.result_path.read_text())
    except (OSError, ValueError) as exc:
        raise SharprlError(f"{job.result_path}: unreadable job result ({exc})") from None


def execute(job: Job) -> dict[str, Any]:
    """Run one job in this process and write its result file atomically; returns the result."""
    if job.kind not in _KINDS:
        # kinds of the study are registered when sharprl.study is imported (also in Ray workers)
        import sharprl.study  # noqa: F401
    if job.kind not in _KINDS:
        raise SharprlError(f"job {job.name}: unknown kind {job.kind!r}")
    from sharprl.cli import enable_compilation_cache  # persistent XLA cache: a resumed job compiles faster

    enable_compilation_cache()
    check_same_work(job)
    Path(job.out_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(job.work_path, json.dumps(job.work(), indent=1, sort_keys=True))
    start_s = time.monotonic()
    result = dict(_KINDS[job.kind](out_dir=job.out_dir, **job.kwargs()))
    result["job_wall_s"] = round(time.monotonic() - start_s, 2)
    atomic_write_text(job.result_path, json.dumps(result, indent=1, sort_keys=True, default=float))
    return result


def _error_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:500]


LogFn = Callable[[str], None]


def run_jobs(
    jobs: Sequence[Job],
    executor: str = "ray",
    ray_address: str | None = None,
    max_parallel: int | None = None,
    log: LogFn = print,
) -> list[JobOutcome]:
    """Run every unfinished job (each retried once on failure); finished ones are skipped."""
    if executor not in EXECUTORS:
        raise SharprlError(f"unknown executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise SharprlError(f"duplicate job names in {names}")
    for i, job in enumerate(jobs):
        missing = [a for a in job.after if a not in names[:i]]
        if missing:
            raise SharprlError(f"job {job.name!r} comes after {missing}, which are not earlier jobs of this call")
    for job in jobs:
        check_same_work(job)  # before anything runs: a conflict stops the whole call
    outcomes: dict[str, JobOutcome] = {}
    todo = []
    for job in jobs:
        if job.is_done():
            outcomes[job.name] = JobOutcome(job, "skipped", 0, read_result(job))
            log(f"[skip] {job.name}: finished earlier")
        else:
            todo.append(job)
    if todo:
        slots = max(1, max_parallel or os.cpu_count() or 1)
        run = _run_ray if executor == "ray" else _run_local
        outcomes.update(run(todo, slots, ray_address, log, dict(outcomes)))
    return [outcomes[job.name] for job in jobs]


def _run_local(
    todo: list[Job], slots: int, ray_address: str | None, log: LogFn, out: dict[str, JobOutcome]
) -> dict[str, JobOutcome]:
    """Run ``todo`` one after another; ``out`` holds the outcomes so far (the skipped jobs) and grows."""
    del slots, ray_address
    for job in todo:
        blocked = _failed_prerequisite(job, out)
        if blocked:
            out[job.name] = _not_run(job, blocked, log)
            continue
        errors: list[str] = []
        for attempt in (1, 2):
            log(f"[start] {job.name} (attempt {attempt})")
            try:
                result = execute(job)
            except Exception as exc:  # noqa: BLE001  (any job failure is reported, then retried once)
                errors.append(_error_line(exc))
                log(f"[fail] {job.name} attempt {attempt}: {errors[-1]}")
                if os.environ.get("SHARPRL_JOB_TRACEBACK"):
                    log(traceback.format_exc())
                continue
            log(f"[done] {job.name} in {result['job_wall_s']} s")
            out[job.name] = JobOutcome(job, "done", attempt, result, tuple(errors))
            break
        else:
            out[job.name] = JobOutcome(job, "failed", 2, None, tuple(errors))
    return out


def _run_ray(
    todo: list[Job], slots: int, ray_address: str | None, log: LogFn, out: dict[str, JobOutcome]
) -> dict[str, JobOutcome]:
    """Run ``todo`` on Ray, ``slots`` at a time; ``out`` holds the outcomes so far (the skipped jobs) and grows."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local instance, no dashboard
        os.environ.setdefault("RAY_worker_niceness", "0")  # Ray's default (15) starves jobs on a busy machine
        # Ray's memory monitor kills tasks when the NODE is near full, whoever uses the memory (seen here:
        # other processes pushed the machine over 95 % and every training job was killed); leave that to the OS
        os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
        if ray_address:
            ray.init(address=ray_address, log_to_driver=False)
        else:
            ray.init(num_cpus=slots, include_dashboard=False, log_to_driver=False, configure_logging=False)
    remote = ray.remote(num_cpus=1, max_retries=0)(execute)
    errors: dict[str, list[str]] = {job.name: [] for job in todo}
    attempts: dict[str, int] = {}
    pending: dict[Any, Job] = {}
    queue = list(todo)
    try:
        while queue or pending:
            while queue and len(pending) < slots:
                job = next((j for j in queue if _failed_prerequisite(j, out) or _ready(j, out)), None)
                if job is None:  # every queued job waits for a running one
                    break
                queue.remove(job)
                blocked = _failed_prerequisite(job, out)
                if blocked:
                    out[job.name] = _not_run(job, blocked, log)
                    continue
                if job.is_done():  # finished meanwhile by another invocation
                    out[job.name] = JobOutcome(job, "skipped", 0, read_result(job))
                    continue
                attempts[job.name] = attempts.get(job.name, 0) + 1
                log(f"[start] {job.name} (attempt {attempts[job.name]}, ray)")
                pending[remote.remote(job)] = job
            if not pending:
                if queue:  # cannot happen: prerequisites are earlier jobs, so the earliest queued job is ready
                    raise SharprlError(f"jobs {[j.name for j in queue]} wait for jobs that never run")
                continue
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)  # a timeout lets Ctrl-C through
            if not ready:
                continue
            job = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001  (RayTaskError wraps the job's own exception)
                cause = getattr(exc, "cause", None) or exc
                errors[job.name].append(_error_line(cause))
                log(f"[fail] {job.name} attempt {attempts[job.name]}: {errors[job.name][-1]}")
                if attempts[job.name] < 2:
                    queue.append(job)
                else:
                    out[job.name] = JobOutcome(job, "failed", 2, None, tuple(errors[job.name]))
                continue
            log(f"[done] {job.name} in {result['job_wall_s']} s")
            out[job.name] = JobOutcome(job, "done", attempts[job.name], result, tuple(errors[job.name]))
    finally:
        if started_here:
            ray.shutdown()
    return out


def _ready(job: Job, out: dict[str, JobOutcome]) -> bool:
    """True when every job ``job`` comes after has a result (outcomes of this call, or skipped)."""
    return all(a in out and out[a].result is not None for a in job.after)


def _failed_prerequisite(job: Job, out: dict[str, JobOutcome]) -> str | None:
    """The name of a job ``job`` comes after that failed in this call, or None."""
    return next((a for a in job.after if a in out and out[a].result is None), None)


def _not_run(job: Job, prerequisite: str, log: LogFn) -> JobOutcome:
    error = f"not run: it needs {prerequisite!r}, which failed"
    log(f"[fail] {job.name}: {error}")
    return JobOutcome(job, "failed", 0, None, (error,))


def collect(jobs: Sequence[Job]) -> list[JobOutcome]:
    """Outcomes without running anything: finished jobs as "skipped", the others as "pending"."""
    for job in jobs:
        check_same_work(job)
    return [
        JobOutcome(j, "skipped", 0, read_result(j)) if j.is_done() else JobOutcome(j, "pending", 0, None) for j in jobs
    ]


def failures(outcomes: Sequence[JobOutcome]) -> list[JobOutcome]:
    """The outcomes that failed after their retry, or are still pending."""
    return [o for o in outcomes if o.status in ("failed", "pending")]
