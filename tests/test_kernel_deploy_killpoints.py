"""kill -9 of a real deploy at each named point leaves the old kernel bootable, and a rerun completes.

The deploy runs in a child process (its own process group) over the real sshd;
``GEO_TEST_CRASH_AT`` makes it SIGKILL itself at the point, as a Jenkins abort would.
"Bootable" on an instance root (no real boot here): the old default entry is
unchanged (grubenv saved_entry, next_entry never naming a kernel whose files are
incomplete), the old kernel's files and modules are intact, and every config file is
either untouched or completely replaced (it parses).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from deploy_lab import NEW, OLD, make_root, publish_set
from orchestrator.bootcfg.grubenv import parse_grubenv
from orchestrator.faults import ENV, KERNEL_DEPLOY_POINTS

pytestmark = pytest.mark.usefixtures("every_session_ends")  # deploy closes every SSH connection it opens


CHILD = """
import sys, json
sys.path.insert(0, {tests!r})
from deploy_lab import do_deploy
from sshd import SshServer
server = SshServer(**json.loads({server!r}))
from pathlib import Path
run, outcome = do_deploy(server, Path({root!r}), Path({out!r}))
print(outcome.status)
"""


def run_child(sshd, root, out, crash=""):
    import dataclasses
    import json

    code = CHILD.format(tests=os.path.dirname(__file__), server=json.dumps(dataclasses.asdict(sshd)),
                        root=str(root), out=str(out))
    env = {**os.environ, ENV: crash} if crash else {k: v for k, v in os.environ.items() if k != ENV}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          start_new_session=True, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300)


def assert_old_bootable(root):
    env = parse_grubenv((root / "boot/grub/grubenv").read_text())
    assert env.get("saved_entry", "gnulinux-advanced-x>gnulinux-6.1.0-old-advanced-x") == \
        "gnulinux-advanced-x>gnulinux-6.1.0-old-advanced-x"
    if env.get("next_entry"):
        assert (root / f"boot/vmlinuz-{NEW}").is_file() and (root / f"lib/modules/{NEW}/modules.dep").is_file()
    for name in (f"vmlinuz-{OLD}", f"initramfs-{OLD}.img", f"System.map-{OLD}", f"config-{OLD}"):
        assert (root / "boot" / name).read_text() == f"{name}\n"
    assert (root / f"lib/modules/{OLD}/modules.dep").is_file()
    if (root / f"boot/vmlinuz-{NEW}").exists():  # vmlinuz last: the kernel is complete when it is there
        assert (root / f"boot/initramfs-{NEW}.img").is_file() and (root / f"lib/modules/{NEW}").is_dir()
    assert "GRUB_DISTRIBUTOR" in (root / "etc/default/grub").read_text()


@pytest.mark.parametrize("point", KERNEL_DEPLOY_POINTS)
def test_kill_at_each_point_leaves_the_old_kernel_bootable_and_a_rerun_completes(sshd, tmp_path, point):
    out = tmp_path / "out"
    publish_set(out, "web", NEW, tmp_path)
    root = make_root(tmp_path / "root")
    killed = run_child(sshd, root, out, point)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert_old_bootable(root)
    done = run_child(sshd, root, out)
    assert done.returncode == 0 and done.stdout.strip().endswith("armed"), done.stderr[-2000:]
    assert_old_bootable(root)
    env = parse_grubenv((root / "boot/grub/grubenv").read_text())
    assert env["next_entry"].endswith(f"with Linux {NEW}")
    assert not list(root.rglob(".*.new")) and not list(root.rglob(".*.part"))
