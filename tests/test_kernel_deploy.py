"""deploy-kernel per host, over a real sshd on loopback whose "instance root" is a temp dir, EC2 through moto.

What cannot exist here: a real EC2 instance, a Gentoo host, a real reboot. The
instance root is a directory (boot/grub, etc/fstab, lib/modules, proc/sys/kernel);
a reboot is ``deploy_lab.FAKE_REBOOT``, which plays GRUB on that root (next_entry
once, else saved_entry) and writes the booted version to proc/sys/kernel/osrelease
and a new boot id; grub-mkconfig is not run (the root is not /), and the warning
saying so is asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy_lab import (NEW, OLD, Run, do_deploy, ec2_access, fake_reboot, instance, make_root, publish_set, repo_dir,
                        settings, target_for, tree)
from moto_server import running_moto
from orchestrator.bootcfg.grubenv import parse_grubenv
from orchestrator.bootcfg.menulst import default_title
from orchestrator.errors import OrchestratorError
from orchestrator.kernel import deploy
from orchestrator.kernel.install import find_set

pytestmark = pytest.mark.usefixtures("every_session_ends")  # deploy closes every SSH connection it opens




@pytest.fixture(scope="module")
def moto():
    with running_moto() as server:
        yield server


@pytest.fixture
def lab(tmp_path):
    out = tmp_path / "out"
    publish_set(out, "web", NEW, tmp_path)
    root = make_root(tmp_path / "root")
    return out, root


def env_of(root: Path) -> dict:
    return parse_grubenv((root / "boot/grub/grubenv").read_text())


def test_deploy_installs_and_arms_once_keeping_the_old_default(sshd, lab):
    out, root = lab
    run, outcome = do_deploy(sshd, root, out)
    assert outcome.status == "armed" and "not proven booted" in outcome.message
    assert (root / f"boot/vmlinuz-{NEW}").read_bytes() == (out / "kernels/web" / NEW / "vmlinuz").read_bytes()
    for name in (f"initramfs-{NEW}.img", f"System.map-{NEW}", f"config-{NEW}", f"vmlinuz-{OLD}"):
        assert (root / "boot" / name).is_file()
    assert (root / f"lib/modules/{NEW}/kernel/drivers/ena.ko").read_text() == f"ena {NEW}\n"
    assert (root / f"lib/modules/{OLD}/modules.dep").exists()
    env = env_of(root)
    assert env["saved_entry"] == "gnulinux-advanced-x>gnulinux-6.1.0-old-advanced-x"
    assert env["next_entry"] == f"Advanced options for Gentoo GNU/Linux>Gentoo GNU/Linux, with Linux {NEW}"
    assert "GRUB_DEFAULT=saved" in (root / "etc/default/grub").read_text()
    assert (root / "etc/default/.grub.previous").exists()
    assert any("was not regenerated" in w for w in run.report.warnings)
    assert not list(root.rglob(".*.new")) and not list(root.rglob(".*.part"))


def test_rerun_is_a_noop(sshd, lab):
    out, root = lab
    do_deploy(sshd, root, out)
    before = tree(root)
    run, outcome = do_deploy(sshd, root, out)
    assert outcome.changed == [] and outcome.message.startswith("unchanged")
    assert tree(root) == before


def test_dry_changes_nothing_and_shows_every_step(sshd, lab, moto, monkeypatch):
    out, root = lab
    before = tree(root)
    run = Run(dry=True)
    run_, outcome = do_deploy(sshd, root, out, run=run, ec2=ec2_access(moto, monkeypatch),
                              spec=deploy.HostSpec("web1", str(root), instance_id=instance(moto)))
    assert tree(root) == before
    text = "\n".join(run.lines)
    assert "[dry-run] ec2 CreateSnapshot" in text
    assert f"put {out}/kernels/web/{NEW}/vmlinuz" in text
    assert "tar --zstd -x" in text and "mv -f -T" in text
    assert "+GRUB_DEFAULT=saved" in text and "+next_entry=" in text


def test_reboot_success_promotes_only_after_the_new_kernel_runs(sshd, lab, tmp_path):
    out, root = lab
    script = fake_reboot(tmp_path)
    run, outcome = do_deploy(sshd, root, out, reboot=True, reboot_command=[str(script), str(root), repo_dir()])
    assert outcome.status == "deployed" and outcome.message == f"deployed: booted {NEW}"
    assert (root / "proc/sys/kernel/osrelease").read_text() == NEW + "\n"
    env = env_of(root)
    assert env["saved_entry"].endswith(f"with Linux {NEW}") and env["next_entry"] == ""
    assert do_deploy(sshd, root, out)[1].status == "unchanged"


def test_reboot_into_the_old_kernel_fails_and_keeps_the_old_default(sshd, lab, tmp_path):
    out, root = lab
    script = fake_reboot(tmp_path)
    run, outcome = do_deploy(sshd, root, out, reboot=True,
                             reboot_command=[str(script), str(root), repo_dir(), "panics", NEW])
    assert outcome.status == "failed" and f"came back on {OLD}" in outcome.message
    assert env_of(root)["saved_entry"] == "gnulinux-advanced-x>gnulinux-6.1.0-old-advanced-x"
    with pytest.raises(OrchestratorError, match="failed on web1"):
        deploy.summarize(run, {"web1": outcome}, {})


def test_snapshot_is_tagged_with_host_and_kernels(sshd, lab, moto, monkeypatch):
    out, root = lab
    calls = []
    iid = instance(moto)
    run, outcome = do_deploy(sshd, root, out, ec2=ec2_access(moto, monkeypatch, calls),
                             spec=deploy.HostSpec("web1", str(root), instance_id=iid))
    assert outcome.snapshot.startswith("snap-")
    sent = dict(calls)["CreateSnapshot"]
    tags = {t["Key"]: t["Value"] for t in sent["TagSpecifications"][0]["Tags"]}
    assert tags["kernel-from"] == OLD and tags["kernel-to"] == NEW and tags["gentoo-ec2-orchestrator:host"] == "web1"


def test_host_never_back_gets_console_in_report_and_an_ec2_reboot(sshd, lab, moto, monkeypatch, tmp_path):
    out, root = lab
    calls = []
    iid = instance(moto)
    run, outcome = do_deploy(sshd, root, out, reboot=True, reboot_command=["true"],
                             ec2=ec2_access(moto, monkeypatch, calls),
                             spec=deploy.HostSpec("web1", str(root), instance_id=iid))
    assert outcome.status == "failed" and "did not come back within 3 s" in outcome.message
    assert outcome.console  # moto's fixed Xen console log
    assert ("RebootInstances", {"InstanceIds": [iid]}) in calls
    assert env_of(root)["saved_entry"] == "gnulinux-advanced-x>gnulinux-6.1.0-old-advanced-x"


def test_grub_legacy_entry_with_panic_and_saved_default(sshd, tmp_path):
    out = tmp_path / "out"
    publish_set(out, "web", NEW, tmp_path)
    root = make_root(tmp_path / "root", loader="legacy")
    run, outcome = do_deploy(sshd, root, out)
    menu = (root / "boot/grub/menu.lst").read_text()
    assert outcome.status == "armed"
    assert f"kernel /boot/vmlinuz-{NEW} root=/dev/sda1 rootfstype=ext4 panic=10\n" in menu
    assert "kernel /boot/vmlinuz-6.1.0-old root=/dev/sda1 rootfstype=ext4\n" in menu
    assert "default saved" in menu and "fallback 0" in menu
    assert (root / "boot/grub/default").read_text().startswith("1\n")
    assert default_title(menu.replace("default saved", "default 0")) == f"Gentoo Linux {OLD}"


def test_bad_input_is_one_line(sshd, lab, tmp_path):
    out, root = lab
    with pytest.raises(OrchestratorError, match=r"^--version: no kernel '9.9' built for image web"):
        find_set(out, "web", "9.9")
    (root / "boot/grub/grubenv").write_text("garbage")
    before = tree(root)
    with pytest.raises(OrchestratorError, match="grubenv") as info:
        do_deploy(sshd, root, out)
    assert "\n" not in str(info.value)
    assert (root / "boot/grub/grubenv").read_text() == "garbage"
    assert {k: v for k, v in tree(root).items() if "grub" in k} == {k: v for k, v in before.items() if "grub" in k}


def test_rollback_puts_the_old_default_back_and_removes_the_new_kernel(sshd, lab):
    from orchestrator.kernel.rollback import rollback_host

    out, root = lab
    before = tree(root)
    do_deploy(sshd, root, out)
    run = Run()
    with target_for(sshd, run) as target:
        result = rollback_host(run, target, str(root), settings().staging_dir, "web1")
        assert result["kernel_removed"] == NEW
        with pytest.raises(OrchestratorError, match=r"^web1: nothing to roll back"):
            rollback_host(run, target, str(root), settings().staging_dir, "web1")
    after = tree(root)
    for path, data in before.items():
        if path != "boot/grub/grubenv":  # it holds the old default pinned (deploy's first edit), see below
            assert after.get(path) == data, path
    assert not (root / f"boot/vmlinuz-{NEW}").exists() and not (root / f"lib/modules/{NEW}").exists()
    assert env_of(root) == {"saved_entry": "gnulinux-advanced-x>gnulinux-6.1.0-old-advanced-x"}
