"""A small published kernel set and an "instance root" directory, for deploy tests.

A real reboot cannot happen here: ``fake_reboot`` is a script that plays GRUB on
the instance root (boots ``next_entry`` once and clears it, else ``saved_entry``)
by writing that entry's kernel version to ``<root>/proc/sys/kernel/osrelease``
and a new boot id: the nearest thing to a reboot a test root has.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path

import boto3

from moto_server import FAKE_CREDENTIALS
from orchestrator.bootcfg.grubenv import new_grubenv
from orchestrator.config import load_section
from orchestrator.kernel import artifacts, deploy
from orchestrator.kernel.install import find_set
from orchestrator.progress import Progress
from orchestrator.report import RunReport
from orchestrator.run.remote import RemoteTarget

OLD = "6.1.0-old"
NEW = "6.6.0-new"
DISTRO = "Gentoo"

GRUB_CFG = """set default="${saved_entry}"
if [ -s $prefix/grubenv ]; then load_env; fi
if [ "${next_entry}" ]; then
  set default="${next_entry}"
  set next_entry=
  save_env next_entry
fi
menuentry 'Gentoo GNU/Linux' --class gentoo $menuentry_id_option 'gnulinux-simple-x' {
  linux /boot/vmlinuz-6.1.0-old root=/dev/sda1 ro
}
submenu 'Advanced options for Gentoo GNU/Linux' $menuentry_id_option 'gnulinux-advanced-x' {
  menuentry 'Gentoo GNU/Linux, with Linux 6.1.0-old' $menuentry_id_option 'gnulinux-6.1.0-old-advanced-x' {
    linux /boot/vmlinuz-6.1.0-old root=/dev/sda1 ro
    initrd /boot/initramfs-6.1.0-old.img
  }
}
"""
MENU_LST = """default 0
timeout 3

title Gentoo Linux 6.1.0-old
root (hd0)
kernel /boot/vmlinuz-6.1.0-old root=/dev/sda1 rootfstype=ext4
initrd /boot/initramfs-6.1.0-old.img
"""
FSTAB = "# <fs> <mountpoint> <type> <opts> <dump/pass>\n/dev/sda1\t/\text4\tnoatime\t0 1\n"
DEFAULT_GRUB = 'GRUB_DISTRIBUTOR="Gentoo"\nGRUB_CMDLINE_LINUX="console=ttyS0"\n'


def publish_set(output_dir: Path, image: str, release: str, tmp: Path, salt: str = "") -> Path:
    """A set as build-kernel publishes it: small files, a modules tarball with two modules."""
    stage = tmp / f"stage-{release}-{uuid.uuid4().hex[:6]}"
    (stage / "boot").mkdir(parents=True)
    for name in ("vmlinuz", "initramfs.img", "System.map", "config"):
        (stage / "boot" / name).write_bytes(f"{name} of {release}{salt}\n".encode() * 2000)
    mods = stage / "lib" / "modules" / release / "kernel" / "drivers"
    mods.mkdir(parents=True)
    (mods / "ena.ko").write_text(f"ena {release}{salt}\n")
    (mods.parent.parent / "modules.dep").write_text("kernel/drivers/ena.ko:\n")

    def pack(dest: Path) -> None:
        subprocess.run(["tar", "--zstd", "-c", "-f", str(dest), "--owner=0", "--group=0", "-C", str(stage),
                        f"lib/modules/{release}"], check=True)

    return artifacts.publish(artifacts.image_dir(output_dir, image), release, stage,
                             {"image": image, "release": release, "fingerprint": release + salt}, pack)


def make_root(root: Path, loader: str = "grub2", running: str = OLD) -> Path:
    """An instance root: /boot with the old kernel, its modules, boot config, /proc's kernel version and boot id."""
    (root / "boot" / "grub").mkdir(parents=True)
    for name in (f"vmlinuz-{running}", f"initramfs-{running}.img", f"System.map-{running}", f"config-{running}"):
        (root / "boot" / name).write_text(f"{name}\n")
    (root / "lib" / "modules" / running / "kernel").mkdir(parents=True)
    (root / "lib" / "modules" / running / "modules.dep").write_text("\n")
    (root / "etc").mkdir()
    (root / "etc" / "fstab").write_text(FSTAB)
    if loader == "grub2":
        (root / "boot" / "grub" / "grub.cfg").write_text(GRUB_CFG)
        (root / "boot" / "grub" / "grubenv").write_text(new_grubenv())
        (root / "etc" / "default").mkdir()
        (root / "etc" / "default" / "grub").write_text(DEFAULT_GRUB)
    else:
        (root / "boot" / "grub" / "menu.lst").write_text(MENU_LST)
    (root / "proc" / "sys" / "kernel" / "random").mkdir(parents=True)
    (root / "proc" / "sys" / "kernel" / "osrelease").write_text(running + "\n")
    (root / "proc" / "sys" / "kernel" / "random" / "boot_id").write_text(str(uuid.uuid4()) + "\n")
    return root


