"""Per-image guard secrets: knock sequences, the one-time list, fwknop keys; kept in one 0600 file.

Generated with ``secrets`` (the OS CSPRNG) when the config gives none, stored in
``guard.secrets_file`` (atomic write, mode 0600, its directory 0700) and loaded
back on the next run, so a host keeps its sequences until they must change.

A secret never reaches a log line, a report, an exception or ``--dry`` output:
keys are ``Secret`` (redacted ``repr``/``str``; ``reveal()`` only where a file is
rendered) and ``ImageSecrets`` redacts itself as a whole.

One-time sequences: knockd 0.8 consumes them in file order, overwriting a used
line's first character with ``#``, and aborts (double free) right after the
**last** line is used. So the list holds only unused sequences, ``consume_one_time``
hands out the next one and never the last one the hosts have, and a load refills
the list to ``one_time_count`` once fewer than a quarter are left, new sequences
after the old. The hosts get the refill with the next ``inv harden``; until then
``one_time_on_host`` counts what they have (and a warning says so), and
``mark_one_time_deployed`` clears it after a confirmed upload.

Stored sequences are never rotated silently: the hosts know only the stored one.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets as csprng
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.guard import GuardImage, Knock, parse_knock
from ..errors import ConfigError, OrchestratorError
from ..run.files import atomic_write

KNOCK_LOW, KNOCK_HIGH = 1025, 65535
SEQUENCE_LENGTH = 3
SPA_KEY_BYTES = 32  # what `fwknop --key-gen` makes: KEY_BASE64 (Rijndael, 32 bytes)
HMAC_KEY_BYTES = 64  # and HMAC_KEY_BASE64 (HMAC-SHA256, 64 bytes)
FILE_VERSION = 1


class Secret:
    """A secret string whose ``repr`` and ``str`` are redacted; ``reveal()`` is the only way to the text."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('<redacted>')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and csprng.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self):  # never pickled (a multiprocessing log record, a report) by accident
        raise TypeError("a Secret is not pickled")


@dataclass(eq=True)
class ImageSecrets:
    """One image's secrets. ``one_time`` holds only the sequences not used yet, in the order knockd wants them."""

    open: list[Knock]
    close: list[Knock]
    one_time: list[list[Knock]]
    spa_key: Secret
    hmac_key: Secret
    warnings: list[str] = field(default_factory=list, compare=False)  # what the load changed, no secret in them

    def __repr__(self) -> str:
        return f"ImageSecrets(<redacted: {len(self.one_time)} one-time sequences left>)"

    __str__ = __repr__


def secrets_path(run_or_path: Any) -> Path:
    """The secrets file: a path as given, or the run's ``guard.secrets_file`` (default under the state dir)."""
    if isinstance(run_or_path, (str, os.PathLike)):
        return Path(run_or_path)
    guard = run_or_path.section("guard")
    return guard.secrets_file or run_or_path.general.state_dir / "guard" / "secrets.json"


def load_or_create(run_or_path: Any, image_cfg: GuardImage, *, save: bool | None = None) -> ImageSecrets:
    """The image's secrets: loaded, the missing ones generated, saved back when anything changed.

    ``run_or_path``: a ``JobRun`` (its ``guard.secrets_file``; nothing is saved under ``--dry``) or the
    secrets file's path. Sequences given in the config win over stored ones and are not stored.
    """
    path = secrets_path(run_or_path)
    if save is None:
        save = not getattr(run_or_path, "dry", False)
    with store_lock(path) if save else nullcontext():
        store = read_store(path)
        stored = store["images"].get(image_cfg.name, {})
        entry, warnings = complete_entry(stored, image_cfg, _image_key(run_or_path, image_cfg))
        if save and entry != stored:
            store["images"][image_cfg.name] = entry
            write_store(path, store)
    result = from_entry(entry, image_cfg)
    result.warnings.extend(warnings)
    return result


