"""Put a kernel's artifacts on a host: upload and verify in a staging dir, then install without a half-installed kernel.

Every path here is on the host, under its system root (``HostRoot``: ``/`` on a
real instance, a temp dir in the tests, an image's directory for ``--root``).

* Upload: the set goes into ``<staging>/.<release>.part/`` file by file (each
  file whole or not at all, files already there with the right digest are not
  sent again), is checked there with ``sha256sum -c`` of our ``SHA256SUMS``, and
  only then renamed to ``<staging>/<release>/``. A set already there and
  verified is not sent again.
* Modules: unpacked into ``lib/modules/.<release>.new``, synced, then renamed to
  ``lib/modules/<release>`` (or exchanged with an existing one in one step, then
  the old copy removed). A marker file holds the tarball's digest, so a rerun
  knows the installed tree is this set's.
* Boot files: each copied to ``boot/.<name>.new``, synced, renamed over
  ``boot/<name>``; ``vmlinuz-<release>`` last, so a kernel image in /boot
  always has its System.map, config, initramfs and modules (grub-mkconfig and
  10_linux pick kernels by their vmlinuz). Files of another release are never
  touched, so the old kernel stays bootable at every instant.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, OrchestratorError
from ..faults import crash_point
from ..run import Target
from . import artifacts

MODULES_MARKER = ".gentoo-ec2-orchestrator.sha256"
# artifact name -> name in /boot (format string on the release); vmlinuz last, see the module docstring
BOOT_FILES = (("System.map", "System.map-{}"), ("config", "config-{}"), ("initramfs.img", "initramfs-{}.img"),
              ("vmlinuz", "vmlinuz-{}"))
# renameat2(RENAME_EXCHANGE) on the host: coreutils' mv --exchange is too new for most hosts; Portage needs python3
EXCHANGE_PY = ("import ctypes,os,sys\n"
               "libc=ctypes.CDLL(None,use_errno=True)\n"
               "if libc.renameat2(-100,os.fsencode(sys.argv[1]),-100,os.fsencode(sys.argv[2]),2):\n"
               "    sys.exit('exchange %s %s: %s' % (sys.argv[1], sys.argv[2], os.strerror(ctypes.get_errno())))\n")


@dataclass(frozen=True)
class HostRoot:
    """The host's system root as seen over SSH; ``at("/boot")`` is where its /boot is."""

    root: str = "/"

    def at(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(self.root, path.lstrip("/")))

    @property
    def is_live(self) -> bool:
        """True when the root is the running system's: commands like uname and grub-mkconfig describe it."""
        return posixpath.normpath(self.root) == "/"


@dataclass(frozen=True)
class ArtifactSet:
    """A published set on the build box: ``directory`` holds the files ``sums`` lists."""

    image: str
    release: str
    directory: Path
    sums: dict[str, str]  # name -> sha256

    @property
    def sums_text(self) -> str:
        return (self.directory / artifacts.SUMS_FILE).read_text()

    @property
    def has_initramfs(self) -> bool:
        return "initramfs.img" in self.sums


def find_set(output_dir: Path, image: str, version: str = "") -> ArtifactSet:
    """The set ``--version`` names (default ``latest``), refused with one line when absent or damaged."""
    base = artifacts.image_dir(output_dir, image)
    wanted = version or artifacts.LATEST
    if "/" in wanted or wanted.startswith("."):
        raise ConfigError(f"--version: {wanted!r} is not a release name")
    directory = base / wanted
    if not directory.is_dir():
        have = sorted(p.name for p in base.iterdir() if not p.name.startswith(".")) if base.is_dir() else []
        raise ConfigError(f"--version: no kernel {wanted!r} built for image {image} in {base} "
                          f"(have: {', '.join(have) or 'none; run inv build-kernel'})")
    directory = directory.resolve()
    bad = artifacts.damaged(directory)
    if bad:
        raise OrchestratorError(f"{directory}: {', '.join(bad)} do not match SHA256SUMS; rebuild with inv build-kernel")
    sums = {}
    for line in (directory / artifacts.SUMS_FILE).read_text().splitlines():
        digest, _, name = line.partition("  ")
        sums[name] = digest
    return ArtifactSet(image, directory.name, directory, sums)


def remote_digests(target: Target, paths: list[str]) -> dict[str, str]:
    """``{path: sha256}`` of the paths that exist on the host (one ``sha256sum`` call; missing ones are absent)."""
    if not paths:
        return {}
    done = target.run(["sha256sum", "--", *paths], check=False, mutates=False)
    found = {}
    for line in done.stdout.splitlines():
        digest, _, path = line.partition("  ")
        if len(digest) == 64 and path in paths:
            found[path] = digest
    return found


# --- upload ------------------------------------------------------------------------------

def staged_dir(host: HostRoot, staging_dir: str, aset: ArtifactSet) -> str:
    return host.at(posixpath.join(staging_dir, aset.image, aset.release))


def is_staged(target: Target, host: HostRoot, staging_dir: str, aset: ArtifactSet) -> bool:
    """True when the host holds exactly this set in its staging dir and ``sha256sum -c`` passes there."""
    where = staged_dir(host, staging_dir, aset)
    if target.read_file(posixpath.join(where, artifacts.SUMS_FILE)) != aset.sums_text:
        return False
    return target.run(["sha256sum", "-c", "--quiet", "--strict", artifacts.SUMS_FILE], cwd=where, check=False,
                      mutates=False).ok


