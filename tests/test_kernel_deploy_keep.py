"""keep_kernels and the facts deploy takes from fleet.facts, over the real sshd (instance roots are temp dirs).

A reboot is deploy_lab's FAKE_REBOOT (GRUB 2 played on the root). grub.cfg is not regenerated under a root
that is not / (the warning saying so is asserted); grub legacy's entries are removed from menu.lst for real.
"""

from __future__ import annotations

import json

import boto3
import pytest

from deploy_lab import (OLD, Run, do_deploy, ec2_access, fake_reboot, instance, lab_creds, make_root, publish_set,
                        repo_dir, settings, target_for)
from moto_server import running_moto
from orchestrator.bootcfg import menulst
from orchestrator.bootcfg.text import BootConfigError
from orchestrator.kernel import deploy, prune
from orchestrator.kernel.install import HostRoot

pytestmark = pytest.mark.usefixtures("every_session_ends")  # deploy closes every SSH connection it opens

A, B, C = "6.6.1-a", "6.6.2-b", "6.6.3-c"
HAND = "5.15.0-hand"
STAGING = "var/tmp/gentoo-ec2-orchestrator/deploy"




@pytest.fixture(scope="module")
def moto():
    with running_moto() as server:
        yield server


def hand_install(root, release):
    """A kernel the admin installed by hand: files in /boot and modules, no record of ours."""
    for name in (f"vmlinuz-{release}", f"System.map-{release}"):
        (root / "boot" / name).write_text(name)
    (root / "lib/modules" / release).mkdir(parents=True)
    (root / "lib/modules" / release / "modules.dep").write_text("\n")


def state_of(root):
    return json.loads((root / STAGING / "state.json").read_text())


def test_three_deploys_with_keep_2_remove_our_oldest_and_keep_the_hand_installed_and_running(sshd, tmp_path):
    out = tmp_path / "out"
    for release in (A, B, C):
        publish_set(out, "web", release, tmp_path)
    root = make_root(tmp_path / "root")
    hand_install(root, HAND)
    reboot = [str(fake_reboot(tmp_path)), str(root), repo_dir()]
    outcomes = {}
    for release in (A, B, C):
        if release == C:  # a partial upload of a release that never finished, and a stale partial one
            (root / STAGING / "web" / ".6.6.0-gone.part").mkdir()
        run, outcomes[release] = do_deploy(sshd, root, out, reboot=True, reboot_command=reboot, version=release,
                                           keep_kernels=2)
        assert outcomes[release].status == "deployed", outcomes[release].message
    assert outcomes[A].removed == [] and outcomes[B].removed == []
    assert outcomes[C].removed == [A]
    assert sorted(outcomes[C].kept_foreign) == [HAND, OLD]
    assert any(f"kept {HAND}, {OLD}: not installed by deploy-kernel" in w for w in run.report.warnings)
    assert any("was not regenerated" in w and A in w for w in run.report.warnings)
    boot = {p.name for p in (root / "boot").iterdir()}
    assert not any(A in name for name in boot) and not (root / "lib/modules" / A).exists()
    for release in (B, C):
        assert f"vmlinuz-{release}" in boot and (root / "lib/modules" / release / "modules.dep").is_file()
    assert f"vmlinuz-{HAND}" in boot and (root / "lib/modules" / HAND).is_dir()  # hand-installed: stays
    assert f"vmlinuz-{OLD}" in boot and (root / "lib/modules" / OLD).is_dir()
    assert (root / "proc/sys/kernel/osrelease").read_text() == C + "\n"  # running: stays
    assert sorted(p.name for p in (root / STAGING / "web").iterdir()) == [B, C]
    assert state_of(root)["installed"] == [B, C]

    run, again = do_deploy(sshd, root, out, version=C, keep_kernels=1)  # the rerun on the new kernel prunes too
    assert again.status == "unchanged" and again.removed == [B]
    assert not (root / "boot" / f"vmlinuz-{B}").exists() and (root / "boot" / f"vmlinuz-{C}").exists()
    assert sorted(p.name for p in (root / STAGING / "web").iterdir()) == [C]
    assert state_of(root)["installed"] == [C]


LEGACY = f"""default 3
fallback 2 1 0
timeout 3

title Gentoo Linux {OLD}
root (hd0)
kernel /boot/vmlinuz-{OLD} root=/dev/sda1

title Gentoo Linux {A}
root (hd0)
kernel /boot/vmlinuz-{A} root=/dev/sda1

title Gentoo Linux {B}
root (hd0)
kernel /boot/vmlinuz-{B} root=/dev/sda1

title Gentoo Linux {C}
root (hd0)
kernel /boot/vmlinuz-{C} root=/dev/sda1
"""


def test_legacy_prune_removes_the_entry_before_the_files_and_renumbers(sshd, tmp_path):
    root = make_root(tmp_path / "root", loader="legacy", running=C)
    for release in (OLD, A, B):
        hand_install(root, release)
    (root / "boot/grub/menu.lst").write_text(LEGACY)
    run = Run()
    state = {"release": C, "status": "deployed", "installed": [A, B, C]}
    with target_for(sshd, run) as target:
        done = prune.prune_host(run, target, HostRoot(str(root)), loader="grub-legacy", running=C, state=state,
                                keep=1, staged_image_dir=str(root / STAGING / "web"), current=C)
    # B is the first fallback entry: it stays though keep_kernels is 1; A, a later one, goes from the list too
    assert done.removed == [A] and done.kept_foreign == [OLD]
    menu = (root / "boot/grub/menu.lst").read_text()
    assert f"Gentoo Linux {A}" not in menu and menu.startswith("default 2\nfallback 1 0\n")
    parsed = menulst.parse_menu(menu)
    assert [e.title for e in parsed.entries] == [f"Gentoo Linux {r}" for r in (OLD, B, C)]
    assert menulst.default_title(menu) == f"Gentoo Linux {C}"
    assert (root / "boot/grub/.menu.lst.previous").read_text() == LEGACY
    assert not (root / "boot" / f"vmlinuz-{A}").exists() and (root / "boot" / f"vmlinuz-{B}").exists()


