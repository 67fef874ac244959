"""Run hygiene shared by every task: config, lock, signals, report, summary, exit code.

Streams, so that ``inv backup >/dev/null`` in cron mails only what needs a human:

* stdout: the summary, plain progress lines, what ``--dry`` would run;
* stderr: warnings, the error, a bad setting (one line, nothing else), the
  traceback of an internal error, and tqdm bars on a terminal.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from invoke.exceptions import Exit

from .config import GeneralConfig, check_config, from_invoke
from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_LOCKED, ConfigError, OrchestratorError
from .faults import crash_point
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
    sections: dict[str, Any] = field(default_factory=dict)  # validated by check_config, by name

    def echo(self, line: str) -> None:
        print(line, file=self.out or sys.stdout, flush=True)

    def section(self, name: str):
        if name in self.sections:
            return self.sections[name]
        return from_invoke(self.config, name)

    def local(self) -> LocalTarget:
        return LocalTarget(dry=self.dry, echo=self.echo)


def execute(config: Any, job: str, body: Callable[[JobRun], None], *, locked: bool = True, out=None,
            err=None) -> int:
    """Run ``body`` as job ``job``; returns the exit code (0 only on full success).

    The whole config is checked first: a bad setting is one line on ``err``
    and exit 2, with nothing made on disk (no lock, no report). After that,
    a held lock, a failing command, Ctrl-C and SIGTERM all end here as one
    line and an exit code, the summary is printed, and a report is written
    (a run refused by the lock writes its own, and leaves ``<job>-latest.json``
    pointing at the last run that ran).

    ``out`` (summary, ``run.echo``) defaults to stdout and ``err`` (problems)
    to stderr; a caller that gives only ``out`` (a test capturing the output)
    gets both there. Progress always writes to the process's own streams.
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else (out if out is not sys.stdout else sys.stderr)
    try:
        sections = check_config(config)
    except ConfigError as exc:
        print(exc, file=err, flush=True)
        return exc.exit_code
    general: GeneralConfig = sections["orchestrator"]
    dry = bool(_get(config, "run", {}).get("dry", False))
    report = RunReport(job, dry=dry)
    code, error = 0, None
    try:
        with terminate_unwinds():
            run = JobRun(config, general, Progress(general.progress), report, dry, out, sections)
            lock = held_lock(general.state_dir / "locks" / f"{job}.lock", f"inv {job}")
            with lock if locked and not dry else nullcontext():
                body(run)
    except OrchestratorError as exc:
        code, error = exc.exit_code, str(exc)
    except KeyboardInterrupt:
        code, error = EXIT_INTERRUPTED, "interrupted (Ctrl-C); cleaned up"
    except Exception as exc:  # a bug: keep the traceback, still report and exit non-zero
        traceback.print_exc(file=err)
        code, error = EXIT_FAILED, f"internal error: {type(exc).__name__}: {exc}"
    report.finish(code, error)
    crash_point("report")
    if not dry:
        _write_report(report, general.state_dir / "reports", latest=code != EXIT_LOCKED)
    for line in report.summary_lines():
        print(line, file=out, flush=True)
    for line in report.problem_lines():
        print(line, file=err, flush=True)
    return code


def _write_report(report: RunReport, reports_dir, latest: bool) -> None:
    try:
        report.summary["report"] = str(report.write(reports_dir, latest=latest))
    except OSError as exc:
        report.warnings.append(f"run report not written to {reports_dir}: {exc.strerror}")


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
