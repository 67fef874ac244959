"""deploy-kernel (no reboot) to 8 hosts at once vs 1 host: the ratio of wall times (target <= 1.5x).

8 "hosts" are 8 instance roots behind one real sshd on loopback, each deployed on its own
connection and thread (as the fleet runner does). One warm-up round first (imports, sshd's
first connections, the page cache), then ``--rounds N`` rounds of each, fresh roots every
round; prints the median of each and their ratio.

    .venv/bin/python bench/deploy_bench.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from deploy_lab import NEW, do_deploy, make_root, publish_set  # noqa: E402
from sshd import running_sshd  # noqa: E402


def deploy_many(server, out: Path, base: Path, count: int) -> float:
    """Seconds to deploy to ``count`` fresh roots at once; every one must end armed."""
    roots = [make_root(base / f"root{i}") for i in range(count)]
    start = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(lambda root: do_deploy(server, root, out)[1], roots))
    elapsed = time.monotonic() - start
    if not all(r.status == "armed" for r in results):
        raise SystemExit(f"a deploy did not end armed: {[r.message for r in results]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds of each (median; default 3)")
    parser.add_argument("--hosts", type=int, default=8, help="hosts at once (default 8)")
    args = parser.parse_args()
    if args.rounds < 1 or args.hosts < 1:
        parser.error("--rounds and --hosts: at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        out = tmp / "out"
        publish_set(out, "web", NEW, tmp)
        with running_sshd(tmp / "sshd") as server:
            deploy_many(server, out, tmp / "warm", 2)  # warm-up, not counted
            ones, manys = [], []
            for n in range(args.rounds):  # interleaved, so drift on a noisy box hits both alike
                ones.append(deploy_many(server, out, tmp / f"one{n}", 1))
                manys.append(deploy_many(server, out, tmp / f"many{n}", args.hosts))
    one, many = statistics.median(ones), statistics.median(manys)
    print(f"deploy, median of {args.rounds} round(s): 1 host {one:.2f} s; {args.hosts} hosts at once {many:.2f} s; "
          f"ratio {many / one:.2f}x (target <= 1.5x)")
    print(f"  1 host:  {' '.join(f'{t:.2f}' for t in ones)}")
    print(f"  {args.hosts} hosts: {' '.join(f'{t:.2f}' for t in manys)}")


if __name__ == "__main__":
    main()
