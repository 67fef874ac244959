"""Real Portage (from PyPI) in scratch prefixes: a toy ebuild repository, a
binhost "system" and client "systems", each one directory used as
``PORTAGE_OVERRIDE_EPREFIX``.

Pytest-independent, so bench/ uses it too. Nothing here touches the host's
own /etc/portage (there is none on Debian) or anything outside ``base``.
"""

from __future__ import annotations

import email.utils
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CATEGORY = "app-lab"
PROFILE = "profiles/default/linux/amd64/lab"
PORTAGE_CONFIG = Path(sys.prefix) / "share" / "portage" / "config"
NO_SANDBOX = "-sandbox -usersandbox -userpriv -ipc-sandbox -network-sandbox -pid-sandbox"

EBUILD = """\
EAPI=8
DESCRIPTION="toy package {name} for binhost tests"
HOMEPAGE="https://example.invalid"
LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
{depend}S="${{WORKDIR}}"

src_install() {{
	echo "${{PF}}" > "${{T}}"/version.txt || die
	insinto /usr/share/{name}
	doins "${{T}}"/version.txt
	echo "setting=1" > "${{T}}"/{name}.conf || die
	insinto /etc
	doins "${{T}}"/{name}.conf
{payload}}}
"""
# A payload makes packing cost what it does for real packages (tar, zstd, checksums),
# not only quickpkg's start-up: base64 of random bytes compresses like binaries do.
PAYLOAD = """\
	head -c {raw_bytes} /dev/urandom | base64 > "${{T}}"/payload.txt || die
	doins "${{T}}"/payload.txt
"""


def package_name(index: int) -> str:
    return f"toy{index:02d}"


def make_repo(path: Path, *, name: str = "lab", packages: int = 3, payload_kib: int = 0) -> Path:
    """A toy repository: ``app-lab/toy00 .. toyNN``, each at version 1.

    Every package after the first depends on ``toy00`` at run time, so the
    dependency resolver has real work and the client must pull the dependency.
    """
    profile = path / PROFILE
    for directory in (path / "metadata", path / "licenses", profile):
        directory.mkdir(parents=True, exist_ok=True)
    (path / "profiles" / "repo_name").write_text(f"{name}\n")
    (path / "profiles" / "categories").write_text(f"{CATEGORY}\n")
    (path / "metadata" / "layout.conf").write_text("masters =\nthin-manifests = true\nsign-manifests = false\n")
    (path / "licenses" / "MIT").write_text("MIT\n")
    (profile / "eapi").write_text("8\n")
    (profile / "make.defaults").write_text('ARCH="amd64"\nACCEPT_KEYWORDS="amd64"\nCHOST="x86_64-pc-linux-gnu"\n')
    for index in range(packages):
        write_ebuild(path, index, "1", payload_kib)
    stamp(path)
    return path


def stamp(repo: Path) -> None:
    """Write ``metadata/timestamp.chk`` as a Gentoo rsync mirror does; always later than before.

    An rsync client compares it with its own copy and skips the sync when it is not newer.
    """
    chk = repo / "metadata" / "timestamp.chk"
    previous = email.utils.parsedate_to_datetime(chk.read_text().strip()).timestamp() if chk.exists() else 0
    when = max(int(time.time()), int(previous) + 1)
    chk.write_text(time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(when)) + "\n")


def bump(repo: Path, index: int, version: str = "2", payload_kib: int = 0) -> Path:
    """A new upstream version of one package, published with a new timestamp."""
    ebuild = write_ebuild(repo, index, version, payload_kib)
    stamp(repo)
    return ebuild


def write_ebuild(repo: Path, index: int, version: str, payload_kib: int = 0) -> Path:
    name = package_name(index)
    depend = f'RDEPEND="{CATEGORY}/{package_name(0)}"\n' if index else ""
    ebuild = repo / CATEGORY / name / f"{name}-{version}.ebuild"
    ebuild.parent.mkdir(parents=True, exist_ok=True)
    payload = PAYLOAD.format(raw_bytes=payload_kib * 768) if payload_kib else ""  # base64 grows 4/3
    ebuild.write_text(EBUILD.format(name=name, depend=depend, payload=payload))
    return ebuild


