"""A BIOS disk that GRUB 2 boots in qemu, for the one-shot boot tests: no loop devices, no mounts.

The disk is an image file laid out as grub-install lays out an MBR disk:

* a partition table written by ``sfdisk``, one bootable ext4 partition at 1 MiB, made and filled by
  ``mkfs.ext4 -E offset=N -d TREE`` straight into the image file;
* the first 440 bytes of GRUB's ``boot.img`` in the MBR, and ``core.img`` (``grub-mkimage``: biosdisk,
  part_msdos, ext2, prefix ``(hd0,msdos1)/boot/grub``) in the gap after it, at sector 1, where
  boot.img's default points, so no ``grub-bios-setup`` patching is needed;
* GRUB's modules and their lists in ``/boot/grub/i386-pc``, as grub-install copies them: ``normal``
  and every command the grub.cfg uses are loaded from there, as on an installed system.

The grub.cfg is grub-mkconfig's. Its header is the output of this machine's own
``/etc/grub.d/00_header``, run on an ``/etc/default/grub`` the way grub-mkconfig runs it, so the
``load_env`` / ``next_entry`` / ``saved_entry`` stanza is the real one, not a copy of it. The Linux
entries follow 10_linux's ``linux_entry`` (the simple entry for the newest kernel, then the
``Advanced options`` submenu with one entry per kernel, each with its menuentry id); 10_linux itself
cannot run here, because it probes the build box's own disks and ``/boot``.

Files in the image are read and replaced with ``debugfs`` on ``disk.img?offset=N`` (e2fsprogs' own
offset option): GRUB's ``save_env`` writes into the image at boot, and the test reads it back.

The guest runs under TCG (KVM is not usable here: FIELD-NOTES), its serial console on qemu's
stdout. A reader thread turns it into clean lines; a test waits for lines, in order, against one
overall deadline that only turns a hang into a failure showing the console's tail. qemu runs in a
process group of its own under ``setpriv --pdeathsig KILL`` and is stopped by group on every path.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from daemons import stop_group
from orchestrator.bootcfg import default_grub, validate
from orchestrator.kernel import oneshot

PART_START = 1 << 20
DISK_SIZE = 96 << 20
GRUB_PC = Path("/usr/lib/grub/i386-pc")
HEADER_SCRIPT = Path("/etc/grub.d/00_header")
CORE_MODULES = ("biosdisk", "part_msdos", "ext2")
BOOT_TIMEOUT_S = 300.0  # only turns a hang into a failure: a boot through GRUB takes 8-20 s under TCG
DEFAULT_GRUB = Path(__file__).parent / "bootcfg_corpus" / "gentoo.default-grub"  # sys-boot/grub's own
TOOLS = ("qemu-system-x86_64", "grub-mkimage", "grub-editenv", "sfdisk", "mkfs.ext4", "debugfs", "cpio")
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[c()][0-9A-Za-z]?")
# grub-mkconfig sources /etc/default/grub, maps GRUB_TERMINAL to input and output, exports the settings.
MKCONFIG = """set -e
. "$1"
if [ -n "${GRUB_TERMINAL:-}" ]; then GRUB_TERMINAL_INPUT=$GRUB_TERMINAL; GRUB_TERMINAL_OUTPUT=$GRUB_TERMINAL; fi
export GRUB_DEFAULT GRUB_TIMEOUT GRUB_TIMEOUT_STYLE GRUB_TERMINAL_INPUT GRUB_TERMINAL_OUTPUT GRUB_SERIAL_COMMAND
export pkgdatadir=/usr/share/grub
exec sh "$2"
"""


def missing_tools() -> list[str]:
    """What scripts/install-deps --test installs and this machine lacks."""
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    return missing + ([str(p) for p in (GRUB_PC / "boot.img", HEADER_SCRIPT) if not p.exists()])


TEST_KERNEL_DIR = Path(os.environ.get("TEST_KERNEL_DIR", "/var/cache/gentoo-ec2-orchestrator/test-kernel"))


def test_kernel() -> Path | None:
    """Debian's cloud kernel as scripts/install-deps --test unpacks it (never installed: the build box's
    /boot is its own), or None."""
    def version_key(path: Path) -> list:
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]
    found = sorted((TEST_KERNEL_DIR / "boot").glob("vmlinuz-*"), key=version_key)
    return found[-1] if found else None


@dataclass(frozen=True)
class Kernel:
    """One kernel on the boot disk: ``/boot/vmlinuz-<version>`` and ``/boot/initramfs-<version>.img``."""

    version: str
    image: Path
    initramfs: Path
    params: str  # the command line after ``root=UUID=... ro``


# --- grub.cfg, as grub-mkconfig writes it ---------------------------------------------------

def default_grub_text() -> str:
    """sys-boot/grub's /etc/default/grub as our editors leave it for this disk: ``GRUB_DEFAULT=saved`` (what a
    one-shot boot needs), no visible menu, the serial terminal and ``console=ttyS0``."""
    name, text = "/etc/default/grub", DEFAULT_GRUB.read_text()
    for variable, value in (("GRUB_DEFAULT", "saved"), ("GRUB_TIMEOUT", "0"), ("GRUB_TIMEOUT_STYLE", "hidden"),
                            ("GRUB_TERMINAL", "serial")):
        text = default_grub.set_variable(text, name, variable, value)
    text = default_grub.set_cmdline_params(text, name, {"console": "ttyS0"})
    validate.check_default_grub(text, name)
    return text


def kernel_cmdline(settings: str) -> str:
    """What 10_linux puts after ``ro``: GRUB_CMDLINE_LINUX, then GRUB_CMDLINE_LINUX_DEFAULT."""
    values = [default_grub.get_variable(settings, "/etc/default/grub", variable)
              for variable in ("GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT")]
    return " ".join(value for value in values if value)


def mkconfig_header(settings: str, scratch: Path) -> str:
    """What grub-mkconfig writes for 00_header, from ``settings`` as /etc/default/grub."""
    scratch.mkdir(parents=True, exist_ok=True)
    sourced = scratch / "default-grub"
    sourced.write_text(settings)
    done = subprocess.run(["sh", "-c", MKCONFIG, "sh", str(sourced), str(HEADER_SCRIPT)], capture_output=True,
                          text=True, env={"PATH": os.environ["PATH"], "LC_ALL": "C"})
    if done.returncode:
        raise RuntimeError(f"{HEADER_SCRIPT} exited {done.returncode}: {done.stderr.strip()}")
    return f"### BEGIN {HEADER_SCRIPT} ###\n{done.stdout}### END {HEADER_SCRIPT} ###\n"


def linux_entries(distributor: str, fs_uuid: str, kernels: Sequence[Kernel]) -> str:
    """10_linux's part: the newest kernel's simple entry, then every kernel in the Advanced submenu."""
    os_title = oneshot.grub2_os(distributor)
    simple = _menuentry(os_title, f"gnulinux-simple-{fs_uuid}", distributor, fs_uuid, kernels[0], "")
    advanced = "".join(_menuentry(oneshot.grub2_entry_title(distributor, k.version),
                                  f"gnulinux-{k.version}-advanced-{fs_uuid}", distributor, fs_uuid, k, "\t")
                       for k in kernels)
    submenu = (f"submenu '{oneshot.grub2_submenu_title(distributor)}' $menuentry_id_option "
               f"'gnulinux-advanced-{fs_uuid}' {{\n{advanced}}}\n")
    prologue = ("function gfxmode {\n\tset gfxpayload=\"${1}\"\n}\n"
                "set linux_gfx_mode=\nexport linux_gfx_mode\n")
    return f"### BEGIN /etc/grub.d/10_linux ###\n{prologue}{simple}{submenu}\n### END /etc/grub.d/10_linux ###\n"


def _menuentry(title: str, entry_id: str, distributor: str, fs_uuid: str, kernel: Kernel, indent: str) -> str:
    classes = f"--class {distributor.lower()} --class gnu-linux --class gnu --class os"
    body = [
        "\tload_video",
        "\tinsmod gzio",
        "\tif [ x$grub_platform = xxen ]; then insmod xzio; insmod lzopio; fi",
        "\tinsmod part_msdos",
        "\tinsmod ext2",
        "\tset root='hd0,msdos1'",
        "\tif [ x$feature_platform_search_hint = xy ]; then",
        "\t  search --no-floppy --fs-uuid --set=root --hint-bios=hd0,msdos1 --hint-efi=hd0,msdos1 "
        f"--hint-baremetal=ahci0,msdos1  {fs_uuid}",
        "\telse",
        f"\t  search --no-floppy --fs-uuid --set=root {fs_uuid}",
        "\tfi",
        f"\techo\t'Loading Linux {kernel.version} ...'",
        f"\tlinux\t/boot/vmlinuz-{kernel.version} root=UUID={fs_uuid} ro {kernel.params}",
        "\techo\t'Loading initial ramdisk ...'",
        f"\tinitrd\t/boot/initramfs-{kernel.version}.img",
    ]
    lines = [f"menuentry '{title}' {classes} $menuentry_id_option '{entry_id}' {{", *body, "}"]
    return "".join(f"{indent}{line}\n" for line in lines)


def grub_cfg(settings: str, fs_uuid: str, kernels: Sequence[Kernel], scratch: Path) -> str:
    """The whole grub.cfg, checked by ``validate.check_grub_cfg`` (grub-script-check) as deploy checks it."""
    distributor = default_grub.get_variable(settings, "/etc/default/grub", "GRUB_DISTRIBUTOR") or ""
    text = ("#\n# DO NOT EDIT THIS FILE\n#\n# It is automatically generated by grub-mkconfig using templates\n"
            "# from /etc/grub.d and settings from /etc/default/grub\n#\n\n"
            + mkconfig_header(settings, scratch) + "\n"
            + linux_entries(distributor, fs_uuid, kernels))
    validate.check_grub_cfg(text, "/boot/grub/grub.cfg")
    return text


# --- the disk image -------------------------------------------------------------------------

class BootDisk:
    """A raw MBR disk image whose first partition (ext4 at 1 MiB) holds /boot; files in it by debugfs."""

    def __init__(self, path: Path):
        self.path = path
        self.filesystem = f"{path}?offset={PART_START}"

    @classmethod
    def create(cls, path: Path, tree: Path, fs_uuid: str) -> BootDisk:
        """The image: partition table, ext4 filled from ``tree``, GRUB in the MBR and the gap after it."""
        _run(["truncate", "-s", str(DISK_SIZE), str(path)])
        _run(["sfdisk", "-q", str(path)], stdin=f"start={PART_START // 512}, type=83, bootable\n")
        _run(["mkfs.ext4", "-q", "-F", "-L", "oneshot-boot", "-U", fs_uuid, "-E", f"offset={PART_START}",
              "-d", str(tree), str(path), f"{(DISK_SIZE - PART_START) // 1024}k"])
        core = path.with_name("core.img")
        _run(["grub-mkimage", "-O", "i386-pc", "-p", "(hd0,msdos1)/boot/grub", "-o", str(core), *CORE_MODULES])
        if core.stat().st_size > PART_START - 512:
            raise RuntimeError(f"core.img is {core.stat().st_size} bytes: it does not fit before the partition")
        with open(path, "r+b") as disk:
            disk.write((GRUB_PC / "boot.img").read_bytes()[:440])
            disk.seek(512)
            disk.write(core.read_bytes())
        return cls(path)

    def read(self, inside: str) -> str:
        """The file at ``inside`` in the partition (debugfs ``dump``)."""
        out = self.path.with_name(f"read-{Path(inside).name}")
        out.unlink(missing_ok=True)
        _run(["debugfs", "-R", f"dump {inside} {out}", self.filesystem])
        if not out.exists():
            raise FileNotFoundError(f"{inside} is not in {self.path}")
        return out.read_bytes().decode("utf-8", "surrogateescape")

    def replace(self, inside: str, text: str) -> None:
        """``inside`` replaced by ``text``, read back to prove it (debugfs says errors but exits 0)."""
        source = self.path.with_name(f"write-{Path(inside).name}")
        source.write_bytes(text.encode("utf-8", "surrogateescape"))
        folder, name = inside.rsplit("/", 1)
        _run(["debugfs", "-w", "-f", "-", self.filesystem], stdin=f"cd {folder}\nrm {name}\nwrite {source} {name}\n")
        if self.read(inside) != text:
            raise RuntimeError(f"debugfs did not replace {inside} in {self.path}")


def make_disk(base: Path, kernels: Sequence[Kernel], grubenv_text: str, settings: str) -> BootDisk:
    """A boot disk in ``base`` with ``kernels`` (the newest first, as 10_linux orders them) and ``grubenv_text``."""
    fs_uuid = str(uuid.uuid4())
    cfg = grub_cfg(settings, fs_uuid, kernels, base / "mkconfig")
    tree = boot_tree(base / "tree", kernels, cfg, grubenv_text)
    return BootDisk.create(base / "disk.img", tree, fs_uuid)


def boot_tree(tree: Path, kernels: Sequence[Kernel], grub_cfg_text: str, grubenv_text: str) -> Path:
    """/boot as an installed system has it: kernels, initramfs images, grub.cfg, grubenv, GRUB's modules."""
    grub_dir = tree / "boot" / "grub"
    (grub_dir / "i386-pc").mkdir(parents=True)
    for kernel in kernels:
        shutil.copyfile(kernel.image, tree / "boot" / f"vmlinuz-{kernel.version}")
        shutil.copyfile(kernel.initramfs, tree / "boot" / f"initramfs-{kernel.version}.img")
    for module in [*GRUB_PC.glob("*.mod"), *GRUB_PC.glob("*.lst")]:
        shutil.copyfile(module, grub_dir / "i386-pc" / module.name)
    (grub_dir / "grub.cfg").write_text(grub_cfg_text)
    (grub_dir / "grubenv").write_bytes(grubenv_text.encode("utf-8", "surrogateescape"))
    return tree


