"""Run hygiene shared by every task: config, lock, signals, report, summary, exit code."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from invoke.exceptions import Exit

from .config import GeneralConfig, from_invoke
from .faults import crash_point
from .errors import EXIT_FAILED, EXIT_INTERRUPTED, OrchestratorError
from .lock import held_lock
from .progress import Progress
from .report import RunReport
from .run import LocalTarget
from .signals import terminate_unwinds


@dataclass
class JobRun:
    """What a task body gets: validated general settings, progress, report, dry flag."""

    config: Any  # invoke's merged config tree
    general: GeneralConfig
    progress: Progress
    report: RunReport
    dry: bool
    out: Any = None

    def echo(self, line: str) -> None:
        print(line, file=self.out or sys.stdout, flush=True)

    def section(self, name: str):
        return from_invoke(self.config, name)

    def local(self) -> LocalTarget:
        return LocalTarget(dry=self.dry, echo=self.echo)


def execute(config: Any, job: str, body: Callable[[JobRun], None], *, locked: bool = True, out=None) -> int:
    """Run ``body`` as job ``job``; returns the exit code (0 only on full success).

    Config errors, a held lock, a failing command, Ctrl-C and SIGTERM all end
    here as one line and an exit code; a report is written whenever the state
    directory is known, and the summary is printed in every case.
    """
    out = out or sys.stdout
    dry = bool(_get(config, "run", {}).get("dry", False))
    report = RunReport(job, dry=dry)
    reports_dir = None
    code, error = 0, None
    try:
        with terminate_unwinds():
            general = from_invoke(config, "orchestrator")
            reports_dir = general.state_dir / "reports"
            run = JobRun(config, general, Progress(general.progress), report, dry, out)
            lock = held_lock(general.state_dir / "locks" / f"{job}.lock", f"inv {job}")
            with lock if locked and not dry else nullcontext():
                body(run)
    except OrchestratorError as exc:
        code, error = exc.exit_code, str(exc)
    except KeyboardInterrupt:
        code, error = EXIT_INTERRUPTED, "interrupted (Ctrl-C); cleaned up"
    except Exception as exc:  # a bug: keep the traceback, still report and exit non-zero
        traceback.print_exc()
        code, error = EXIT_FAILED, f"internal error: {type(exc).__name__}: {exc}"
    report.finish(code, error)
    crash_point("report")
    if reports_dir is not None and not dry:
        try:
            report.summary["report"] = str(report.write(reports_dir))
        except OSError as exc:
            report.warnings.append(f"run report not written to {reports_dir}: {exc.strerror}")
    for line in report.summary_lines():
        print(line, file=out, flush=True)
    return code


def run_task(c, job: str, body: Callable[[JobRun], None], *, locked: bool = True) -> None:
    """invoke-facing wrapper: a non-zero code becomes invoke's ``Exit``."""
    code = execute(c.config, job, body, locked=locked)
    if code:
        raise Exit(code=code)


def _get(config: Any, key: str, default):
    try:
        return config[key]
    except (KeyError, AttributeError):
        return default