def _image_key(run_or_path: Any, image: GuardImage) -> str:
    """``guard.images[i]`` when the run's config names the image, else ``guard image NAME``."""
    if hasattr(run_or_path, "section"):
        names = [i.name for i in run_or_path.section("guard").images]
        if image.name in names:
            return f"guard.images[{names.index(image.name)}]"
    return f"guard image {image.name}"


def consume_one_time(run_or_path: Any, image_cfg: GuardImage) -> tuple[list[Knock], int]:
    """Take the next one-time sequence (saved as used at once), and how many stay unused.

    The last sequence is never handed out: knockd 0.8 aborts right after using the last line of its file,
    so the host would be left without knockd. ``inv harden`` (a new render) refills the list.
    """
    path = secrets_path(run_or_path)
    with store_lock(path):
        store = read_store(path)
        entry = store["images"].get(image_cfg.name)
        left = entry.get("one_time", []) if entry else []
        on_host = entry.get("one_time_on_host") if entry else None
        if min(len(left), len(left) if on_host is None else on_host) <= 1:
            raise OrchestratorError(f"guard image {image_cfg.name}: only the last one-time sequence the hosts have "
                                    "is left (knockd 0.8 aborts after its last one); run inv harden to refill")
        entry["one_time"] = left[1:]
        if on_host is not None:
            entry["one_time_on_host"] = on_host - 1
        write_store(path, store)
    return [parse_knock(k, "one_time") for k in left[0]], len(left) - 1


@contextmanager
def store_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on ``<secrets>.lock`` around a read-modify-write: two ``inv knock`` at once must
    not hand out the same one-time sequence. Held for milliseconds, so waited for, not refused."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def read_store(path: Path) -> dict:
    """The whole secrets file, or an empty one. A file others can read is refused (it holds keys)."""
    return read_private_json(path, "images", "guard secrets")


def read_private_json(path: Path, key: str, holds: str) -> dict:
    """A 0600 JSON store with a ``key`` mapping (``{"version", key: {}}`` when there is no file yet); one
    line when others may read it, it is not JSON, or it lacks the mapping. Shared by the guard secrets and
    the logs passwords."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return {"version": FILE_VERSION, key: {}}
    if st.st_mode & 0o077:
        raise ConfigError(f"{path}: mode {st.st_mode & 0o777:o} lets others read {holds}; chmod 600 it")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OrchestratorError(f"{path}: not a readable {holds} file ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get(key), dict):
        raise OrchestratorError(f"{path}: not a {holds} file (no {key} mapping)")
    return data


def write_store(path: Path, store: dict) -> None:
    """Atomically, mode 0600, in a 0700 directory."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    atomic_write(path, json.dumps(store, indent=1, sort_keys=True) + "\n", mode=0o600)


def complete_entry(stored: dict, image: GuardImage, key: str = "") -> tuple[dict, list[str]]:
    """``stored`` with every missing secret generated; the warnings say what changed.

    A stored sequence is never replaced by itself: the hosts still have it, and ``inv knock``/``inv harden``
    would knock a new one they do not know (locked out, with no console). One that now collides with a
    served port or the SSH port is refused instead, naming what to change.
    """
    key = key or f"guard image {image.name}"
    entry = dict(stored)
    warnings: list[str] = []
    for which in ("open", "close"):
        if getattr(image.knock, which):
            entry.pop(which, None)  # the config's own sequence: not stored
            continue
        other_name = "close" if which == "open" else "open"
        other = _given_knocks(image, other_name) or _stored_knocks(entry.get(other_name)) or []
        current = _stored_knocks(entry.get(which))
        if current is None:
            entry[which] = [str(k) for k in generate_sequence(image.forbidden_ports | _ports(other))]
        elif _ports(current) & image.forbidden_ports or _ports(current) & _ports(other):
            raise ConfigError(f"{key}: the stored {which} knock sequence uses a port this image now serves (or the "
                              f"SSH port, or the {other_name} sequence's); serve another port, or rotate: set "
                              f"knock.{which} to a new sequence and inv harden while the hosts still know the old")
    _complete_one_time(entry, image, warnings)
    for name, size in (("spa_key", SPA_KEY_BYTES), ("hmac_key", HMAC_KEY_BYTES)):
        if not _valid_key(entry.get(name), size):
            entry[name] = generate_key(size)
    return entry, warnings


