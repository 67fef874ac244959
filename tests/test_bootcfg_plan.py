"""plan_bootcfg: what `inv bootcfg --to uuid|xvd|nvme` will write, and every planned text passes its validator."""

from __future__ import annotations

import pytest

from bootcfg_cases import NITRO, XEN_2012, read
from orchestrator.bootcfg import BootConfigError, BootFacts, plan_bootcfg
from orchestrator.bootcfg.validate import validator_for

SEED_HOST = {"/etc/fstab": read("gentoo-ec2-2012.fstab"), "/boot/grub/menu.lst": read("seed-ec2.menu.lst")}
GRUB2_HOST = {"/etc/fstab": read("gentoo-ec2-mixed.fstab"), "/etc/default/grub": read("debian12.default-grub"),
              "/etc/default/grub.d/50-cloudimg-settings.cfg": read("ubuntu-2204-cloudimg-50.cfg"),
              "/boot/grub/grub.cfg": read("debian12-ec2.grub.cfg")}


def test_the_seed_upgrade_renames_fstab_and_menu_lst_device_by_device():
    plan = plan_bootcfg(SEED_HOST, XEN_2012, "xvd")
    assert plan == {
        "/etc/fstab": SEED_HOST["/etc/fstab"].replace("/dev/sda", "/dev/xvda"),
        "/boot/grub/menu.lst": SEED_HOST["/boot/grub/menu.lst"].replace("root=/dev/sda1", "root=/dev/xvda1"),
    }


def test_only_files_that_change_are_in_the_plan():
    plan = plan_bootcfg(GRUB2_HOST, NITRO, "uuid")
    assert sorted(plan) == ["/boot/grub/grub.cfg", "/etc/fstab"]
    assert plan_bootcfg({"/etc/fstab": read("ubuntu-cloudimg.fstab")}, NITRO, "nvme") == {}


@pytest.mark.parametrize("host, facts", [(SEED_HOST, XEN_2012), (GRUB2_HOST, NITRO)], ids=["seed", "grub2"])
@pytest.mark.parametrize("to", ["xvd", "nvme", "uuid"])
def test_every_planned_text_passes_its_validator_and_planning_again_changes_nothing(host, facts, to):
    plan = plan_bootcfg(host, facts, to)
    assert plan, "every host here has kernel device names to rename"
    for path, text in plan.items():
        assert validator_for(path)(text) == []
    assert plan_bootcfg({**host, **plan}, facts, to) == {}


def test_an_error_names_the_host_the_file_and_the_line():
    files = {"/etc/fstab": read("ubuntu-1204-ec2.fstab")}
    with pytest.raises(BootConfigError) as refused:
        plan_bootcfg(files, XEN_2012, "nvme", where="web1")
    assert str(refused.value) == \
        "web1:/etc/fstab:2: /dev/xvdb is not in the host's NVMe device table (mount point /mnt)"


def test_facts_come_from_blkid_output_and_a_table():
    facts = BootFacts.from_outputs("DEVNAME=/dev/nvme0n1p1\nLABEL=root\nUUID=u-1\n", {"/dev/xvda1": "/dev/nvme0n1p1"},
                                   tag="LABEL")
    assert plan_bootcfg({"/etc/fstab": "/dev/xvda1 / ext4 defaults 0 1\n"}, facts, "uuid") == \
        {"/etc/fstab": "LABEL=root / ext4 defaults 0 1\n"}


@pytest.mark.parametrize("files, to, message", [
    ({"/etc/passwd": ""}, "xvd", "bootcfg: no rule for /etc/passwd (known: fstab, menu.lst/grub.conf, "
                                 "default/grub, grub.cfg)"),
    ({"/etc/fstab": ""}, "sd", "bootcfg: --to must be one of uuid, xvd, nvme, not 'sd'"),
])
def test_what_the_plan_does_not_know_is_refused(files, to, message):
    with pytest.raises(BootConfigError) as refused:
        plan_bootcfg(files, BootFacts(), to)
    assert str(refused.value) == message
