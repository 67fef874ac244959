"""The validator and the value types every config section is written in.

A section is a frozen dataclass; ``_build`` turns a plain mapping into one,
field by field, with ``_coerce`` following the type hints (``Size``, ``Port``,
``Cidr``, ``Literal``, ``Annotated[int, Between(...)]``, nested dataclasses,
lists, dicts).  An ``Annotated`` int's rules decide its whole range (a plain
``int`` must not be negative).  Once a dataclass is built, its ``check(key)`` method, if it has
one, is called with its dotted key: that is where settings that only make
sense together are checked, once.  Every problem is a ``ConfigError`` whose
message is one line naming the dotted key and saying why.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from ..errors import ConfigError

MIB = 1024**2
SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
MAX_WORKERS = 1024  # more processes or threads than any EC2 instance has vCPUs is a typo


class Size(int):
    """A byte count written as ``33554432``, ``32M``, ``32MiB`` or ``1.5G``."""

    @classmethod
    def parse(cls, value: Any, key: str) -> "Size":
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a size like 32M, got {value!r}")
        if isinstance(value, int):
            if value < 0:
                raise ConfigError(f"{key}: must not be negative, got {value}")
            return cls(value)
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*", str(value), re.I)
        if not match:
            raise ConfigError(f"{key}: expected a size like 32M or 1G, got {value!r}")
        number, unit = match.groups()
        return cls(int(float(number) * SIZE_UNITS[unit.upper()]))


class Cidr(str):
    """An IPv4 or IPv6 network such as ``10.0.0.0/16`` (a bare address is a /32 or /128).

    Kept as its normalised text; ``network`` is the ``ipaddress`` object.  Host
    bits set (``10.0.0.1/16``) are refused: that is almost always a typo for
    the address or for the network.
    """

    @classmethod
    def parse(cls, value: Any, key: str) -> "Cidr":
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a network like 10.0.0.0/16, got {value!r}")
        try:
            network = ipaddress.ip_network(value.strip())
        except ValueError as exc:
            raise ConfigError(f"{key}: expected a network like 10.0.0.0/16, got {value!r} ({exc})") from None
        return cls(str(network))

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(str(self))


@dataclass(frozen=True)
class Between:
    """``Annotated[int, Between(low, high)]``: an integer setting with a natural range (inclusive)."""

    low: int = 0
    high: int | None = None

    def check(self, number: int, key: str) -> None:
        if number < self.low:
            why = "must not be negative" if self.low == 0 else f"must be at least {self.low}"
            raise ConfigError(f"{key}: {why}, got {number}")
        if self.high is not None and number > self.high:
            raise ConfigError(f"{key}: must be at most {self.high}, got {number}")


@dataclass(frozen=True)
class TcpPort:
    """The rule behind ``Port``."""

    def check(self, number: int, key: str) -> None:
        if not 0 < number < 65536:
            raise ConfigError(f"{key}: {number} is not a TCP port (1-65535)")


#: A TCP port, 1-65535. The value stays a plain int: socket calls refuse int subclasses.
Port = Annotated[int, TcpPort()]


def check_unique_names(names: Iterable[str], key: str) -> None:
    """Each name once in the list at ``key`` (``fleet.hosts``, ``guard.images``); a second use names both."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ConfigError(f"{key}[{i}].name: {name!r} is used twice (also {key}[{seen[name]}])")
        seen[name] = i


def find_named(items: list, name: str, key: str):
    """The entry of ``items`` (each with a ``name``) called ``name``; else one line for ``--image`` listing
    what ``key`` (``kernel.images``, ``guard.images``) holds."""
    for item in items:
        if item.name == name:
            return item
    names = ", ".join(item.name for item in items) or "none configured"
    raise ConfigError(f"--image: no image {name!r} in {key} ({names})")


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def plain(value: Any) -> Any:
    """invoke's DataProxy trees -> plain dicts and lists."""
    if isinstance(value, Mapping) or hasattr(value, "_config"):
        return {k: plain(value[k]) for k in value.keys()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice a typo most likely meant, or None."""
    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None



def _build(cls: type, raw: Any, key: str) -> Any:
    """A dataclass from a mapping: unknown and missing keys refused, every field coerced, then ``check``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected a mapping of settings, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in raw:
        if name not in fields:
            close = closest(str(name), fields)
            hint = f" (did you mean {close}?)" if close else ""
            raise ConfigError(f"{key}.{name}: unknown setting{hint}")
    values = {}
    for name, f in fields.items():
        if name in raw:
            values[name] = _coerce(hints[name], raw[name], f"{key}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}.{name}: required setting is missing")
    obj = cls(**values)
    if hasattr(obj, "check"):
        obj.check(key)
    return obj


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        coerced = _integer(value, key) if args[0] is int else _coerce(args[0], value, key)
        for rule in hint.__metadata__:
            rule.check(coerced, key)
        return coerced
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key)
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{key}: {value!r} is not one of {allowed}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return {_coerce(args[0], k, f"{key}"): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if hint in (Size, Cidr) or isinstance(hint, type) and hasattr(hint, "parse"):
        return hint.parse(value, key)  # a value type of its own (a section's, e.g. guard's KnockSpec)
    if hint is float:
        return _number(value, key)
    if hint is bool:
        return _bool(value, key)
    if hint is int:
        number = _integer(value, key)
        Between(0).check(number, key)
        return number
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a path, got {value!r}")
        return Path(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise AssertionError(f"no coercion for {hint!r} at {key}")


def _integer(value: Any, key: str) -> int:
    """An int, or its decimal text (how INVOKE_* variables and registered defaults arrive)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{key}: expected an integer, got {value!r}") from None


def _number(value: Any, key: str) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number < 0:
        raise ConfigError(f"{key}: expected a non-negative number, got {value!r}")
    return number


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
        return False
    raise ConfigError(f"{key}: expected true or false, got {value!r}")