def _complete_one_time(entry: dict, image: GuardImage, warnings: list[str]) -> None:
    """Refill the unused list once fewer than a quarter are left, new sequences after the old ones.

    The hosts have only the old ones until the next ``inv harden``: ``one_time_on_host`` remembers how many,
    so ``consume_one_time`` never hands out the last one a host has (knockd aborts after it).
    """
    if not image.knock.one_time:
        return
    count = image.knock.one_time_count
    left = [seq for seq in (_stored_knocks(s) for s in entry.get("one_time", [])) if seq is not None]
    on_host = entry.get("one_time_on_host")
    if "one_time" in entry and (on_host if on_host is not None else len(left)) * 4 < count:
        warnings.append(f"guard image {image.name}: {on_host if on_host is not None else len(left)} of {count} "
                        "one-time sequences left on the hosts; run inv harden before knockd runs out")
    if len(left) * 4 >= count:
        return
    if "one_time" in entry and on_host is None:
        entry["one_time_on_host"] = len(left)
    while len(left) < count:
        left.append(generate_sequence(image.forbidden_ports))
    entry["one_time"] = [[str(k) for k in seq] for seq in left]


def mark_one_time_deployed(run_or_path: Any, image_cfg: GuardImage) -> None:
    """After a confirmed upload of the rendered one-time file (``inv harden``): the hosts have our whole list."""
    path = secrets_path(run_or_path)
    with store_lock(path):
        store = read_store(path)
        entry = store["images"].get(image_cfg.name)
        if entry and entry.pop("one_time_on_host", None) is not None:
            write_store(path, store)


def from_entry(entry: dict, image: GuardImage) -> ImageSecrets:
    open_ = _given_knocks(image, "open") or _stored_knocks(entry["open"])
    close = _given_knocks(image, "close") or _stored_knocks(entry["close"])
    one_time = [_stored_knocks(seq) for seq in entry.get("one_time", [])] if image.knock.one_time else []
    return ImageSecrets(open_, close, one_time, Secret(entry["spa_key"]), Secret(entry["hmac_key"]))


def generate_sequence(forbidden: set[int], length: int = SEQUENCE_LENGTH) -> list[Knock]:
    """``length`` distinct TCP knocks in 1025-65535 from the CSPRNG, none in ``forbidden``."""
    ports: list[int] = []
    while len(ports) < length:
        port = KNOCK_LOW + csprng.randbelow(KNOCK_HIGH - KNOCK_LOW + 1)
        if port not in forbidden and port not in ports:
            ports.append(port)
    return [Knock(port, "tcp") for port in ports]


def generate_key(size: int) -> str:
    """A base64 key of ``size`` random bytes, as ``fwknop --key-gen`` prints it."""
    return base64.b64encode(csprng.token_bytes(size)).decode("ascii")


def _given_knocks(image: GuardImage, which: str) -> list[Knock]:
    return [parse_knock(k, which) for k in getattr(image.knock, which)]


def _stored_knocks(raw: Any) -> list[Knock] | None:
    if not isinstance(raw, list):
        return None
    try:
        return [parse_knock(k, "stored") for k in raw]
    except ConfigError:
        return None


def _ports(seq: list[Knock] | None) -> set[int]:
    return {k.port for k in seq or []}


def _valid_key(raw: Any, size: int) -> bool:
    try:
        return isinstance(raw, str) and len(base64.b64decode(raw, validate=True)) == size
    except ValueError:
        return False


__all__ = ["ImageSecrets", "Knock", "Secret", "consume_one_time", "generate_key", "generate_sequence",
           "load_or_create", "mark_one_time_deployed", "secrets_path"]
