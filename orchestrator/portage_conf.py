"""The Portage configuration an instance needs to use the binhost.

Modern Portage reads repositories from ``repos.conf`` (``sync-uri``) and binary
package hosts from ``binrepos.conf``; old Portage only knows ``SYNC`` and
``PORTAGE_BINHOST`` in make.conf, so a marked block can be merged there too.
Everything rendered here is parsed back with Portage's own parsers before it
is returned, so a file that Portage would misread is never written.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from dataclasses import dataclass

from .config import ClientConfig
from .errors import ConfigError
from .templating import render

# "zz-": Portage reads a .conf directory in sorted order and the last value of a key wins,
# so our sync-uri overrides the one in an existing gentoo.conf.
FILE_NAME = "zz-gentoo-ec2-orchestrator.conf"
BINREPO_NAME = "gentoo-ec2-orchestrator"
BEGIN_MARKER = "# BEGIN gentoo-ec2-orchestrator binhost"
END_MARKER = "# END gentoo-ec2-orchestrator binhost"

REPO_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9+_-]*")  # PMS 3.1.5
EPREFIX_RE = re.compile(r"(/[A-Za-z0-9._+-]+)+")  # the characters Portage accepts in paths
UNSAFE_URI_RE = re.compile(r"[\s\"'`\\$\x00-\x1f\x7f]")
SYNC_SCHEMES = ("rsync", "file")
BINHOST_SCHEMES = ("http", "https", "file")
# What Portage passes to its config parsers for %(EPREFIX)s-style interpolation.
PARSER_DEFAULTS = {"EPREFIX": "", "EROOT": "/", "PORTAGE_CONFIGROOT": "/", "ROOT": "/"}


@dataclass(frozen=True)
class ClientUris:
    """Where one instance reaches the binhost (direct, through a tunnel, or an unpacked tarball)."""

    sync_uris: dict[str, str]  # repository name -> rsync:// or file:// URI
    binhost_uri: str  # http(s):// or file://


@dataclass(frozen=True)
class RepoEntry:
    name: str
    location: str
    sync_uri: str


def render_client_configs(client: ClientConfig, repos: list[str], uris: ClientUris, *,
                          verify_signature: bool) -> dict[str, str]:
    """``{path on the instance: text}`` for repos.conf and binrepos.conf, both validated."""
    where = f"binhost.clients[{client.name}]"
    eprefix = _eprefix(client.eprefix, f"{where}.eprefix")
    names = _repo_names(repos)
    check_uris(uris, names, where)
    entries = [RepoEntry(n, f"{eprefix}/var/db/repos/{n}", uris.sync_uris[n]) for n in names]
    repos_path = f"{eprefix}/etc/portage/repos.conf/{FILE_NAME}"
    binrepos_path = f"{eprefix}/etc/portage/binrepos.conf/{FILE_NAME}"
    settings = {"client": f"{where}.host", "repos": "binhost.repos"}
    repos_text = render("repos.conf.j2", dict(path=repos_path, client=client.name, main_repo=main_repo(names),
                                              repos=entries), settings=settings)
    binrepos_text = render("binrepos.conf.j2", dict(path=binrepos_path, client=client.name,
                                                    binhost_uri=uris.binhost_uri, verify_signature=verify_signature),
                           settings=settings)
    _check_repos_read_back(validate_repos_conf(repos_text, repos_path), entries, repos_path)
    _check_binrepo_read_back(validate_binrepos_conf(binrepos_text, binrepos_path, verify_signature),
                             uris.binhost_uri, binrepos_path)
    return {repos_path: repos_text, binrepos_path: binrepos_text}


def main_repo(names: list[str]) -> str:
    """``gentoo`` when it is published (profiles and eclasses come from it), else the first one."""
    return "gentoo" if "gentoo" in names else names[0]


def legacy_make_conf_block(uris: ClientUris, repos: list[str]) -> str:
    """The marked make.conf block with PORTAGE_BINHOST and SYNC, for Portage that predates binrepos.conf."""
    names = _repo_names(repos)
    check_uris(uris, names, "make.conf")
    main = main_repo(names)
    block = render("make.conf-binhost.j2", dict(binhost_uri=uris.binhost_uri, sync_uri=uris.sync_uris[main]))
    parsed = validate_make_conf(block, "make.conf block")
    if parsed.get("PORTAGE_BINHOST") != uris.binhost_uri or parsed.get("SYNC") != uris.sync_uris[main]:
        raise ConfigError("make.conf block: Portage would not read PORTAGE_BINHOST/SYNC back as written")
    return block


def merge_make_conf(existing: str, block: str, name: str = "make.conf") -> str:
    """Replace our marked block in ``existing``, or append it; every other byte is kept.

    The result is validated as a whole; a begin marker without an end marker
    (or the reverse, or two blocks) is refused rather than guessed at.
    """
    lines = existing.splitlines(keepends=True)
    stripped = [line.rstrip("\r\n") for line in lines]
    begins = [i for i, line in enumerate(stripped) if line == BEGIN_MARKER]
    ends = [i for i, line in enumerate(stripped) if line == END_MARKER]
    if len(begins) > 1 or len(ends) > 1:
        raise ConfigError(f"{name}: more than one gentoo-ec2-orchestrator block; remove the extra one by hand")
    if begins and (not ends or ends[0] < begins[0]):
        raise ConfigError(f"{name}: '{BEGIN_MARKER}' without a following '{END_MARKER}'; fix the file by hand")
    if ends and not begins:
        raise ConfigError(f"{name}: '{END_MARKER}' without '{BEGIN_MARKER}'; fix the file by hand")
    block = block if block.endswith("\n") else block + "\n"
    if begins:
        merged = "".join(lines[:begins[0]]) + block + "".join(lines[ends[0] + 1:])
    else:
        head = existing if not existing or existing.endswith("\n") else existing + "\n"
        merged = head + ("\n" if head.strip() else "") + block
    validate_make_conf(merged, name)
    return merged


def validate_make_conf(text: str, name: str) -> dict[str, str]:
    """Parse like Portage does (``getconfig``, sourcing on); returns the variables.

    ``source`` lines are resolved on this machine, so a make.conf that sources
    a file only the instance has does not pass.
    """
    from portage.exception import ParseError
    from portage.util import getconfig

    with _temp_file(text) as path, _captured_stderr() as noise:
        try:
            return getconfig(path, tolerant=False, allow_sourcing=True, expand=True) or {}
        except (ValueError, ParseError) as exc:
            reason = noise.getvalue().strip() or str(exc)
            raise ConfigError(f"{name}: not a valid make.conf: {_one_line(reason, path, name)}") from None


def validate_repos_conf(text: str, name: str) -> dict[str, dict[str, str]]:
    """Parse like Portage's repos.conf loader; every section needs an absolute location, sync-type, sync-uri.

    Returns ``{section: {key: value}}`` with values as Portage sees them
    (interpolated).
    """
    sections = _parse_ini(text, name, "repos.conf")
    if not sections:
        raise ConfigError(f"{name}: not a valid repos.conf: no repository sections")
    for section, values in sections.items():
        for key in ("location", "sync-type", "sync-uri"):
            if not values.get(key):
                raise ConfigError(f"{name}: repository [{section}] has no {key}")
        if not values["location"].startswith("/"):
            raise ConfigError(f"{name}: repository [{section}] location {values['location']!r} is not absolute")
    return sections


def validate_binrepos_conf(text: str, name: str, verify_signature: bool) -> dict[str, str]:
    """Load with Portage's ``BinRepoConfigLoader``; returns ``{binrepo: sync-uri}``.

    Every section must survive the loader (it silently drops one without
    sync-uri) and carry ``verify-signature`` equal to ``verify_signature``.
    """
    from portage.binrepo.config import BinRepoConfigLoader

    sections = _parse_ini(text, name, "binrepos.conf")
    if not sections:
        raise ConfigError(f"{name}: not a valid binrepos.conf: no binary repository sections")
    with _temp_file(text) as path, _captured_stderr() as noise:
        loaded = BinRepoConfigLoader((path,), dict(PARSER_DEFAULTS))
    missing = sorted(set(sections) - set(loaded))
    if missing:
        reason = _one_line(noise.getvalue().strip() or "not loaded", path, name)
        raise ConfigError(f"{name}: Portage ignores [{', '.join(missing)}]: {reason}")
    for repo in loaded.values():
        if repo.verify_signature is not verify_signature:
            raise ConfigError(f"{name}: [{repo.name}] verify-signature is {repo.verify_signature}, "
                              f"expected {str(verify_signature).lower()}")
    return {repo.name: repo.sync_uri for repo in loaded.values()}


def check_uris(uris: ClientUris, repos: list[str], where: str) -> None:
    """Every published repository has a sync URI; all URIs are safe in ini files and make.conf."""
    for name in repos:
        if name not in uris.sync_uris:
            raise ConfigError(f"{where}: no sync URI for repository {name!r}")
        _check_uri(uris.sync_uris[name], SYNC_SCHEMES, f"{where}: sync-uri for repository {name!r}")
    _check_uri(uris.binhost_uri, BINHOST_SCHEMES, f"{where}: binhost sync-uri")


def _check_uri(uri: str, schemes: tuple[str, ...], key: str) -> None:
    if not isinstance(uri, str) or UNSAFE_URI_RE.search(uri):
        raise ConfigError(f"{key}: {uri!r} contains whitespace, a quote, a backslash or $ "
                          f"(it comes from the host or path settings)")
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in schemes:
        raise ConfigError(f"{key}: expected a {' or '.join(s + '://' for s in schemes)} URI, got {uri!r}")
    if scheme == "file" and not rest.startswith("/"):
        raise ConfigError(f"{key}: a file:// URI needs an absolute path (file:///dir), got {uri!r}")
    if scheme != "file" and not rest.split("/", 1)[0]:
        raise ConfigError(f"{key}: {uri!r} has no host")


def _repo_names(repos: list[str]) -> list[str]:
    names = list(dict.fromkeys(repos))
    if not names:
        raise ConfigError("binhost.repos: no repositories to configure")
    for name in names:
        if not REPO_NAME_RE.fullmatch(name):
            raise ConfigError(f"binhost.repos: {name!r} is not a valid repository name")
    return names


def _eprefix(value: str, key: str) -> str:
    eprefix = value.rstrip("/")
    if eprefix and not EPREFIX_RE.fullmatch(eprefix):
        raise ConfigError(f"{key}: expected an absolute path of letters, digits and . _ + - (or empty), "
                          f"got {value!r}")
    return eprefix


def _check_repos_read_back(parsed: dict[str, dict[str, str]], entries: list[RepoEntry], name: str) -> None:
    for entry in entries:
        values = parsed.get(entry.name, {})
        if (values.get("location"), values.get("sync-uri")) != (entry.location, entry.sync_uri):
            raise ConfigError(f"{name}: Portage would not read [{entry.name}] back as written")


def _check_binrepo_read_back(parsed: dict[str, str], uri: str, name: str) -> None:
    if parsed.get(BINREPO_NAME) != uri.rstrip("/"):  # the loader drops a trailing slash itself
        raise ConfigError(f"{name}: Portage would not read sync-uri back as written")


def _parse_ini(text: str, name: str, kind: str) -> dict[str, dict[str, str]]:
    """Parse with Portage's configparser setup (``read_configs``, interpolation on)."""
    from portage.util.configparser import ConfigParserError, SafeConfigParser, read_configs

    parser = SafeConfigParser(defaults=PARSER_DEFAULTS)
    with _temp_file(text) as path:
        try:
            read_configs(parser, [path])
            return {s: {k: v for k, v in parser.items(s) if k not in PARSER_DEFAULTS} for s in parser.sections()}
        except ConfigParserError as exc:
            raise ConfigError(f"{name}: not a valid {kind}: {_one_line(str(exc), path, name)}") from None


@contextlib.contextmanager
def _temp_file(text: str):
    with tempfile.NamedTemporaryFile("w", prefix="portage-conf-", suffix=".conf") as handle:
        handle.write(text)
        handle.flush()
        yield handle.name


@contextlib.contextmanager
def _captured_stderr():
    """Portage reports details through ``writemsg`` (stderr); keep them for the error line instead."""
    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        yield buffer


def _one_line(reason: str, temp_path: str, name: str) -> str:
    return " ".join(reason.replace(temp_path, name).split())