def _run(argv: list[str], stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise RuntimeError(f"{argv[0]} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


# --- the guest ------------------------------------------------------------------------------

def qemu_argv(disk: Path) -> list[str]:
    """TCG, the serial console on stdout, and no ``-no-reboot``: a panic with ``panic=N`` must reset the guest."""
    return ["qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-display", "none", "-monitor", "none",
            "-serial", "stdio", "-drive", f"file={disk},format=raw,if=ide"]


def clean_line(raw: bytes) -> str:
    """A console line as text: CRs and ANSI escapes gone (FIELD-NOTES)."""
    return ESCAPES.sub("", raw.decode(errors="replace")).replace("\r", "").rstrip("\n")


class Guest:
    """A running qemu's console, as lines; ``expect`` waits for the next line matching a pattern."""

    def __init__(self, proc: subprocess.Popen, log: Path, timeout: float):
        self.proc = proc
        self.log = log
        self.deadline = time.monotonic() + timeout
        self.lines: list[str] = []
        self._next = 0
        self._ended = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="qemu-console", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with open(self.log, "w") as out:
            for raw in self.proc.stdout:
                line = clean_line(raw)
                out.write(line + "\n")
                out.flush()
                with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def expect(self, pattern: str) -> str:
        """The next console line (after the last one expected) that ``pattern`` matches; fails on end or deadline."""
        regex = re.compile(pattern)
        with self._changed:
            while True:
                for i in range(self._next, len(self.lines)):
                    if regex.search(self.lines[i]):
                        self._next = i + 1
                        return self.lines[i]
                self._next = len(self.lines)
                left = self.deadline - time.monotonic()
                if self._ended or left <= 0:
                    why = "qemu's console ended" if self._ended else "the boot's deadline passed"
                    raise AssertionError(f"waited for a console line matching {pattern!r}: {why}\n{self.tail()}")
                self._changed.wait(left)

    def powered_off(self) -> int:
        """qemu's exit code once the guest powered off (an event: the process ends)."""
        try:
            return self.proc.wait(timeout=max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the guest did not power off before the deadline\n{self.tail()}") from None

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        with self._changed:
            return sum(1 for line in self.lines if regex.search(line))

    def tail(self, lines: int = 40) -> str:
        with self._changed:
            shown = self.lines[-lines:]
        stderr = self.log.with_suffix(".stderr")
        errors = stderr.read_text(errors="replace").strip() if stderr.exists() else ""
        return ("--- console tail ---\n" + "\n".join(shown)
                + (f"\n--- qemu stderr ---\n{errors}" if errors else ""))

    def stop(self) -> None:
        stop_group(self.proc)
        self._reader.join(timeout=10)
        self.proc.stdout.close()


@contextmanager
def booted(disk: Path, log: Path, timeout: float = BOOT_TIMEOUT_S) -> Iterator[Guest]:
    """qemu booting ``disk`` until the block ends; the console is logged to ``log``, qemu's stderr beside it."""
    with open(log.with_suffix(".stderr"), "wb") as stderr:
        proc = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", *qemu_argv(disk)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=stderr, start_new_session=True)
    try:
        guest = Guest(proc, log, timeout)
    except BaseException:
        stop_group(proc)
        raise
    try:
        yield guest
    finally:
        guest.stop()
