"""A training job's output folder: refusals before writing, settings for ``--resume``, cleanup.

A job (``pretrain``, ``finetune``) writes into one folder ``--out``:

- ``run.json``: the job's settings, written before training starts, so ``--resume`` continues
  with exactly them (a flag given again must agree);
- ``metrics.jsonl``: one JSON line per logged step (the Trainer's log);
- ``checkpoint/``: the Trainer's resumable state, removed once the final result is saved;
- the result (a model folder or an adapter), written by :func:`~minipeft.fileio.atomic_folder`
  and so never half-written.

Before anything is written, :func:`prepare_run` refuses an ``--out`` that is, holds or lies
inside one of the job's inputs, and an ``--out`` that already holds a result or an unfinished run
unless ``--overwrite`` (start over) or ``--resume`` (continue) says what to do with it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text, check_output_path

__all__ = ["RUN_FILE", "finish_run", "prepare_run", "resume_hint"]

RUN_FILE = "run.json"
CHECKPOINT = "checkpoint"
RESULT_FILES = ("config.json", "adapter_config.json")  # a model folder, an adapter folder


def _checkpoint_step(out: Path) -> int | None:
    state = out / CHECKPOINT / "trainer_state.json"
    if not state.is_file():
        return None
    return int(json.loads(state.read_text(encoding="utf-8")).get("step", 0))


def prepare_run(
    job: str,
    out: str | os.PathLike[str],
    inputs: Mapping[str, str | os.PathLike[str] | None],
    settings: dict[str, Any],
    given: Mapping[str, Any],
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Check ``out`` and return the settings the run uses.

    ``settings`` are this invocation's full settings (defaults filled in), ``given`` the ones the
    user set explicitly. A fresh run records ``settings`` in ``run.json``; ``resume`` reads the
    recorded ones back and raises if an explicitly given value differs.
    """
    check_output_path(out, inputs)
    folder = Path(out)
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out, --overwrite discards it: pick one")
    step = _checkpoint_step(folder)
    if resume:
        run_file = folder / RUN_FILE
        if step is None or not run_file.is_file():
            done = any((folder / f).is_file() for f in RESULT_FILES)
            why = "the run there finished" if done else "there is none"
            raise ValueError(
                f"--resume: no unfinished {job} run to continue in {os.fspath(out)!r} ({why}): "
                f"expected {CHECKPOINT}/ and {RUN_FILE} there"
            )
        recorded = json.loads(run_file.read_text(encoding="utf-8"))
        if recorded.get("job") != job:
            raise ValueError(
                f"--resume: {os.fspath(out)!r} holds a {recorded.get('job')!r} run, not {job!r}"
            )
        recorded = recorded["settings"]
        for key, value in given.items():
            if value is not None and key in recorded and _plain(value) != recorded[key]:
                raise ValueError(
                    f"--resume: the run in {os.fspath(out)!r} was started with "
                    f"{key}={recorded[key]!r}, this command asks {key}={_plain(value)!r}; "
                    "leave it out to continue with the recorded value"
                )
        return dict(recorded)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {os.fspath(out)!r} is a file; expected a folder")
    # A run.json (and a checkpoint/ without trainer state) alone is a run that failed before its
    # first step: nothing to keep.
    existing = sorted(os.listdir(folder)) if folder.is_dir() else []
    existing = [e for e in existing if e != RUN_FILE and not (e == CHECKPOINT and step is None)]
    if existing and not overwrite:
        if step is not None:
            what = f"an unfinished {job} run (checkpoint at step {step})"
            fix = "--resume to continue it or --overwrite to start over"
        else:
            holds = [f for f in RESULT_FILES if f in existing]
            what = f"a saved result ({', '.join(holds)})" if holds else f"files {existing[:5]}"
            fix = "--overwrite to replace it, or another --out"
        raise ValueError(f"--out {os.fspath(out)!r} already holds {what}; pass {fix}")
    if overwrite:  # start over: the old run's state must not leak into the new one
        shutil.rmtree(folder / CHECKPOINT, ignore_errors=True)
        for name in ("metrics.jsonl", RUN_FILE):
            if (folder / name).is_file():
                (folder / name).unlink()
    folder.mkdir(parents=True, exist_ok=True)
    record = {"job": job, "settings": {k: _plain(v) for k, v in settings.items()}}
    atomic_write_text(folder / RUN_FILE, json.dumps(record, indent=2) + "\n")
    return {k: _plain(v) for k, v in settings.items()}


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples become lists, paths strings), for comparing with run.json."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def finish_run(out: str | os.PathLike[str]) -> None:
    """The result is saved: drop the resumable state (it can be large: a full model + AdamW)."""
    shutil.rmtree(Path(out) / CHECKPOINT, ignore_errors=True)


def resume_hint(command: str, out: str | os.PathLike[str]) -> str:
    """The one line printed after Ctrl-C."""
    return f"to continue: minipeft {command} --out {os.fspath(out)} --resume"
