"""The JSON run report every job leaves behind, and the summary it prints."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .run.files import atomic_write


@dataclass
class RunReport:
    job: str
    started: float = field(default_factory=time.time)
    finished: float | None = None
    status: str = "running"
    exit_code: int | None = None
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    dry: bool = False

    def finish(self, exit_code: int, error: str | None = None) -> None:
        self.finished = time.time()
        self.exit_code = exit_code
        self.error = error
        self.status = "ok" if exit_code == 0 else "failed"

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "started": _iso(self.started),
            "finished": _iso(self.finished) if self.finished else None,
            "duration_s": round((self.finished or time.time()) - self.started, 3),
            "status": self.status,
            "exit_code": self.exit_code,
            "error": self.error,
            "dry": self.dry,
            "warnings": self.warnings,
            "summary": self.summary,
        }

    def write(self, reports_dir: Path, latest: bool = True) -> Path:
        """Write ``<job>-<time>-<pid>.json`` atomically; with ``latest``, point ``<job>-latest.json`` at it.

        A run refused because another holds the lock passes ``latest=False``:
        ``<job>-latest.json`` keeps pointing at the last run that ran.
        """
        reports_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self.started))
        path = reports_dir / f"{self.job}-{stamp}-{os.getpid()}.json"
        atomic_write(path, json.dumps(self.as_dict(), indent=2, default=str) + "\n")
        if latest:
            link = reports_dir / f"{self.job}-latest.json"
            tmp = link.with_name(link.name + ".tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(path.name)
            os.replace(tmp, link)
        return path

    def summary_lines(self) -> list[str]:
        """The summary, for stdout: how the run ended and what it did."""
        head = f"{self.job}: {self.status.upper()} in {self.as_dict()['duration_s']:.1f} s"
        lines = [head + (" (dry run)" if self.dry else "")]
        lines += [f"  {key}: {value}" for key, value in self.summary.items() if not isinstance(value, (list, dict))]
        return lines

    def problem_lines(self) -> list[str]:
        """Warnings and the error, for stderr: what cron should mail."""
        lines = [f"warning: {w}" for w in self.warnings]
        if self.error:
            lines.append(f"error: {self.error}")
        return lines


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

