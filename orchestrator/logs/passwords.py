"""The INSERT-only database users' passwords: one 0600 JSON file on this box, by user name.

Made with ``secrets`` (the OS CSPRNG) the first time ``inv logs.setup`` or a render needs one, then
kept: the database and every host's rsyslog must agree on it. ``token_urlsafe`` text (letters, digits,
``-``, ``_``) needs no quoting in SQL or RainerScript. Passwords are ``Secret`` (redacted repr/str)
everywhere but where a file or a statement is built; the file lock and atomic 0600 write are the guard
secrets store's.
"""

from __future__ import annotations

import os
import re
import secrets as csprng
from pathlib import Path
from typing import Any

from ..security.secrets import Secret, read_private_json, store_lock, write_store

PASSWORD_BYTES = 24  # 32 characters of token_urlsafe
PASSWORD = re.compile(r"[A-Za-z0-9_-]{16,128}")


def passwords_path(run_or_path: Any) -> Path:
    """A path as given, or the run's ``logs.passwords_file`` (default ``<state_dir>/logs/passwords.json``)."""
    if isinstance(run_or_path, (str, os.PathLike)):
        return Path(run_or_path)
    logs = run_or_path.section("logs")
    return logs.passwords_file or run_or_path.general.state_dir / "logs" / "passwords.json"


def read_passwords(path: Path) -> dict:
    """The whole file, or an empty one; a file others can read is refused."""
    return read_private_json(path, "users", "database passwords")


def password_for(run_or_path: Any, user: str, *, save: bool | None = None) -> Secret:
    """``user``'s password: the stored one, else a new one (saved unless ``save`` is false or the run is dry).

    Under ``--dry`` a new password is made but not kept: the plan shows a user would be created, nothing more.
    """
    path = passwords_path(run_or_path)
    if save is None:
        save = not getattr(run_or_path, "dry", False)
    if not save:
        stored = read_passwords(path)["users"].get(user)
        return Secret(stored if _valid(stored) else new_password())
    with store_lock(path):
        data = read_passwords(path)
        stored = data["users"].get(user)
        if not _valid(stored):
            stored = data["users"][user] = new_password()
            write_store(path, data)
    return Secret(stored)


def new_password() -> str:
    return csprng.token_urlsafe(PASSWORD_BYTES)


def _valid(value: Any) -> bool:
    return isinstance(value, str) and bool(PASSWORD.fullmatch(value))


__all__ = ["new_password", "password_for", "passwords_path", "read_passwords"]
