"""rsyslog -> MariaDB: each image's rsyslog snippet, the log server's database and users, reading the logs.

* ``render``: ``render_syslog`` (pure: the snippet and the 0600 password file) and ``validate_syslog``
  (``rsyslogd -N1`` on scratch copies); ``syslog_files`` does both for a run (what ``inv harden`` uploads);
* ``passwords``: the INSERT-only users' passwords, one 0600 file on this box;
* ``client``: the ``mariadb`` client on the log server (argv lists, SQL on stdin, hex literals);
* ``setup``: ``inv logs.setup`` (database, schema, users, grants; idempotent);
* ``query``: ``inv logs`` (``SystemEvents`` as a table).
"""

from __future__ import annotations

from ..config.guard import GuardImage
from ..security.render import RenderedFile
from .passwords import password_for
from .render import SERVICE, SNIPPET, render_syslog, validate_syslog


def syslog_files(run, image: GuardImage, key: str = "") -> dict[str, RenderedFile]:
    """``image``'s rsyslog files for ``run`` (its password made and stored on first use; not under ``--dry``),
    validated by ``rsyslogd -N1``; {} when ``syslog.enabled`` is off."""
    if not image.syslog.enabled:
        return {}
    password = password_for(run, image.syslog.db_user(image.name))
    files = render_syslog(image, run.section("logs"), password)
    validate_syslog(image, files, key=key)
    return files


__all__ = ["SERVICE", "SNIPPET", "render_syslog", "syslog_files", "validate_syslog"]
