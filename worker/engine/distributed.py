"""Multi-GPU runs: `accelerate launch` (DDP) across `spec.gpus` processes of one machine.

The worker that claimed the run stays what it is for a one-GPU run: it holds the lease, records the end,
and hands the run back on shutdown (worker.engine.train). For `gpus > 1` it runs

    python -m accelerate.commands.launch --multi_gpu --num_processes N ... -m worker.engine.distributed RUN_ID

as a child process (`train_distributed`), writes its output into train.log and waits. Each rank process
(`main`) builds the same model and data with the same steps (worker.engine.steps); Trainer wraps the model in
DDP and splits the batches. Rank 0 alone reports: metric rows and events, the adapter, the evaluation. It reads the
cancel flag as a one-GPU run does, and `RankSync` hands its decision to the other ranks every step, so all
of them stop (and save the hand-back checkpoint) at the same step instead of waiting in the next all-reduce.
Each rank writes how it ended into `<run_dir>/ranks/<rank>.json`; the worker maps that onto the run's end.

Without CUDA the ranks train on the CPU over gloo (that is how the tests run them).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from sqlalchemy.orm import Session, sessionmaker
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from app import runs
from app.config import get_settings
from app.db import get_sessionmaker
from app.models import RunStatus
from app.processes import free_port
from app.rundir import RunDir
from app.schemas import RunSpec
from worker.engine import fastpaths
from worker.engine.callbacks import MetricsCallback
from worker.engine.configs import read_spec
from worker.engine.failures import explain, explained
from worker.engine.objectives import named_values
from worker.engine.steps import build_trainer, final_evaluation, fit, prepare_training, report_params, save_results
from worker.errors import RunError
from worker.runtime.lease import WORKER_STOPPING, Lease, heartbeat_every, resume_point
from worker.runtime.publisher import LIVE_LINGER_S, EventPublisher

log = logging.getLogger(__name__)

STOP_GRACE_S = 30.0  # after SIGTERM, how long the launcher has to stop its ranks before it is killed
PR_SET_PDEATHSIG = 1


def check_gpus(spec: RunSpec) -> None:
    """Refuse more GPUs than this worker sees, naming the field to change. (QLoRA, prompt tuning and packing
    all train under DDP, on GPUs and on the CPU alike.)"""
    if torch.cuda.is_available() and torch.cuda.device_count() < spec.gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise RunError(
            f"gpus: the run asks for {spec.gpus} GPUs and this worker sees {torch.cuda.device_count()}"
            + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
            + "; lower gpus or pin the run to a worker with that many"
        )


# --- the worker's side: launch the ranks, watch them, read how they ended


def train_distributed(
    spec: RunSpec,
    *,
    run_dir: RunDir,
    sessions: sessionmaker[Session],
    publisher: EventPublisher,
    lease: Lease,
) -> RunStatus:
    """Train the run across `spec.gpus` processes; the status it ended with (a failure raises RunError).
    Each rank writes how it ended into the run directory's ranks/<rank>.json; ranks/stop asks them to stop."""
    check_gpus(spec)
    # Only this process may drop partial checkpoints and the metric points past the last complete one.
    checkpoint = resume_point(run_dir, sessions, publisher)
    results = run_dir.ranks_dir
    shutil.rmtree(results, ignore_errors=True)  # the ends of an earlier attempt
    results.mkdir(parents=True)
    command = launch_command(spec, run_id=run_dir.run_id, worker=lease.worker, checkpoint=checkpoint)
    log.info("launching %d training processes: %s", spec.gpus, " ".join(command))
    with run_dir.log_file.open("ab") as output:  # the ranks' log lines go straight into train.log
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=_child_env(spec),
            cwd=Path(__file__).resolve().parent.parent,
            start_new_session=True,  # a Ctrl-C meant for the worker reaches the ranks through stop_ranks only
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only a prctl call between fork and exec
        )
    try:
        code = _wait(process, lease, run_dir.stop_file)
    finally:
        stop_ranks(process)  # on any way out of here (an error, a shutdown), no trainer is left behind
    if lease.lost:
        return RunStatus.interrupted  # stopped above; the run's new worker resumes it
    return _outcome(spec, code, results)


