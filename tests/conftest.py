"""Shared fixtures: a scratch site (state, staging, store) and helpers to run jobs for real."""

from __future__ import annotations

import copy
import io
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from children import no_sshd_session_left, wait_until  # noqa: E402
from daemons import group_members  # noqa: E402
from orchestrator.job import execute  # noqa: E402
from sshd import running_sshd  # noqa: E402


# The modules that take minutes (a kernel build, qemu boots) run first: under ``pytest -n 2`` one worker starts
# on them at once while the other works through the rest, instead of their starting last and running alone.
LONGEST_FIRST = ("test_kernel_build.py", "test_kernel_oneshot_qemu.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)  # stable: the order within stays


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """With ``-n``, whole modules go to a worker, in collection order: a module's fixtures (the kernel lab, the
    binhost lab, sshd, moto) are set up once, by one worker, and the longest modules start first."""
    from xdist.scheduler import LoadFileScheduling

    config.option.loadscopereorder = False
    return LoadFileScheduling(config, log)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real sshd on a loopback port for the module; after it, its listener and every child are gone."""
    tmp = tmp_path_factory.mktemp("sshd")
    with running_sshd(tmp) as server:
        listener = int((tmp / "sshd.pid").read_text())
        yield server
    assert not Path(f"/proc/{listener}").exists() and group_members(listener) == []


@pytest.fixture
def every_session_ends(sshd):
    """After the test, every SSH connection it opened is closed: sshd has no per-connection process left
    (``pytestmark = pytest.mark.usefixtures("every_session_ends")`` for a whole module)."""
    yield
    no_sshd_session_left(sshd)


class Site:
    """A throwaway installation: its own state dir, staging disk and directory store."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.data.mkdir()
        self.config = {
            "orchestrator": {"state_dir": str(root / "state"), "progress": "plain"},
            "backup": {
                "host": "testhost",
                "directories": [str(self.data)],
                "staging_dir": str(root / "staging"),
                "chunk_size": "1M",
                "min_free_space": 0,
                "compression": {"codec": "xz", "level": 1, "extreme": False, "workers": 2},
                "store": {"type": "directory", "path": str(root / "store")},
            },
        }

    def set(self, dotted: str, value) -> "Site":
        node = self.config
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
        return self

    def run(self, job: str, body, dry: bool = False) -> tuple[int, str]:
        config = copy.deepcopy(self.config)
        config["run"] = {"dry": dry}
        out = io.StringIO()
        code = execute(config, job, body, out=out)
        return code, out.getvalue()

    def backup(self, dry: bool = False) -> tuple[int, str]:
        from orchestrator.backup import jobs

        return self.run("backup", jobs.backup, dry=dry)

    def restore(self, target: Path, set_id: str | None = None, dirs=None) -> tuple[int, str]:
        from orchestrator.backup import jobs

        return self.run("restore", lambda r: jobs.restore(r, str(target), set_id, dirs))

    def catalog(self):
        from orchestrator.backup.catalog import Catalog

        return Catalog.open(self.root / "state" / "catalog.sqlite")

    def store(self):
        from orchestrator.backup.stores import DirectoryStore

        return DirectoryStore(self.root / "store", "backups")

    @property
    def staging(self) -> Path:
        return self.root / "staging" / "testhost"


@pytest.fixture
def site(tmp_path) -> Site:
    return Site(tmp_path)


def summary_value(output: str, key: str) -> str:
    for line in output.splitlines():
        if line.strip().startswith(f"{key}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{key} not in summary:\n{output}")


def next_second() -> None:
    """Until the clock is in a later whole second than when called (and past the file system's coarse clock
    tick): a file changed after it has a later mtime second than a backup that ended before it (GNU tar and
    the set ids compare whole seconds). Half a second on average, where ``sleep(1.1)`` was always 1.1 s."""
    later = int(time.time()) + 1.02
    wait_until(lambda: time.time() >= later, "the clock's next second", timeout=5, poll=0.01)