FAKE_REBOOT = r'''#!/usr/bin/env python3
"""Play GRUB 2 on an instance root: boot next_entry once (and clear it), else saved_entry."""
import re, sys, uuid
sys.path.insert(0, sys.argv[2])
from orchestrator.bootcfg.grubenv import edit_grubenv, parse_grubenv
root = sys.argv[1]
env_path = root + "/boot/grub/grubenv"
text = open(env_path).read()
values = parse_grubenv(text)
entry = values.get("next_entry") or values.get("saved_entry", "")
if values.get("next_entry"):
    open(env_path, "w").write(edit_grubenv(text, "grubenv", {"next_entry": ""}))
m = re.search(r"(?:with Linux |gnulinux-)([^>']+?)(?:-advanced-x)?$", entry)
booted = m[1] if m else "unknown"
if len(sys.argv) > 3 and sys.argv[3] == "panics" and booted != sys.argv[4]:
    pass
elif len(sys.argv) > 3 and sys.argv[3] == "panics":
    # the new kernel panics: panic=N reboots it, GRUB boots the default (next_entry is spent)
    booted = re.search(r"(?:with Linux |gnulinux-)([^>']+?)(?:-advanced-x)?$", values["saved_entry"])[1]
open(root + "/proc/sys/kernel/osrelease", "w").write(booted + "\n")
open(root + "/proc/sys/kernel/random/boot_id", "w").write(str(uuid.uuid4()) + "\n")
'''


def fake_reboot(tmp: Path) -> Path:
    path = tmp / "fake-reboot"
    path.write_text(FAKE_REBOOT)
    path.chmod(0o755)
    return path


def repo_dir() -> str:
    return str(Path(__file__).resolve().parent.parent)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes), to compare before and after."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and not os.path.islink(p)}


class Run:
    """The parts of JobRun deploy uses, with its output captured."""

    def __init__(self, dry=False):
        self.dry = dry
        self.lines: list[str] = []
        self.report = RunReport("deploy-kernel", dry=dry)
        self.progress = Progress("plain", stream=io.StringIO())

    def echo(self, line: str) -> None:
        self.lines.append(line)


def target_for(sshd, run):
    return RemoteTarget(sshd.host, port=sshd.port, user=sshd.user, key_filename=sshd.key_filename,
                        known_hosts=sshd.known_hosts, dry=run.dry, echo=run.echo)


def settings(**over):
    return load_section("kernel", {"deploy": {"boot_timeout": 3, **over}}).deploy


def do_deploy(sshd, root, out, *, run=None, reboot=False, ec2=None, spec=None, version="", **over):
    """Deploy the published set (``latest`` unless ``version``) to ``root`` over ``sshd``; ``(run, outcome)``."""
    run = run or Run()
    spec = spec or deploy.HostSpec("web1", str(root))

    @contextmanager
    def reconnect():
        with target_for(sshd, run) as fresh:
            yield fresh

    with target_for(sshd, run) as target:
        outcome = deploy.deploy_host(run, target, spec, find_set(out, "web", version), settings(**over), reboot=reboot,
                                     snapshot=ec2 is not None, ec2=ec2, reconnect=reconnect)
    return run, outcome


LAB_REBOOT = r'''#!/usr/bin/env python3
"""The reboot command of several lab hosts behind several sshd: the sshd port the command came in on
($SSH_CONNECTION's 4th field) names the host's root; then FAKE_REBOOT plays GRUB on that root."""
import json, os, sys
table, fake, repo = sys.argv[1:4]
port = os.environ["SSH_CONNECTION"].split()[3]
os.execv(sys.executable, [sys.executable, fake, json.load(open(table))[port], repo])
'''


def lab_reboot(tmp: Path, roots_by_port: dict[int, Path]) -> list[str]:
    """A ``kernel.deploy.reboot_command`` for hosts that are roots behind different sshd ports."""
    table = tmp / "reboot-table.json"
    table.write_text(json.dumps({str(port): str(root) for port, root in roots_by_port.items()}))
    script = tmp / "lab-reboot"
    script.write_text(LAB_REBOOT)
    script.chmod(0o755)
    return [str(script), str(table), str(fake_reboot(tmp)), repo_dir()]


def instance(moto) -> str:
    client = boto3.client("ec2", endpoint_url=moto.endpoint_url, region_name="us-east-1", **lab_creds())
    image = client.describe_images()["Images"][0]["ImageId"]
    return client.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]


def lab_creds():
    return {"aws_access_key_id": FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}


def ec2_access(moto, monkeypatch, calls=None):
    for key, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    from orchestrator import ec2

    def client(region):
        made = ec2.ec2_client(ec2.Ec2Settings(region="us-east-1", endpoint_url=moto.endpoint_url), region=region)
        if calls is not None:
            made.meta.events.register("provide-client-params.ec2.*", lambda params, model, **kw: calls.append(
                (model.name, params)))
        return made

    return deploy.Ec2Access(client, snapshot_wait_timeout=30, poll_seconds=0)
