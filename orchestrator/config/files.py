"""invoke's config files and INVOKE_* variables, read strictly.

invoke reads the project ``invoke.yaml``, the ``-f`` site file and the
environment itself; left alone, a YAML syntax error is a 58-line traceback,
``INVOKE_BACKUP_COMPRESSION_EXTREME=false`` becomes True (invoke casts to the
type of the existing value, and any non-empty text is a true bool), and a
section written with the wrong shape (``compression: 9``) crashes invoke's
merge.  ``StrictConfig`` is invoke's ``Config`` with those readers made strict:
each problem ends the run with exit 2 and one line naming the file (and line)
or the variable, before any task starts.
"""

from __future__ import annotations

import errno
import json
from typing import Any

from invoke.config import Config
from invoke.env import Environment
from invoke.exceptions import AmbiguousEnvVar, Exit, UncastableEnvVar, UnknownFileType
from invoke.util import yaml

from ..errors import EXIT_CONFIG
from .sections import SECTIONS, defaults


class StrictConfig(Config):
    """invoke's Config; every problem reading a file or a variable is ``Exit(one line, 2)``."""

    def _load_yaml(self, path: str) -> Any:
        try:
            with open(path) as fh:
                data = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise _exit(yaml_problem(path, exc)) from None
        except OSError as exc:
            _unreadable(path, exc)
        return checked_shape(data, path)

    _load_yml = _load_yaml

    def _load_json(self, path: str) -> Any:
        try:
            with open(path) as fh:
                data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise _exit(f"{path}:{exc.lineno}: {exc.msg}") from None
        except OSError as exc:
            _unreadable(path, exc)
        return checked_shape(data, path)

    def load_runtime(self, merge: bool = True) -> None:
        try:
            super().load_runtime(merge)
        except UnknownFileType:
            raise _exit(f"{self._runtime_path}: not a config file invoke reads "
                        "(name it .yaml, .yml, .json or .py)") from None

    def load_shell_env(self) -> None:
        """invoke's own loading, through ``StrictEnvironment``."""
        self.merge()
        try:
            loaded = StrictEnvironment(config=self._config, prefix=self._env_prefix).load()
        except AmbiguousEnvVar as exc:
            raise _exit(str(exc)) from None
        self._set(_env=loaded)
        self.merge()


class StrictEnvironment(Environment):
    """invoke's variable loader: our settings arrive as text, for the validator to read.

    The validator knows each setting's type and names the key when the text does
    not fit it; invoke's casting would turn ``false`` into True for a bool and
    crash on ``64M`` for an int.  A list cannot come from one variable at all.
    """

    def _path_set(self, key_path, value: str) -> None:
        old = self._path_get(key_path)
        variable = self._prefix + self._to_env_var(key_path)
        dotted = ".".join(key_path)
        if isinstance(old, (list, tuple)):
            raise _exit(f"{variable}: {dotted} is a list; set it in a config file")
        if key_path[0] in SECTIONS:
            self._set_text(key_path, value)
            return
        try:
            super()._path_set(key_path, value)
        except (UncastableEnvVar, ValueError, TypeError):
            raise _exit(f"{variable}: {value!r} does not fit {dotted} ({type(old).__name__})") from None

    def _set_text(self, key_path, value: str) -> None:
        node = self.data
        for key in key_path[:-1]:
            node = node.setdefault(key, {})
        node[key_path[-1]] = value


def adopt(config: Any = None) -> None:
    """Make the config of the running ``inv`` a ``StrictConfig``, from now on.

    Plain ``inv`` (invoke's own ``Program``) creates invoke's ``Config`` before
    it imports tasks.py, then reads the project invoke.yaml, the ``-f`` file and
    the environment after.  Called from tasks.py, this changes the class of that
    one object (``StrictConfig`` adds no state, only stricter readers), so those
    reads are strict without a custom entry point.  Other programs (fabric's,
    a test's own ``Config``) are left alone.
    """
    if config is None:
        from invoke.main import program

        config = getattr(program, "config", None)
    if type(config) is Config:
        config.__class__ = StrictConfig


def yaml_problem(path: str, exc: Exception) -> str:
    """``site.yaml:12: mapping values are not allowed here``: the file, the line, the parser's words."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    return f"{path}:{mark.line + 1}: {problem}" if mark is not None else f"{path}: {problem}"


def checked_shape(data: Any, path: str) -> dict:
    """A file's data, refused when a section or setting is a mapping where one was not expected or vice versa.

    invoke cannot merge a mapping with a non-mapping (it raises with neither
    key nor file); an empty section (``backup:`` with every line commented out)
    is read as an empty mapping.
    """
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _exit(f"{path}: expected a mapping of sections, got {_kind(data)}")
    _check_mappings(data, {**Config.global_defaults(), **defaults()}, [], path)
    return data


def _check_mappings(data: dict, expected: dict, where: list[str], path: str) -> None:
    for key, value in list(data.items()):
        if key not in expected:
            continue
        dotted = ".".join([*where, str(key)])
        if isinstance(expected[key], dict):
            if value is None and (where[0] if where else key) in SECTIONS:
                data[key] = value = {}
            if not isinstance(value, dict):
                raise _exit(f"{path}: {dotted}: expected a mapping of settings, got {_kind(value)}")
            _check_mappings(value, expected[key], [*where, str(key)], path)
        elif isinstance(value, dict):
            wanted = "a list" if isinstance(expected[key], list) else "a single value"
            raise _exit(f"{path}: {dotted}: expected {wanted}, got a mapping")


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"


def _unreadable(path: str, exc: OSError) -> None:
    """A missing file is invoke's business (it tries several names); anything else ends the run."""
    if exc.errno == errno.ENOENT:
        raise exc
    raise _exit(f"{path}: {exc.strerror}") from None


def _exit(message: str) -> Exit:
    return Exit(message, code=EXIT_CONFIG)
