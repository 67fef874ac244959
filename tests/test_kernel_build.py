"""`inv build-kernel` for real: Debian's linux-source-6.1, `make tinyconfig` plus the console and
initramfs options, built by the make builder in a chroot, with a dracut initramfs; then booted.

The chroot is an overlay of this machine's own root (see ``kernel_lab``): our chroot target
(Handbook mounts, private namespaces, the lock) around a build system that really has a
toolchain, instead of a prefix-mode run on the host, so the path a Gentoo build chroot takes is
the one tested: scripts installed into the chroot and run there with ``env -i``, paths inside it
mapped back to the build box for the artifacts. One kernel is built for the whole module (the
``lab`` fixture); the later tests reuse its build directory as a build box would.

The kernel is not an EC2 kernel (no NVMe, ENA, Xen, ext4: a full one takes an hour on 2 cores),
so the image runs with ``ec2_check: warn``, and the enforced check is shown failing on it.
genkernel, emerge and Portage's kernel packages cannot run here: test_kernel_dry.py tests their
path as the exact commands.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from daemons import running
from kernel_lab import (DATA, INIT_MARKER, REPO_ROOT, KernelLab, busybox_initramfs, console_text, qemu_argv,
                        unpack_sources)
from orchestrator.kernel import artifacts, ec2check
from orchestrator.kernel.inputs import ConfigFile, unmet
from test_chroot_target import host_mounts_under

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot, overlay and mount namespaces need root"),
    pytest.mark.slow,
    pytest.mark.timeout(3600),  # the first test also builds the module's kernel; hangs fail in the lab's waits
]

QEMU_FRAGMENT = (DATA / "qemu-tiny.config").read_text()
SET_FILES = ["SHA256SUMS", "System.map", "build.json", "config", "initramfs.img", "initramfs.list",
             "modules.tar.zst", "vmlinuz"]
MISSING = [
    "NVMe driver (CONFIG_BLK_DEV_NVME is not set): EBS volumes on Nitro instances are NVMe devices",
    "ENA network driver (CONFIG_ENA_ETHERNET is not set): Nitro instances have no network without it",
    "xen-blkfront (CONFIG_XEN_BLKDEV_FRONTEND is not set): disks of Xen instances (xvda)",
    "xen-netfront (CONFIG_XEN_NETDEV_FRONTEND is not set): network of Xen instances",
    "root file system ext4 (CONFIG_EXT4_FS is not set): the root file system",
]
WARNED = "devtmpfs automount (CONFIG_DEVTMPFS_MOUNT is not set): a root without an initramfs gets no /dev"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("kernel-lab")
    lab = KernelLab(base, unpack_sources(base / "src"))
    lab.add_image("tiny", {"qemu.config": QEMU_FRAGMENT}, base="tinyconfig", fragments=["qemu.config"],
                  initramfs="dracut", ec2_check="warn")
    version = subprocess.run(["make", "-s", "-C", str(lab.sources), "kernelversion"], capture_output=True,
                             text=True, check=True).stdout.strip()
    lab.release = f"{version}-geo-tiny"
    lab.first = lab.inv("build-kernel")
    yield lab
    assert host_mounts_under(base) == [], "the overlay must live only in the children's namespaces"


def set_dir(lab) -> Path:
    return lab.image_dir("tiny") / lab.release


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def sha256sum_check(directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=directory, capture_output=True,
                          text=True)


def test_build_publishes_a_complete_versioned_set(lab):
    run = lab.first
    assert run.returncode == 0, run.stdout + run.stderr
    directory = set_dir(lab)
    summary = [line for line in run.stdout.splitlines() if line.startswith("  ")]
    assert summary[:2] == [
        f"  tiny: kernel {lab.release} built: {directory}",
        "  tiny ec2 check: FAILED (warn only: kernel.images[0].ec2_check is warn): missing NVMe driver, "
        "ENA network driver, xen-blkfront, xen-netfront, root file system ext4; warnings: devtmpfs automount",
    ]
    assert run.stderr.splitlines() == [f"warning: tiny: EC2 check: missing {line}" for line in MISSING[:4]] + [
        f"warning: tiny: EC2 check: missing {WARNED}", f"warning: tiny: EC2 check: missing {MISSING[4]}"]
    assert sorted(p.name for p in directory.iterdir()) == SET_FILES
    assert sha256sum_check(directory).returncode == 0
    assert os.readlink(lab.image_dir("tiny") / "latest") == lab.release
    assert (directory / "vmlinuz").read_bytes()[0x202:0x206] == b"HdrS"  # the x86 boot protocol's magic
    build = json.loads((directory / "build.json").read_text())
    assert (build["release"], build["builder"], build["initramfs"]) == (lab.release, "make", "dracut")
    assert build["sources"] == {"kind": "path", "srcdir": str(lab.sources), "version": lab.release.split("-")[0]}
    assert build["ec2_check"] == {"fatal": MISSING, "warnings": [WARNED]}
    config = (directory / "config").read_text()
    assert 'CONFIG_LOCALVERSION="-geo-tiny"' in config and unmet((ConfigFile("qemu.config", QEMU_FRAGMENT),),
                                                                    config) == []
    modules = subprocess.run(["tar", "--zstd", "-tvf", str(directory / "modules.tar.zst")], capture_output=True,
                             text=True, check=True).stdout
    assert f" lib/modules/{lab.release}/modules.dep\n" in modules and " 0/0 " in modules
    listing = (directory / "initramfs.list").read_text()
    assert "\ndracut modules:\n" in listing
    assert f"Arguments:  --force --no-hostonly --no-hostonly-cmdline --kver '{lab.release}'" in listing


def test_progress_shows_makes_lines_and_the_log_has_everything(lab):
    run = lab.first
    shown = [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in run.stdout.splitlines()]
    assert any(re.fullmatch(r"CC\s+init/main\.o", line) for line in shown)
    assert any(re.fullmatch(r"LD\s+vmlinux", line) for line in shown)
    assert "Kernel: arch/x86/boot/bzImage is ready  (#1)" in shown
    assert any(line.startswith("dracut: *** Creating initramfs image file") for line in shown)
    log = (lab.log_dir("tiny") / "kernel-build.log").read_text()
    assert log.startswith("$ /usr/bin/env -i ")
    assert f"$ make -C {lab.sources} O=/var/tmp/gentoo-ec2-orchestrator/kernel/tiny/build/" in log
    assert "make[1]: Entering directory" in log and "make[1]: Entering directory" not in run.stdout
    assert len(re.findall(r"^  CC ", log, re.M)) > 100
    report = json.loads(Path(re.search(r"report: (\S+)", run.stdout)[1]).read_text())
    kernel = report["summary"]["kernels"]["tiny"]
    assert (kernel["release"], kernel["directory"], kernel["noop"]) == (lab.release, str(set_dir(lab)), False)
    assert report["summary"]["kernels"]["tiny"]["ec2_check"]["fatal"] == MISSING


def test_the_kernel_boots_in_qemu_and_says_our_version(lab, tmp_path):
    """The built bzImage, a busybox initramfs (its /init prints `uname -r`), the serial console."""
    serial = tmp_path / "serial.log"
    kernel = lab.image_dir("tiny") / "latest" / "vmlinuz"
    with running(qemu_argv(kernel, busybox_initramfs(tmp_path)), what="qemu", log=serial, timeout=300,
                 ready=lambda: INIT_MARKER in console_text(serial)):
        console = console_text(serial)
    version_line = next(line for line in console.splitlines() if "Linux version" in line)
    assert f"Linux version {lab.release} (" in version_line
    assert f"{INIT_MARKER}{lab.release}" in console.splitlines()
    print(f"qemu console: {version_line.strip()}")


def test_the_same_sources_and_config_again_is_a_noop(lab):
    before = snapshot(set_dir(lab))
    logs = snapshot(lab.log_dir("tiny"))
    run = lab.inv("build-kernel")
    assert run.returncode == 0, run.stdout + run.stderr
    message = f"nothing to do: kernel {lab.release} for tiny is built from the same sources and config"
    assert f"  tiny: {message}" in run.stdout.splitlines()
    assert not re.search(r"kernel-(config|build|initramfs): \.\.\.", run.stdout)
    assert snapshot(set_dir(lab)) == before and snapshot(lab.log_dir("tiny")) == logs


def test_an_enforced_ec2_check_fails_naming_each_missing_piece(lab):
    """Once on the built set (the no-op checks again), once on a new image, before anything is compiled."""
    enforced = lab.variant()
    enforced["kernel"]["images"][0]["ec2_check"] = "enforce"
    run = lab.inv("build-kernel", config=enforced)
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        f"error: EC2 check failed for image tiny: 5 pieces an EC2 boot cannot do without ({set_dir(lab)} was "
        "built while kernel.images[0].ec2_check was warn):", *[f"  missing: {line}" for line in MISSING]]

    strict = lab.variant()
    strict["kernel"]["images"].append({"name": "strict", "source": {"path": str(lab.sources)},
                                       "base": "tinyconfig", "fragments": ["qemu.config"], "initramfs": "none"})
    (lab.config_dir / "strict").mkdir()
    (lab.config_dir / "strict" / "qemu.config").write_text(QEMU_FRAGMENT)
    run = lab.inv("build-kernel", "--image", "strict", config=strict)
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        "error: EC2 check failed for image strict: 5 pieces an EC2 boot cannot do without (nothing was "
        "published):", *[f"  missing: {line}" for line in MISSING]]
    assert "  strict ec2 check: FAILED: missing NVMe driver, ENA network driver, xen-blkfront, xen-netfront, " \
           "root file system ext4; warnings: devtmpfs automount" in run.stdout.splitlines()
    assert not lab.image_dir("strict").exists()
    assert sorted(p.name for p in lab.log_dir("strict").iterdir()) == ["kernel-config.log"]  # make never ran


def test_a_failing_step_and_a_missing_tree_are_one_line_each(lab):
    broken = lab.variant()
    broken["kernel"]["images"] += [
        {"name": "typo", "source": {"path": str(lab.sources)}, "base": "nosuchconfig", "initramfs": "none"},
        {"name": "gone", "source": {"path": "/usr/src/linux-none"}, "initramfs": "none"}]
    run = lab.inv("build-kernel", "--image", "typo", config=broken)
    log = lab.log_dir("typo") / "kernel-config.log"
    assert run.returncode == 1
    (error,) = run.stderr.splitlines()
    build = f"/var/tmp/gentoo-ec2-orchestrator/kernel/typo/build/{lab.sources.name}-"
    assert error.startswith(f"error: chroot:{lab.root}: kernel-config exited 2: ")
    assert f" | kernel-config: make -C {lab.sources} O={build}" in error
    assert error.endswith(f" nosuchconfig exited 2 | (whole log: {log})")
    assert "No rule to make target 'nosuchconfig'" in log.read_text()
    run = lab.inv("build-kernel", "--image", "gone", config=broken)
    assert (run.returncode, run.stderr) == (2, "error: kernel.images[2].source.path: /usr/src/linux-none has no "
                                               "kernel Makefile in the build system\n")


def test_the_shipped_ec2_fragment_passes_on_defconfig(lab, tmp_path):
    """chroot/kernel-config by hand (as an admin would run it), with the real kbuild: defconfig + ec2.config."""
    fragment = REPO_ROOT / "chroot" / "kernel" / "ec2" / "ec2.config"
    build = tmp_path / "build"
    result = subprocess.run([str(REPO_ROOT / "chroot" / "kernel-config"), "--srcdir", str(lab.sources),
                             "--builddir", str(build), "--base", "defconfig", "--fragment", str(fragment)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"config": f"{build}/.config"}
    final = (build / ".config").read_text()
    assert ec2check.check_config(final) == []
    assert unmet((ConfigFile("ec2.config", fragment.read_text()),), final) == []


def test_kill_9_while_publishing_leaves_the_whole_new_set_and_the_next_run_cleans_up(lab):
    """Same release, new config (a default hostname): a real ``inv build-kernel`` killed just after the new set
    took the release's name, the previous one hidden; the next run removes it, saying so, and builds nothing.

    Every crash point of a publish is tested on small sets in test_kernel_artifacts.py (a kernel build each
    would cost minutes); this one proves the job's own run is killed there and its rerun cleans up.
    """
    directory = set_dir(lab)
    hostname = 'CONFIG_DEFAULT_HOSTNAME="swapped"'
    (lab.config_dir / "tiny" / "hostname.config").write_text(hostname + "\n")
    rebuilt = lab.variant()
    rebuilt["kernel"]["images"][0]["fragments"] = ["qemu.config", "hostname.config"]
    before = (directory / "build.json").read_text()

    run = lab.inv("build-kernel", config=rebuilt, env={"GEO_TEST_CRASH_AT": "kernel-artifacts-swapped"})
    assert run.returncode == -9, run.stdout + run.stderr
    hidden = [p for p in lab.image_dir("tiny").iterdir() if p.name.startswith(f".{lab.release}.new-")]
    assert len(hidden) == 1
    assert sha256sum_check(directory).returncode == 0 and artifacts.damaged(directory) == []
    assert (directory / "build.json").read_text() != before
    assert hostname in (directory / "config").read_text()
    assert (hidden[0] / "build.json").read_text() == before

    run = lab.inv("build-kernel", config=rebuilt)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"tiny: removed {hidden[0]}, left by a killed run" in run.stdout
    assert f"tiny: nothing to do: kernel {lab.release} for tiny is built from the same sources and config" in run.stdout
    assert [p.name for p in lab.image_dir("tiny").iterdir() if p.name.startswith(".")] == []
    assert hostname in (directory / "config").read_text()
    assert sha256sum_check(directory).returncode == 0
