"""inv harden of 8 hosts at once vs 1 host: the ratio of wall times (target <= 1.5x).

Each "host" is a lab host of the tests (``tests/harden_lab.py``): an sshd in a throwaway network namespace
with private overlays of /etc, /var/lib, /var/log and /run, where knockd and fail2ban run for real. A
round is one whole ``inv harden`` run (``orchestrator.job.execute``): the image rendered and validated
once, then every host in parallel: facts, the dead-man switch armed, knockd's files up and restarted,
the rules loaded, a NEW connection through the knock confirming, the rules saved, fail2ban restarted
and its jails read. The dead-man window is never waited out: every round is kept at its first new
connection (a round that is not is an error). One warm-up round of each first, then ``--rounds N``
of each, interleaved; prints the medians and their ratio.

    .venv/bin/python bench/harden_bench.py --rounds 3
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harden_lab import lab_host  # noqa: E402
from orchestrator.job import execute  # noqa: E402
from orchestrator.security import harden  # noqa: E402


def config(tmp: Path, labs: dict) -> dict:
    names = list(labs)
    image = labs[names[0]].image("web", names)
    return {
        "orchestrator": {"state_dir": str(tmp / "state"), "progress": "plain"},
        "fleet": {"hosts": [lab.fleet_entry(name) for name, lab in labs.items()], "parallel": len(labs)},
        "guard": {"images": [image], "secrets_file": str(tmp / "secrets.json")},
    }


def harden_round(tmp: Path, labs: dict, hosts: list[str]) -> float:
    """Seconds for one ``inv harden`` of ``hosts``; every one must be kept (hardened or unchanged)."""
    out = io.StringIO()
    start = time.monotonic()
    code = execute(config(tmp, labs), "harden", lambda run: harden.harden(run, hosts), out=out)
    elapsed = time.monotonic() - start
    if code != 0:
        raise SystemExit(f"harden of {len(hosts)} host(s) failed (exit {code}):\n{out.getvalue()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds of each (median; default 3)")
    parser.add_argument("--hosts", type=int, default=8, help="hosts at once (default 8)")
    args = parser.parse_args()
    if args.rounds < 1 or args.hosts < 1:
        parser.error("--rounds and --hosts: at least 1")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        tmp = Path(tmp)
        labs = {f"h{i}": stack.enter_context(lab_host(tmp / f"h{i}")) for i in range(args.hosts)}
        names = list(labs)
        harden_round(tmp, labs, names[:1])  # warm-up (imports, first connections, first daemon starts)
        harden_round(tmp, labs, names)
        ones, manys = [], []
        for _ in range(args.rounds):
            ones.append(harden_round(tmp, labs, names[:1]))
            manys.append(harden_round(tmp, labs, names))
    one, many = statistics.median(ones), statistics.median(manys)
    print(f"harden, median of {args.rounds} round(s): 1 host {one:.2f} s; {args.hosts} hosts at once {many:.2f} s; "
          f"ratio {many / one:.2f}x (target <= 1.5x)")
    print(f"  1 host:  {' '.join(f'{t:.2f}' for t in ones)}")
    print(f"  {args.hosts} hosts: {' '.join(f'{t:.2f}' for t in manys)}")


if __name__ == "__main__":
    main()