def launch_command(spec: RunSpec, *, run_id: str, worker: str, checkpoint: Path | None) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        # --cpu would ask for mpirun; --multi_gpu is torchrun's launcher, and the ranks pick gloo without CUDA.
        "--multi_gpu",
        f"--num_processes={spec.gpus}",
        "--num_machines=1",
        "--mixed_precision=no",  # Trainer sets it from the spec's precision
        "--dynamo_backend=no",
        f"--main_process_port={free_port()}",
        "--monitor_interval=1",
        "-m",
        "worker.engine.distributed",
        run_id,
        f"--worker={worker}",
    ]
    if checkpoint is not None:
        command.append(f"--resume-from={checkpoint}")
    return command


def _child_env(spec: RunSpec) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"  # TrainingArguments then sets up DDP over gloo on the CPU
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // spec.gpus)))
    return env


def _die_with_parent() -> None:
    """In the launcher, before exec: SIGTERM when the worker dies, even by SIGKILL (Linux only)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _wait(process: subprocess.Popen[bytes], lease: Lease, stop_file: Path) -> int:
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return process.wait(timeout=0.5)
        if lease.lost:
            log.warning("lease lost; stopping the training processes (the run's new worker resumes it)")
            stop_ranks(process)
        elif WORKER_STOPPING.is_set() and not stop_file.exists():
            stop_file.touch()  # rank 0 reads it at its next step: a checkpoint there, then back to the queue


def stop_ranks(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the launcher, which stops its ranks; SIGKILL to whatever is left after a grace period."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the ranks watch the launcher and exit with it (_exit_orphaned)
        process.wait()


def _outcome(spec: RunSpec, code: int, results: Path) -> RunStatus:
    ends = {}
    for path in sorted(results.glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            ends[int(path.stem)] = json.loads(path.read_text(encoding="utf-8"))
    first = ends.get(0)
    if first is not None and first["status"] != RunStatus.failed.value:
        return RunStatus(first["status"])
    failures = [end for _rank, end in sorted(ends.items()) if end["status"] == RunStatus.failed.value]
    if failures:  # rank 0's own when it has one; else the first rank that failed (the others were stopped)
        raise RunError(failures[0]["error"])
    raise RunError(
        f"the {spec.gpus} training processes (gpus: {spec.gpus}) ended with exit code {code} and no result; "
        "train.log shows their output"
    )


# --- a rank's side: python -m worker.engine.distributed RUN_ID, started by accelerate launch


class RankSync(TrainerCallback):
    """Every step, rank 0's decision to stop (and to save first) reaches every rank.

    Rank 0's MetricsCallback decides on a cancel, a lost lease or a worker shutdown; a rank that went on alone
    would wait forever in the next step's gradient all-reduce. One tiny broadcast per step costs nothing
    next to that all-reduce.
    """

    def __init__(self, metrics: MetricsCallback | None, stop_file: Path) -> None:
        self.metrics = metrics  # rank 0's; None on the other ranks
        self.stop_file = stop_file
        self.halted = False  # stopped before max_steps by rank 0: no final evaluation, no adapter

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.metrics is not None and not WORKER_STOPPING.is_set() and self.stop_file.exists():
            WORKER_STOPPING.set()  # MetricsCallback hands the run back at this step's end

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        metrics = self.metrics
        halt = metrics is not None and (metrics.cancelled or metrics.handed_back or metrics.lease_lost)
        flags = torch.tensor(
            [halt, control.should_training_stop, control.should_save], dtype=torch.int64, device=args.device
        )
        dist.broadcast(flags, src=0)
        halt_all, stop, save = (bool(flag) for flag in flags.tolist())
        self.halted = halt_all
        control.should_training_stop, control.should_save = stop, save


def train_rank(spec: RunSpec, run_id: str, worker: str, checkpoint: Path | None) -> RunStatus | None:
    """This rank's share of the run; rank 0 returns how the run ended, the others None."""
    settings = get_settings()
    sessions = get_sessionmaker()
    run_dir = RunDir.of(run_id, settings)
    first = int(os.environ.get("RANK", "0")) == 0
    setup = prepare_training(spec, run_dir)
    publisher: EventPublisher | None = None
    metrics: MetricsCallback | None = None
    lease: Lease | None = None
    if first:
        publisher = EventPublisher(settings.redis_url, run_id, maxlen=settings.stream_maxlen, linger_s=LIVE_LINGER_S)
        # The worker renews the lease; this copy only tells the metric writes whose run it is.
        lease = Lease(
            run_id=run_id, worker=worker, sessions=sessions, every_s=heartbeat_every(settings.lease_timeout_s)
        )
        metrics = MetricsCallback(
            run_id=run_id, sessions=sessions, publisher=publisher, lease=lease, named=named_values(spec)
        )
        report_params(setup.model, run_id, sessions, publisher)
    sync = RankSync(metrics, run_dir.stop_file)
    trainer = build_trainer(setup, spec, *(c for c in (metrics, sync) if c is not None))
    try:
        fit(trainer, checkpoint, metrics)
        if sync.halted:
            if metrics is None or lease is None:
                return None
            return RunStatus.interrupted if lease.lost or metrics.handed_back else RunStatus.cancelled
        details = final_evaluation(trainer, setup, spec, metrics, publisher)
        if publisher is None:
            return None
        save_results(setup, spec, run_dir, sessions, publisher, details)
        return RunStatus.stopped if metrics is not None and metrics.stopped else RunStatus.succeeded
    finally:
        if publisher is not None:
            publisher.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One rank of a multi-GPU run (started by accelerate launch).")
    parser.add_argument("run_id")
    parser.add_argument("--worker", required=True, help="the worker that holds the run's lease")
    parser.add_argument("--resume-from", type=Path, default=None, help="the checkpoint to resume from")
    options = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    _log_to_stderr(rank)
    _exit_orphaned()
    run_dir = RunDir.of(options.run_id)
    result = run_dir.rank_result(rank)
    with get_sessionmaker()() as session:
        run = runs.get_run(session=session, run_id=options.run_id)
        raw_spec, chosen = run.spec, run.fast_paths or []
    try:
        # Its inputs were checked, and its fast paths chosen (worker.engine.fastpaths), by the worker that claimed
        # the run a moment ago: every rank trains with the choices recorded on the run.
        spec = fastpaths.applied(read_spec(raw_spec), chosen)
        status = train_rank(spec, options.run_id, options.worker, options.resume_from)
    except Exception as exc:
        error = explain(exc, raw_spec, run_dir.root)
        log.error("rank %d failed: %s", rank, error, exc_info=not explained(exc, run_dir.root))
        _write(result, {"status": RunStatus.failed.value, "error": error})
        return 1
    if status is not None:
        _write(result, {"status": status.value})
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def _write(path: Path, end: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(end), encoding="utf-8")
    partial.replace(path)  # the worker never reads half a file


def _log_to_stderr(rank: int) -> None:
    """Rank 0 logs as a one-GPU run does (into train.log, through the launcher's output); others warnings only."""
    handler = logging.StreamHandler(sys.stderr)
    label = "" if rank == 0 else f" [rank {rank}]"
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s %(name)s{label}: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.WARNING)
    if not logging.getLogger("transformers").propagate:
        logging.getLogger("transformers").addHandler(handler)
    logging.getLogger("worker").setLevel(logging.INFO if rank == 0 else logging.WARNING)


def _exit_orphaned() -> None:
    """torchrun starts each rank in a session of its own: should the launcher die without stopping the ranks
    (SIGKILL), they exit by themselves instead of training on with nobody watching."""
    launcher = os.getppid()

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(1.0)
        log.error("the launcher (pid %d) is gone; this rank stops", launcher)
        os._exit(1)

    threading.Thread(target=watch, name="loradeck-orphan-watch", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