def upload(target: Target, host: HostRoot, staging_dir: str, aset: ArtifactSet) -> int:
    """Make the staging dir hold the verified set; returns how many files were sent (0: already there)."""
    if is_staged(target, host, staging_dir, aset):
        return 0
    final = staged_dir(host, staging_dir, aset)
    part = posixpath.join(posixpath.dirname(final), f".{aset.release}.part")
    target.run(["mkdir", "-p", "--", part])
    have = {} if target.dry else remote_digests(target, [posixpath.join(part, n) for n in aset.sums])
    sent = 0
    for name, digest in sorted(aset.sums.items()):
        if have.get(posixpath.join(part, name)) != digest:
            target.put(aset.directory / name, posixpath.join(part, name))
            sent += 1
    target.put(aset.directory / artifacts.SUMS_FILE, posixpath.join(part, artifacts.SUMS_FILE))
    if target.dry:
        target.echo(f"[dry-run] {target.describe()}: sha256sum -c SHA256SUMS in {part}, then rename it to {final}")
        return sent
    check = target.run(["sha256sum", "-c", "--quiet", "--strict", artifacts.SUMS_FILE], cwd=part, check=False)
    if not check.ok:
        raise OrchestratorError(f"{target.describe()}: the uploaded set in {part} fails sha256sum -c: "
                                f"{' | '.join(check.output.splitlines()[-3:])}")
    target.run(["sync", "--", part])
    target.run(["rm", "-rf", "--", final])
    target.run(["mv", "-T", "--", part, final])
    crash_point("deploy-uploaded")
    return sent


# --- install -----------------------------------------------------------------------------

def boot_targets(host: HostRoot, aset: ArtifactSet) -> list[tuple[str, str]]:
    """``(artifact name, path in /boot)`` in install order (vmlinuz last)."""
    return [(name, host.at(f"/boot/{pattern.format(aset.release)}")) for name, pattern in BOOT_FILES
            if name in aset.sums]


def installed(target: Target, host: HostRoot, aset: ArtifactSet) -> dict[str, bool]:
    """Which parts of this set the host already has: ``{"modules": ..., "boot": ...}``."""
    marker = host.at(f"/lib/modules/{aset.release}/{MODULES_MARKER}")
    modules = (target.read_file(marker) or "").strip() == aset.sums[artifacts.MODULES_FILE]
    wanted = boot_targets(host, aset)
    digests = remote_digests(target, [path for _, path in wanted])
    boot = all(digests.get(path) == aset.sums[name] for name, path in wanted)
    return {"modules": modules, "boot": boot}


def install(target: Target, host: HostRoot, staging_dir: str, aset: ArtifactSet) -> list[str]:
    """Install modules then boot files from the staging dir; returns what was installed (empty: nothing to do)."""
    have = installed(target, host, aset)
    staged = staged_dir(host, staging_dir, aset)
    done = []
    if not have["modules"]:
        install_modules(target, host, staged, aset)
        done.append(f"lib/modules/{aset.release}")
    crash_point("deploy-modules-installed")
    if not have["boot"]:
        done += install_boot_files(target, host, staged, aset)
    crash_point("deploy-boot-installed")
    return done


def install_modules(target: Target, host: HostRoot, staged: str, aset: ArtifactSet) -> None:
    """Unpack into a hidden sibling, mark it, sync, then rename (or exchange) it into place."""
    parent = host.at("/lib/modules")
    final, hidden = posixpath.join(parent, aset.release), posixpath.join(parent, f".{aset.release}.new")
    target.run(["rm", "-rf", "--", hidden])
    target.run(["mkdir", "-p", "--", hidden])
    target.run(["tar", "--zstd", "-x", "-f", posixpath.join(staged, artifacts.MODULES_FILE), "-C", hidden,
                "--strip-components=3", "--no-same-owner", f"lib/modules/{aset.release}"])
    target.replace_file(posixpath.join(hidden, MODULES_MARKER), aset.sums[artifacts.MODULES_FILE] + "\n",
                        keep_previous=False)
    target.run(["sync", "--", hidden])
    exists = target.run(["test", "-d", final], check=False, mutates=False).ok
    if exists:
        target.run(["python3", "-c", EXCHANGE_PY, hidden, final])
        target.run(["rm", "-rf", "--", hidden])
    else:
        target.run(["mv", "-T", "--", hidden, final])
    target.run(["sync", "--", parent])


def install_boot_files(target: Target, host: HostRoot, staged: str, aset: ArtifactSet) -> list[str]:
    """Each file copied under a temp name, synced, renamed over its name; only files that differ."""
    wanted = boot_targets(host, aset)
    digests = remote_digests(target, [path for _, path in wanted])
    done = []
    for name, path in wanted:
        if digests.get(path) == aset.sums[name]:
            continue
        temp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.new")
        target.run(["cp", "--", posixpath.join(staged, name), temp])
        target.run(["sync", "--", temp])
        target.run(["mv", "-f", "-T", "--", temp, path])
        done.append(posixpath.basename(path))
    target.run(["sync", "--", host.at("/boot")])
    return done


def remove_kernel(target: Target, host: HostRoot, release: str) -> list[str]:
    """Remove one kernel's boot files (vmlinuz first, so nothing lists it) and then its modules."""
    removed = []
    for _, pattern in reversed(BOOT_FILES):
        path = host.at(f"/boot/{pattern.format(release)}")
        if target.run(["test", "-e", path], check=False, mutates=False).ok:
            target.run(["rm", "-f", "--", path])
            removed.append(posixpath.basename(path))
    modules = host.at(f"/lib/modules/{release}")
    if target.run(["test", "-d", modules], check=False, mutates=False).ok:
        gone = host.at(f"/lib/modules/.{release}.removing")
        target.run(["mv", "-T", "--", modules, gone])
        target.run(["rm", "-rf", "--", gone])
        removed.append(f"lib/modules/{release}")
    return removed
