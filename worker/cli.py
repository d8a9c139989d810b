"""`loradeck train | estimate | validate-dataset`: the worker's work from a terminal, without the web.

`loradeck` (app.cli) runs this module in a process of its own (`python -m worker.cli ...`), so the web
package never imports the ML libraries. Exit codes: 0 done, 1 the run or the check failed, 2 a bad
spec file or bad arguments, 130 Ctrl-C (143 SIGTERM): the run is then interrupted and can resume.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Read by OpenMP when torch loads: spinning threads crawl when the CPU is shared (see worker.runtime.celery_app).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import yaml  # noqa: E402

from app.schemas import RunSpec  # noqa: E402

EXIT_FAILED, EXIT_BAD_INPUT = 1, 2


class BadSpecFile(Exception):
    """A spec file that cannot be read or validated; `lines` are printed one per line."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def read_spec_file(path: Path, *, loadable: bool = True, **overrides: Any) -> RunSpec:
    """A RunSpec from a YAML or JSON file with the API's fields, checked as the API checks one (the files it
    names anywhere: the allowed roots are the web's); relative paths are from the current directory.
    `loadable`: a local base model must hold its weights and tokenizer (an estimate reads config.json alone)."""
    from app.config import get_settings
    from app.errors import InvalidInput, field_message
    from app.preflight import validate_spec

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadSpecFile([f"{path}: {exc.strerror or exc}"]) from None
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise BadSpecFile(
            [f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}"]
        ) from None
    if not isinstance(raw, dict):
        raise BadSpecFile([f"{path}: expected a mapping of RunSpec fields (base_model, dataset, method, ...)"])
    values = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return validate_spec(values, get_settings(), enforce_roots=False, loadable=loadable)
    except InvalidInput as exc:
        raise BadSpecFile([field_message(error) for error in exc.errors] or [str(exc)]) from None