def test_plan_is_ours_beyond_the_newest_keep_never_protected():
    assert prune.plan([A, B, C], {A, B, C, OLD}, 2, {C}) == [A]
    assert prune.plan([A, B, C], {A, B, C}, 1, {A, C}) == [B]  # A runs (or is the fallback): kept
    assert prune.plan([A, B, C], {B, C}, 1, set()) == [B]  # A's files are gone already: nothing to do for it
    assert prune.plan([A, B], {A, B, OLD}, 5, set()) == []
    assert prune.plan([], {OLD, HAND}, 1, set()) == []  # nothing recorded: nothing is ours
    assert prune.recorded({"release": C}) == [C] and prune.recorded({}) == []
    assert sorted(["6.6.10", "6.6.9", "6.10.1"], key=prune.version_key) == ["6.6.9", "6.6.10", "6.10.1"]
    assert prune.grub2_entry_release(f"Advanced options for Gentoo GNU/Linux>Gentoo GNU/Linux, with Linux {B}") == B
    assert prune.grub2_entry_release("gnulinux-advanced-x>gnulinux-6.1.0-old-advanced-x") == OLD
    assert prune.grub2_entry_release("gnulinux-simple-x") == ""


def test_remove_entry_refuses_the_default_the_first_fallback_and_default_saved():
    for title, why in ((C, "is the default entry"), (B, "is the first fallback entry")):
        with pytest.raises(BootConfigError, match=why):
            menulst.remove_entry(LEGACY, "menu.lst", f"Gentoo Linux {title}")
    with pytest.raises(BootConfigError, match=r"^menu.lst:1: 'default saved'"):
        menulst.remove_entry(LEGACY.replace("default 3", "default saved"), "menu.lst", f"Gentoo Linux {A}")


def test_facts_come_from_fleet_gather_in_one_round_trip(sshd, tmp_path):
    root = make_root(tmp_path / "root")
    (root / "sys/class/nvme/nvme0/nvme0n1").mkdir(parents=True)
    (root / "sys/class/nvme/nvme0/serial").write_text("vol0123456789abcdef0\n")
    (root / STAGING).mkdir(parents=True)
    (root / STAGING / "state.json").write_text(json.dumps({"installed": [A], "release": A}, indent=2))
    run = Run()
    with target_for(sshd, run) as target:
        calls = []
        real = target.run
        target.run = lambda argv, **kw: calls.append(argv) or real(argv, **kw)
        facts = deploy.gather(target, deploy.HostSpec("web1", str(root)), settings().staging_dir)
    assert len(calls) == 1 and calls[0][:2] == ["sh", "-s"]
    assert (facts.running, facts.loader, facts.root_device) == (OLD, "grub2", "/dev/sda1")
    assert facts.nvme == {"nvme0n1": "vol-0123456789abcdef0"}
    assert facts.state == {"installed": [A], "release": A} and len(facts.boot_id) == 36


def test_snapshot_with_the_instance_id_learnt_from_the_hosts_dmi_asset_tag(sshd, moto, monkeypatch, tmp_path):
    out = tmp_path / "out"
    publish_set(out, "web", A, tmp_path)
    root = make_root(tmp_path / "root")
    iid = instance(moto)
    (root / "sys/devices/virtual/dmi/id").mkdir(parents=True)
    (root / "sys/devices/virtual/dmi/id/board_asset_tag").write_text(iid + "\n")
    calls = []
    run, outcome = do_deploy(sshd, root, out, ec2=ec2_access(moto, monkeypatch, calls),
                             spec=deploy.HostSpec("web1", str(root)))  # no instance_id in the config
    assert outcome.status == "armed" and outcome.snapshot.startswith("snap-")
    client = boto3.client("ec2", endpoint_url=moto.endpoint_url, region_name="us-east-1", **lab_creds())
    volume = client.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0][
        "BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    assert dict(calls)["CreateSnapshot"]["VolumeId"] == volume
    snap = client.describe_snapshots(SnapshotIds=[outcome.snapshot])["Snapshots"][0]
    assert {t["Key"]: t["Value"] for t in snap["Tags"]}["kernel-to"] == A


def test_no_instance_id_anywhere_is_one_line_naming_the_setting(sshd, moto, monkeypatch, tmp_path):
    out = tmp_path / "out"
    publish_set(out, "web", A, tmp_path)
    root = make_root(tmp_path / "root")
    with pytest.raises(Exception, match=r"^web1: no instance id \(not in fleet.hosts\[\].instance_id") as info:
        do_deploy(sshd, root, out, ec2=ec2_access(moto, monkeypatch), spec=deploy.HostSpec("web1", str(root)))
    assert "\n" not in str(info.value) and not (root / "boot" / f"vmlinuz-{A}").exists()