def world_atoms(packages: int) -> list[str]:
    return [f"{CATEGORY}/{package_name(i)}" for i in range(packages)]


@dataclass(frozen=True)
class Prefix:
    """One scratch Portage system."""

    eprefix: Path

    @property
    def etc_portage(self) -> Path:
        return self.eprefix / "etc" / "portage"

    def env(self) -> dict[str, str]:
        """What a process needs to act on this prefix with the PyPI Portage."""
        return portage_env(self.eprefix)

    def installed(self) -> dict[str, str]:
        """``category/name`` -> installed version, read from the vdb."""
        found = {}
        vdb = self.eprefix / "var" / "db" / "pkg"
        for entry in sorted(vdb.glob("*/*")):
            if (entry / "BUILD_TIME").exists():
                category = entry.parent.name
                name, version = entry.name.rsplit("-", 1)
                found[f"{category}/{name}"] = version
        return found


def portage_env(eprefix: Path | str) -> dict[str, str]:
    return {
        "PORTAGE_OVERRIDE_EPREFIX": str(eprefix),
        "PORTAGE_USERNAME": "root",
        "PORTAGE_GRPNAME": "root",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }


def make_prefix(
    eprefix: Path,
    *,
    profile: Path,
    scratch: Path,
    world: list[str],
    repos_conf: str = "",
    make_conf_extra: str = "",
) -> Prefix:
    """The directory layout pip's Portage expects of an EPREFIX (see FIELD-NOTES)."""
    etc = eprefix / "etc" / "portage"
    for directory in (etc / "repos.conf", etc / "binrepos.conf", eprefix / "share/portage/config",
                      eprefix / "var/lib/portage", scratch / "distfiles", scratch / "tmp"):
        directory.mkdir(parents=True, exist_ok=True)
    for name in ("make.globals", "sets", "binrepos.conf"):
        link = eprefix / "share/portage/config" / name
        if not link.is_symlink():
            link.symlink_to(PORTAGE_CONFIG / name)
    if not (etc / "make.profile").is_symlink():
        (etc / "make.profile").symlink_to(profile)
    lines = [
        f'FEATURES="{NO_SANDBOX}"',
        'ACCEPT_LICENSE="*"',
        f'DISTDIR="{scratch}/distfiles"',
        f'PORTAGE_TMPDIR="{scratch}/tmp"',
        'CLEAN_DELAY="0"',
        'EMERGE_WARNING_DELAY="0"',
        make_conf_extra,
    ]
    (etc / "make.conf").write_text("\n".join(line for line in lines if line) + "\n")
    if repos_conf:
        (etc / "repos.conf" / "lab.conf").write_text(repos_conf)
    (eprefix / "var/lib/portage/world").write_text("".join(f"{atom}\n" for atom in world))
    return Prefix(eprefix)


def make_binhost_prefix(base: Path, *, upstream: Path, packages: int, name: str = "lab") -> Prefix:
    """A build-box prefix whose repository syncs (rsync, file://) from ``upstream``."""
    eprefix = base / "binhost"
    repo = eprefix / "var/db/repos" / name
    return make_prefix(
        eprefix,
        profile=repo / PROFILE,
        scratch=base / "binhost-scratch",
        world=world_atoms(packages),
        repos_conf=(
            f"[DEFAULT]\nmain-repo = {name}\n\n[{name}]\nlocation = {repo}\n"
            f"sync-type = rsync\nsync-uri = file://{upstream}/\n"
        ),
        make_conf_extra=f'PKGDIR="{eprefix}/var/cache/binpkgs"\nBINPKG_FORMAT="gpkg"',
    )


def make_client_prefix(base: Path, client: str, *, packages: int, name: str = "lab") -> Prefix:
    """An instance prefix: no repository yet (the binhost's configs bring it), no binaries."""
    eprefix = base / client
    repo = eprefix / "var/db/repos" / name
    return make_prefix(
        eprefix,
        profile=repo / PROFILE,
        scratch=base / f"{client}-scratch",
        world=world_atoms(packages),
        make_conf_extra=f'PKGDIR="{eprefix}/var/cache/binpkgs"',
    )