class ProgressPrinter:
    """Draws a run's events: a progress bar with the loss for metric points, a line for everything else."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bar: Any = None

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event == "metric":
            self._metric(data)
        elif event == "log":
            if "max_steps" in data:  # training begins (or resumes): now the bar knows its length
                self.close()
                self.bar = self._tqdm(
                    total=data["max_steps"], initial=data.get("step", 0), unit="step", dynamic_ncols=True
                )
            for line in data.get("lines", []):
                self._line(line)
        elif event == "status":
            self._line(f"status: {data['status']}" + (f" ({data['error']})" if data.get("error") else ""))
        elif event == "params":
            self._line(
                f"trainable params: {data['trainable']:,d} || all params: {data['all']:,d} "
                f"|| trainable%: {data['percent']:.4f}"
            )
        elif event == "checkpoint":
            self._line(f"checkpoint saved at step {data['step']}")
        elif event == "artifact":
            self._line(f"{data['kind']} saved: {data['size_bytes']:,d} bytes, sha256 {data['sha256']}")
        elif event == "done":
            self.close()

    def _metric(self, point: dict[str, Any]) -> None:
        if point["kind"] == "eval":
            self._line(f"step {point['step']}: eval loss {point['loss']:.4f}")
        elif self.bar is not None:
            self.bar.set_postfix(loss=f"{point['loss']:.4f}", refresh=False)
            self.bar.update(point["step"] - self.bar.n)

    def _line(self, text: str) -> None:
        self._tqdm.write(text)  # above the bar, which then redraws below it
        sys.stdout.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fail(lines: Sequence[str], code: int) -> int:
    for line in lines:
        print(line, file=sys.stderr)
    return code


def cmd_train(args: argparse.Namespace) -> int:
    from app import runs
    from app.db import get_sessionmaker, migrate
    from app.models import RunStatus
    from app.rundir import RunDir

    if bool(args.spec_file) == bool(args.resume):
        return _fail(["give a spec file to train, or --resume RUN_ID (not both)"], EXIT_BAD_INPUT)
    spec = None
    if args.spec_file:
        try:
            spec = read_spec_file(Path(args.spec_file), name=args.name)
        except BadSpecFile as exc:
            return _fail(exc.lines, EXIT_BAD_INPUT)
    migrate()
    _quiet_console()
    sessions = get_sessionmaker()
    with sessions() as session:
        if spec is not None:
            run_id = runs.create_run(session=session, spec=spec).id
        else:
            run_id = args.resume
            try:
                status = runs.get_run(session=session, run_id=run_id).status
            except runs.NotFound as exc:
                return _fail([str(exc)], EXIT_BAD_INPUT)
            if status != RunStatus.interrupted:
                return _fail([f"run {run_id} is {status}: only an interrupted run can be resumed"], EXIT_BAD_INPUT)
    run_dir = RunDir.of(run_id)
    print(f"run {run_id}: {run_dir.root}", flush=True)

    from worker.engine.train import run_training

    printer = ProgressPrinter()
    received: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        # Raised inside the training step; run_training marks the run interrupted on its way out.
        received.append(signum)
        raise KeyboardInterrupt

    # Installed explicitly: a shell starting us in the background leaves SIGINT ignored, and SIGTERM
    # (docker stop, timeout) would otherwise leave the run `running` with no process behind it.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        run_training(run_id, on_event=printer, enforce_roots=False)
    except KeyboardInterrupt:
        printer.close()
        with sessions() as session:
            run = runs.get_run(session=session, run_id=run_id)
        saved = run_dir.checkpoints(complete_only=True)
        where = f"its checkpoint of step {saved[-1].step}" if saved else "the start (no checkpoint yet)"
        print(
            f"\nstopped; run {run_id} is {run.status}. Resume from {where} with: loradeck train --resume {run_id}",
            file=sys.stderr,
        )
        return 128 + (received[0] if received else signal.SIGINT)
    finally:
        printer.close()
    with sessions() as session:
        run = runs.get_run(session=session, run_id=run_id)
    if run.status == RunStatus.succeeded:
        print(f"adapter: {run_dir.adapter_dir}")
        return 0
    if run.status == RunStatus.running:  # claimed by someone else between create and train: cannot happen here
        return _fail([f"run {run_id} is owned by worker {run.worker}"], EXIT_FAILED)
    return _fail([f"run {run_id} {run.status}" + (f": {run.error}" if run.error else "")], EXIT_FAILED)


def cmd_estimate(args: argparse.Namespace) -> int:
    try:
        spec = read_spec_file(Path(args.spec_file), loadable=False)
    except BadSpecFile as exc:
        return _fail(exc.lines, EXIT_BAD_INPUT)
    from app.formatting import human_bytes
    from worker.engine.estimate import estimate_spec

    try:
        estimate = estimate_spec(spec)
    except (ValueError, OSError) as exc:  # EstimateError (a ValueError) names the field to change
        return _fail([str(exc)], EXIT_FAILED)
    if args.json:
        print(json.dumps(estimate.model_dump(mode="json"), indent=2))
        return 0
    params = estimate.params
    print(f"trainable params: {params.trainable:,d} || all params: {params.all:,d} || trainable%: {params.percent:.4f}")
    print("\nmemory per GPU (estimate)")
    for part, size in estimate.memory.model_dump().items():
        print(f"  {part:<12} {human_bytes(size):>10}")
    for note in estimate.notes:
        print(f"note: {note}")
    return 0


def cmd_validate_dataset(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from app.config import get_settings
    from worker.data.describe import describe_dataset
    from worker.data.files import DatasetError, validate_dataset

    problems = validate_dataset(args.file)
    if args.json and problems:
        payload = [{"file": p.file, "line": p.line, "unit": p.unit, "message": p.message} for p in problems]
        print(json.dumps({"ok": False, "problems": payload}, indent=2, ensure_ascii=False))
        return EXIT_FAILED
    if problems:
        return _fail([*map(str, problems), f"{len(problems)} bad rows"], EXIT_FAILED)
    model = args.model or get_settings().default_base_model
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=get_settings().allow_trust_remote_code)
        description = describe_dataset(
            args.file,
            tokenizer,
            max_seq_length=args.max_seq_length,
            train_on_prompt=args.train_on_prompt,
            chat_template=args.chat_template,
        )
    except (DatasetError, OSError, ValueError) as exc:
        return _fail([str(exc)], EXIT_FAILED)
    if args.json:
        described = description.model_dump(mode="json", exclude_unset=True)
        print(json.dumps({"ok": True, "description": described}, indent=2, ensure_ascii=False))
        return 0
    d, tokens = description, description.tokens
    print(f"{d.file}: {d.rows} rows of {d.shape} ({d.format})")
    print(
        f"tokens per row: min {tokens.min}, p50 {tokens.p50}, p90 {tokens.p90}, p99 {tokens.p99}, "
        f"max {tokens.max} (with the tokenizer of {model})"
    )
    print(
        f"cut at max_seq_length {args.max_seq_length}: {d.truncated_rows} rows "
        f"({d.truncated_share:.1%}); dropped with nothing left to learn: {d.dropped_rows}"
    )
    return 0


def _quiet_console() -> None:
    # Alembic's logging config puts a console handler on the root logger; training's INFO records (meant for
    # train.log) would reach it too and repeat on the terminal what the event lines already say.
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loradeck", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a run from a spec file (YAML or JSON), without the web")
    train.add_argument("spec_file", nargs="?", help="YAML or JSON with the API's RunSpec fields")
    train.add_argument("--name", help="the run's name (overrides the file's)")
    train.add_argument("--resume", metavar="RUN_ID", help="resume an interrupted run from its last checkpoint")
    estimate = commands.add_parser("estimate", help="parameter counts and memory estimate for a spec file")
    estimate.add_argument("spec_file", help="YAML or JSON with the API's RunSpec fields")
    estimate.add_argument("--json", action="store_true", help="print the estimate as JSON")
    check = commands.add_parser("validate-dataset", help="check a dataset file row by row and describe it")
    check.add_argument("file", help="a JSONL, JSON, CSV or Parquet dataset")
    check.add_argument("--model", help="model directory or hub id whose tokenizer counts tokens (default: the setting)")
    check.add_argument("--max-seq-length", type=int, default=256, help="the run's max_seq_length (default 256)")
    check.add_argument("--train-on-prompt", action="store_true", help="count the loss on prompts too")
    check.add_argument("--chat-template", default="auto", help="how messages rows are rendered (default auto)")
    check.add_argument("--json", action="store_true", help="print the problems or the description as JSON")
    args = parser.parse_args(argv)
    handlers = {"train": cmd_train, "estimate": cmd_estimate, "validate-dataset": cmd_validate_dataset}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
