"""One image's rsyslog -> MariaDB files, and their check by ``rsyslogd -N1`` before anything leaves the box.

Two files per image with ``syslog.enabled``:

* ``/etc/rsyslog.d/60-ommysql.conf`` (0644, not secret: its diff may be shown): ommysql's action with a
  disk-assisted queue. ``pwd`` is a RainerScript backtick constant, ``cat <password_file>``: rsyslog 8.2302's
  ommysql requires ``pwd`` and an empty one overrides a MySQL option file, so the password is read from
* ``syslog.password_file`` (0600, secret: never diffed), the password alone without a newline (rsyslog
  refuses a ``pwd`` holding whitespace).

Pure functions; ``validate_syslog`` runs ``rsyslogd -N1`` on a scratch main config that includes a copy of
the snippet whose host paths point into the scratch directory, and scrubs the password from any error.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ..config.guard import GuardImage
from ..config.logs import LogsConfig
from ..errors import ConfigError, OrchestratorError
from ..security.render import RenderedFile
from ..security.secrets import Secret
from ..templating import render

SNIPPET = "/etc/rsyslog.d/60-ommysql.conf"
SERVICE = "rsyslog"  # Gentoo's app-admin/rsyslog: OpenRC and systemd alike
CHECK_TIMEOUT_S = 60
REQUIRED = ('module(load="ommysql")', 'queue.type="LinkedList"', 'queue.filename="', 'queue.saveOnShutdown="on"',
            'action.resumeRetryCount="-1"')


class SyslogValidationError(ConfigError):
    """rsyslogd (or our own check) refused the rendered snippet: one line, no password in it."""


def render_syslog(image: GuardImage, logs: LogsConfig, password: Secret) -> dict[str, RenderedFile]:
    """``{path on the host: RenderedFile}`` for ``image``'s rsyslog -> MariaDB, or {} when it is not enabled."""
    cfg = image.syslog
    if not cfg.enabled:
        return {}
    values = {
        "image": image.name, "database": logs.database, "server": cfg.server, "port": cfg.port,
        "user": cfg.db_user(image.name), "password_file": cfg.password_file, "queue_dir": cfg.queue_dir,
        "queue_file": queue_file(image), "queue_size": cfg.queue_size, "queue_max_disk": int(cfg.queue_max_disk),
        "queue_batch": cfg.queue_batch, "resume_interval": cfg.resume_interval,
        "severity": cfg.severity_number, "action_name": f"ommysql-{image.name}",
    }
    settings = {name: f"guard image {image.name}: syslog.{name}" for name in values}
    text = render("logs/ommysql.conf.j2", values, settings=settings)
    return {SNIPPET: RenderedFile(text, 0o644), cfg.password_file: RenderedFile(password.reveal(), 0o600, secret=True)}


def queue_file(image: GuardImage) -> str:
    """The disk queue's file prefix in ``queue_dir``: one per image, so two snippets never share one."""
    return "ommysql_" + re.sub(r"[^A-Za-z0-9_]", "_", image.name)


def validate_syslog(image: GuardImage, files: Mapping[str, RenderedFile], *, key: str = "") -> list[str]:
    """Our structural check, then ``rsyslogd -N1``; the names of the checks passed. Raises on a refusal."""
    if not files:
        return []
    key = key or f"guard image {image.name}"
    check_snippet(files[SNIPPET].text, key)
    with tempfile.TemporaryDirectory(prefix="syslog-validate-") as scratch:
        rsyslogd_check(image, files, Path(scratch), key)
    return ["structure", "rsyslogd -N1"]


def check_snippet(text: str, key: str) -> None:
    """The known trap, refused by name: an ommysql action without a saved, retried queue loses messages."""
    for needed in REQUIRED:
        if needed not in text:
            raise SyslogValidationError(f"{key}.syslog: {SNIPPET} lacks {needed}; without it messages are lost "
                                        "while the database is down")


def rsyslogd_check(image: GuardImage, files: Mapping[str, RenderedFile], scratch: Path, key: str) -> None:
    cfg = image.syslog
    (scratch / "work").mkdir()
    (scratch / "queue").mkdir()
    password = scratch / "password"
    password.write_text(files[cfg.password_file].text)
    password.chmod(0o600)
    snippet = scratch / "snippet.conf"
    snippet.write_text(files[SNIPPET].text.replace(f"`cat {cfg.password_file}`", f"`cat {password}`")
                       .replace(f'queue.spoolDirectory="{cfg.queue_dir}"', f'queue.spoolDirectory="{scratch}/queue"'))
    main = scratch / "rsyslog.conf"
    main.write_text(f'global(workDirectory="{scratch}/work")\ninclude(file="{snippet}")\n')
    try:
        done = subprocess.run(["rsyslogd", "-N1", "-f", str(main)], capture_output=True, text=True,
                              timeout=CHECK_TIMEOUT_S)
    except FileNotFoundError:
        raise OrchestratorError("rsyslogd: not installed on this box (apt-get install rsyslog rsyslog-mysql)") from None
    except subprocess.TimeoutExpired:
        raise OrchestratorError(f"rsyslogd -N1 did not finish in {CHECK_TIMEOUT_S} s") from None
    if done.returncode != 0:
        raise SyslogValidationError(f"{key}.syslog: rsyslogd -N1 refused {SNIPPET}: "
                                    + _first_error(done.stderr + done.stdout, files[cfg.password_file].text, scratch))


def _first_error(output: str, password: str, scratch: Path) -> str:
    lines = [line for line in output.splitlines() if "error" in line.lower()] or output.strip().splitlines()[-1:]
    text = (lines[0] if lines else "no reason given").replace(str(scratch), "<scratch>")
    return text.replace(password, "<password>") if password else text


__all__ = ["SERVICE", "SNIPPET", "render_syslog", "validate_syslog"]
