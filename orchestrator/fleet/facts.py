"""What a host is: kernel, OS, boot loader, root device, EC2 instance id, NVMe volumes; one round trip.

One small POSIX sh script goes to the host on stdin and prints ``key=value`` lines; it only reads, so it
runs under ``--dry`` too. Paths are under the host's ``root`` (``fleet.hosts[].root``): an image mounted
elsewhere, or a test's temp dir. ``uname`` is always the running system's, and the instance metadata
service is asked only when ``root`` is ``/``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..config import HostConfig
from ..config.fleet import INSTANCE_ID_RE
from ..errors import OrchestratorError
from ..run import Target

GATHER_TIMEOUT = 60
IMDS = "http://169.254.169.254/latest"

# $1: the host's root. Every line is key=value; a value never holds a newline (tr below).
SCRIPT = r"""
root=${1%/}
say() { printf '%s=%s\n' "$1" "$(printf '%s' "$2" | tr '\n' ' ')"; }
say hostname "$(uname -n)"
say kernel "$(uname -r)"
say arch "$(uname -m)"
for f in "$root/etc/os-release" "$root/usr/lib/os-release"; do
    if [ -r "$f" ]; then say os_line "$(grep '^PRETTY_NAME=' "$f" | head -n 1)"; break; fi
done
if [ -e "$root/boot/grub/grub.cfg" ] || [ -e "$root/boot/grub2/grub.cfg" ] || [ -e "$root/boot/grub/grubenv" ]
then say boot_loader grub2
elif [ -e "$root/boot/grub/menu.lst" ] || [ -e "$root/boot/grub/grub.conf" ]; then say boot_loader grub-legacy
else say boot_loader unknown; fi
if [ -z "$root" ]; then
    say root_device "$(findmnt -no SOURCE / 2>/dev/null)"
elif findmnt -no SOURCE --mountpoint "$root" >/dev/null 2>&1; then
    say root_device "$(findmnt -no SOURCE --mountpoint "$root")"
elif [ -r "$root/etc/fstab" ]; then
    say root_device "$(awk '$1 !~ /^#/ && $2 == "/" { print $1; exit }' "$root/etc/fstab")"
fi
tag="$root/sys/devices/virtual/dmi/id/board_asset_tag"
[ -r "$tag" ] && say asset_tag "$(cat "$tag")"
for serial in "$root"/sys/class/nvme/nvme*/serial; do
    [ -r "$serial" ] || continue
    for ns in "${serial%/serial}"/nvme*n*; do
        [ -e "$ns" ] && say nvme "${ns##*/} $(cat "$serial")"
    done
done
if [ -z "$root" ] && [ "$2" = imds ]; then
    if command -v curl >/dev/null 2>&1; then
        token=$(curl -fsS -m 2 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "$3/api/token" 2>/dev/null) &&
            say imds "$(curl -fsS -m 2 -H "X-aws-ec2-metadata-token: $token" "$3/meta-data/instance-id" 2>/dev/null)"
    elif command -v wget >/dev/null 2>&1; then
        token=$(wget -q -T 2 -O - --method=PUT --header='X-aws-ec2-metadata-token-ttl-seconds: 60' \
            "$3/api/token" 2>/dev/null) &&
            say imds "$(wget -q -T 2 -O - --header="X-aws-ec2-metadata-token: $token" \
                "$3/meta-data/instance-id" 2>/dev/null)"
    fi
fi
"""
END = "exit 0\n"


@dataclass(frozen=True)
class HostFacts:
    hostname: str
    kernel: str
    arch: str
    os: str  # os-release's PRETTY_NAME
    boot_loader: str  # grub2 | grub-legacy | unknown
    root_device: str  # what / is mounted from (or fstab's / line for a root elsewhere)
    instance_id: str  # "" when neither the config, the DMI asset tag nor the metadata service tells
    nvme: dict[str, str] = field(default_factory=dict)  # namespace device -> EBS volume id (or serial)

    def line(self) -> str:
        """``6.1.0-18 x86_64 Gentoo Linux, grub2, root /dev/nvme0n1p1, i-0123...``"""
        parts = [" ".join(part for part in (self.kernel, self.arch, self.os) if part), self.boot_loader,
                 f"root {self.root_device or 'unknown'}", self.instance_id or "no instance id"]
        return ", ".join(parts)


def gather(target: Target, host: HostConfig) -> HostFacts:
    """The host's facts in one round trip (read-only: runs under ``--dry`` too)."""
    return gather_more(target, host)[0]


def gather_more(target: Target, host: HostConfig, more: str = "", args: Sequence[str] = ()) \
        -> tuple[HostFacts, dict[str, str]]:
    """The facts, plus what a caller's own read-only sh fragment ``more`` prints, in the same round trip.

    ``more`` runs after the facts with ``say KEY VALUE`` and ``$root`` defined; its arguments are ``$4``...
    (argv, never pasted into the script). Its keys come back as ``{key: value}``, newlines turned to blanks.
    """
    ask_imds = "imds" if not host.instance_id else "no"
    result = target.run(["sh", "-s", "--", host.root, ask_imds, IMDS, *args], input=SCRIPT + more + END,
                        mutates=False, timeout=GATHER_TIMEOUT)
    return parse(result.stdout, host), _values(result.stdout)


def _values(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value.strip()
    return values


def parse(text: str, host: HostConfig) -> HostFacts:
    values: dict[str, str] = {}
    nvme: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "nvme":
            device, _, serial = value.strip().partition(" ")
            if serial.strip():
                nvme[device] = volume_id(serial.strip())
        else:
            values[key] = value.strip()
    if "kernel" not in values:
        raise OrchestratorError(f"{host.name}: the facts script printed nothing usable")
    return HostFacts(values.get("hostname", ""), values["kernel"], values.get("arch", ""),
                     pretty_name(values.get("os_line", "")), values.get("boot_loader", "unknown"),
                     values.get("root_device", ""), instance_id(host, values), nvme)


def pretty_name(line: str) -> str:
    """``PRETTY_NAME="Gentoo Linux"`` -> ``Gentoo Linux`` (os-release quotes as a shell does)."""
    _, _, value = line.partition("=")
    try:
        words = shlex.split(value)
    except ValueError:
        return value.strip("\"'")
    return " ".join(words)


def instance_id(host: HostConfig, values: dict[str, str]) -> str:
    if host.instance_id:
        return host.instance_id
    for key in ("asset_tag", "imds"):
        if INSTANCE_ID_RE.fullmatch(values.get(key, "")):
            return values[key]
    return ""


def volume_id(serial: str) -> str:
    """EBS writes the volume id without its hyphen as the NVMe serial: ``vol0abc`` -> ``vol-0abc``."""
    return re.sub(r"^vol(?!-)", "vol-", serial)


__all__ = ["HostFacts", "gather", "gather_more", "parse"]
