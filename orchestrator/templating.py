"""One jinja2 environment for every file we generate from ``templates/``, and the checks every value needs.

Every template is rendered the same way: a missing value is an error
(``StrictUndefined``), nothing is HTML-escaped (these are config files), the
final newline is kept, and block tags take their own line away
(``trim_blocks``/``lstrip_blocks``). The filters escape for the formats the
templates write: ``ini`` (Portage's configparser interpolates ``%``), ``rsync``
(rsyncd.conf expands ``%VAR%``) and ``quoted`` (a double-quoted web server
argument).

Whatever else a format needs is checked by the caller that knows the format;
what no line-based file should carry is checked here, for every value: a
newline, a NUL or another control character would end a line early, cut the
file or hide in it, so it is refused with one line naming the setting it came
from.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from .errors import ConfigError, OrchestratorError

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # every C0 control character, and DEL
CONTROL_NAMES = {"\n": "a newline", "\r": "a carriage return", "\x00": "a NUL", "\t": "a tab"}
FILTERS = {
    "ini": lambda value: str(value).replace("%", "%%"),
    "rsync": lambda value: str(value).replace("%", "%%"),
    "quoted": lambda value: f'"{value}"',
}


@functools.cache
def environment() -> jinja2.Environment:
    """The one environment; every template in ``templates/`` is rendered through it."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             autoescape=False, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(FILTERS)
    return env


def render(template: str, values: Mapping[str, Any], *, settings: Mapping[str, str] | None = None) -> str:
    """``template`` rendered with ``values``, each value checked first (``check_values``).

    ``settings`` maps a value's name to the setting it came from, for the
    error (``{"address": "binhost.serve.listen_address"}``); a value not
    listed is named as itself.
    """
    check_values(values, settings or {})
    try:
        return environment().get_template(template).render(values)
    except jinja2.TemplateNotFound:
        raise OrchestratorError(f"{TEMPLATES / template}: template not found") from None
    except jinja2.UndefinedError as exc:
        raise OrchestratorError(f"{TEMPLATES / template}: {exc.message}") from None


def check_values(values: Mapping[str, Any], settings: Mapping[str, str]) -> None:
    """Refuse any string (in lists, mappings and dataclasses too) that holds a control character."""
    for key, value in values.items():
        check_value(value, settings.get(key, key))


def check_value(value: Any, name: str) -> None:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        found = CONTROL.search(value)
        if found:
            what = CONTROL_NAMES.get(found.group(), f"a control character ({found.group()!r})")
            raise ConfigError(f"{name}: {value!r} contains {what}; refused in a generated file")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_value(key, f"{name} (a key)")
            check_value(item, f"{name}[{key!r}]")
    elif isinstance(value, (list, tuple, set, frozenset)):
        for i, item in enumerate(value):
            check_value(item, f"{name}[{i}]")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            check_value(getattr(value, field.name), f"{name}.{field.name}")


__all__ = ["TEMPLATES", "check_value", "check_values", "environment", "render"]
