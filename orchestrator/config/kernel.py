"""Section ``kernel``: the kernels `inv build-kernel` builds in the build system, one per image.

The build system is the binhost's (``binhost.mode`` and ``binhost.root``): the
seed built its EC2 kernel in the same chroot it built packages in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from ..errors import ConfigError
from .validator import MAX_WORKERS, Between, find_named

IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAKE_CONFIG_TARGET = re.compile(r"[a-z0-9_.]*config")  # defconfig, tinyconfig, kvm_guest.config, ...
DRIVER_NAME = re.compile(r"[A-Za-z0-9_-]+")
CONFIG_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")  # a plain file name in kernel.config_dir/<image>/


@dataclass(frozen=True)
class SourceConfig:
    """Key ``kernel.images[].source``: exactly one of ``package`` or ``path``.

    ``package``: a Portage package that installs sources (``sys-kernel/gentoo-sources``,
    an overlay's such as the seed's ``sys-kernel/ec2-sources``) or, with builder
    ``portage``, a distribution kernel (``sys-kernel/gentoo-kernel``).
    ``repository``: an overlay enabled with ``eselect repository enable`` first
    (the seed's ``layman -s sabayon-distro``). ``path``: a tree already unpacked
    in the build system (a path as seen inside it).
    """

    package: str = ""
    repository: str = ""
    path: str = ""

    def check(self, key: str) -> None:
        if bool(self.package) == bool(self.path):
            raise ConfigError(f"{key}: set exactly one of package (a Portage package) or path (an unpacked tree)")
        if self.package and not re.fullmatch(r"[A-Za-z0-9+_.-]+/[A-Za-z0-9+_.-]+", self.package):
            raise ConfigError(f"{key}.package: expected category/name like sys-kernel/gentoo-sources, "
                              f"got {self.package!r}")
        if self.repository and not self.package:
            raise ConfigError(f"{key}.repository: only with package (the overlay that has it)")
        if self.repository and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", self.repository):
            raise ConfigError(f"{key}.repository: {self.repository!r} is not a repository name")
        if self.path and not self.path.startswith("/"):
            raise ConfigError(f"{key}.path: must be an absolute path inside the build system, got {self.path!r}")

    @property
    def kind(self) -> str:
        return "package" if self.package else "path"


@dataclass(frozen=True)
class ImageConfig:
    """One entry of ``kernel.images``: the kernel one image (a kind of instance) boots.

    The config comes from ``kernel.config_dir/<name>/``: ``config`` is a full
    ``.config``; otherwise the make target ``base`` (``defconfig``) makes one.
    ``fragments`` are merged on top with the kernel's own
    ``scripts/kconfig/merge_config.sh``, then ``make olddefconfig``. With builder
    ``portage`` (``sys-kernel/gentoo-kernel``) the fragments go to
    ``/etc/kernel/config.d`` and the distribution's config is the base.
    """

    name: str
    source: SourceConfig
    config: str = ""
    base: str = "defconfig"
    fragments: list[str] = field(default_factory=list)
    builder: Literal["make", "genkernel", "portage"] = "make"
    initramfs: Literal["dracut", "genkernel", "none"] = "dracut"
    jobs: Annotated[int, Between(0, MAX_WORKERS)] = 0  # 0: one per core
    drivers: list[str] = field(default_factory=list)  # more for dracut --add-drivers
    root_fs: Literal["ext4", "ext3", "xfs", "btrfs"] = "ext4"
    hypervisors: list[Literal["nitro", "xen"]] = field(default_factory=lambda: ["nitro", "xen"])
    ec2_check: Literal["enforce", "warn"] = "enforce"

    def check(self, key: str) -> None:
        if not IMAGE_NAME.fullmatch(self.name):
            raise ConfigError(f"{key}.name: {self.name!r} is not a name (letters, digits, . _ -)")
        for setting, names in (("config", [self.config] if self.config else []), ("fragments", self.fragments)):
            for name in names:
                if not CONFIG_FILE_NAME.fullmatch(name):
                    raise ConfigError(f"{key}.{setting}: {name!r} is not a file name in kernel.config_dir/"
                                      f"{self.name}/")
        if not MAKE_CONFIG_TARGET.fullmatch(self.base):
            raise ConfigError(f"{key}.base: {self.base!r} is not a make config target like defconfig")
        for i, driver in enumerate(self.drivers):
            if not DRIVER_NAME.fullmatch(driver):
                raise ConfigError(f"{key}.drivers[{i}]: {driver!r} is not a module name")
        if not self.hypervisors:
            raise ConfigError(f"{key}.hypervisors: name at least one of nitro, xen")
        self._check_builder(key)

    def _check_builder(self, key: str) -> None:
        if self.builder == "portage":
            if self.source.kind != "package":
                raise ConfigError(f"{key}.builder: portage builds a distribution kernel package "
                                  f"(source.package: sys-kernel/gentoo-kernel), not a path")
            if self.config:
                raise ConfigError(f"{key}.config: builder portage takes fragments only "
                                  "(they go to /etc/kernel/config.d)")
            for i, name in enumerate(self.fragments):
                if not name.endswith(".config"):
                    raise ConfigError(f"{key}.fragments[{i}]: {name!r}: /etc/kernel/config.d reads only *.config")
        if self.initramfs == "genkernel" and self.builder != "genkernel":
            raise ConfigError(f"{key}.initramfs: genkernel makes its initramfs only with builder genkernel")


@dataclass(frozen=True)
class DeployConfig:
    """Key ``kernel.deploy``: how ``inv deploy-kernel`` installs a kernel on a host and boots it once.

    ``staging_dir``: where the artifacts are uploaded and verified on the host
    (under the host's ``fleet.hosts[].root``). ``panic_seconds``: ``panic=N`` on
    the new entry only, so a new kernel that panics reboots into the old default.
    ``boot_timeout``: seconds for a rebooted host to answer SSH again.
    ``root_to``: device names rewritten in fstab and the boot loader before the
    new kernel is armed (``keep``: left as they are). ``keep_kernels``: once a
    kernel is proven booted, how many of the kernels deploy installed stay (the
    newest, in install order); older ones of deploy's go, never the running one,
    the default or fallback entry's, or one deploy did not install (``kernel/prune.py``).
    ``snapshot``: an EBS snapshot of the root volume first.
    """

    staging_dir: str = "/var/tmp/gentoo-ec2-orchestrator/deploy"
    panic_seconds: Annotated[int, Between(1, 3600)] = 10
    boot_timeout: Annotated[int, Between(1)] = 600
    reboot_command: list[str] = field(default_factory=lambda: ["reboot"])
    root_to: Literal["keep", "uuid", "xvd", "nvme"] = "keep"
    keep_kernels: Annotated[int, Between(1, 20)] = 2
    snapshot: bool = True

    def check(self, key: str) -> None:
        if not self.staging_dir.startswith("/") or "/../" in f"{self.staging_dir}/":
            raise ConfigError(f"{key}.staging_dir: must be an absolute path on the host, got {self.staging_dir!r}")
        if not self.reboot_command or not all(isinstance(w, str) and w for w in self.reboot_command):
            raise ConfigError(f"{key}.reboot_command: must be a non-empty argv list like [\"reboot\"]")


@dataclass(frozen=True)
class KernelConfig:
    """Key ``kernel``: images, where their config files are, where artifacts go."""

    images: list[ImageConfig] = field(default_factory=list)
    config_dir: Path | None = None  # default: the checkout's chroot/kernel
    output_dir: Path | None = None  # artifacts in <output_dir>/kernels/<image>/<version>/; default state_dir
    work_dir: str = "/var/tmp/gentoo-ec2-orchestrator/kernel"  # inside the build system: sources' build dirs
    timeout: Annotated[int, Between(1)] = 6 * 3600  # seconds for one step (a whole kernel build)
    keep_builds: Annotated[int, Between(1, 100)] = 3  # published sets kept per image (the newest; `latest` always)
    deploy: DeployConfig = field(default_factory=DeployConfig)

    def check(self, key: str) -> None:
        seen: set[str] = set()
        for i, image in enumerate(self.images):
            if image.name in seen:
                raise ConfigError(f"{key}.images[{i}].name: {image.name!r} is used twice")
            seen.add(image.name)
        if not self.work_dir.startswith("/"):
            raise ConfigError(f"{key}.work_dir: must be an absolute path, got {self.work_dir!r}")

    def image(self, name: str) -> ImageConfig:
        return find_named(self.images, name, "kernel.images")
