"""deploy-kernel (no reboot) to 8 hosts at once vs 1 host: the ratio of wall times (target <= 1.5x).

8 "hosts" are 8 instance roots behind one real sshd on loopback, each deployed on its own
connection and thread (as the fleet runner does). Prints both times and the ratio.
"""

from __future__ import annotations

import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from deploy_lab import make_root, publish_set  # noqa: E402
from sshd import running_sshd  # noqa: E402
from test_kernel_deploy import NEW, do_deploy  # noqa: E402


def deploy_many(server, out: Path, base: Path, count: int) -> float:
    roots = [make_root(base / f"root{i}") for i in range(count)]
    start = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(lambda root: do_deploy(server, root, out)[1], roots))
    assert all(r.status == "armed" for r in results), [r.message for r in results]
    return time.monotonic() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        out = tmp / "out"
        publish_set(out, "web", NEW, tmp)
        with running_sshd(tmp / "sshd") as server:
            one = deploy_many(server, out, tmp / "one", 1)
            eight = deploy_many(server, out, tmp / "eight", 8)
    print(f"deploy 1 host: {one:.2f} s; 8 hosts at once: {eight:.2f} s; ratio {eight / one:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
