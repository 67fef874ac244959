"""inv audit-report over a large audit log: throughput (MB/s) and flat memory (peak RSS at S vs 10 S).

Generates a synthetic log in the kernel's exact record format (SYSCALL with auditd's ENRICHED part,
EXECVE with quoted, hex and split arguments, CWD, PATH, PROCTITLE, EOE; several login uids, thousands
of distinct commands and files so the bounded counters prune), then for each size runs, in a child
process each (so peak RSS is per run: ``ru_maxrss`` of the child):

* baseline: ``ausearch --raw -if LOG > /dev/null`` (what the report has to read through anyway);
* ours: ``report_local`` (the ``inv audit-report local --file LOG`` path: ausearch piped into the parser).

Prints MB/s of both, ours / baseline, and peak RSS of ours at both sizes with their ratio (~1.0 = flat).
Not a test: no assertion on timings.

    python bench/audit_bench.py --quick        # 20 MB and 200 MB
    python bench/audit_bench.py                # 100 MB and 1 GB
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GS = "\x1d"
USERS = {1000: "alice", 1001: "bob", 1002: "carol", 7005: "fmep", 4294967295: "unset"}


def hx(text: str) -> str:
    return text.encode().hex().upper()


def event(rng: random.Random, serial: int, stamp: float) -> str:
    auid = rng.choice(list(USERS))
    name = USERS[auid]
    s = f"{stamp:.3f}:{serial}"
    execve = rng.random() < 0.4
    syscall = 59 if execve else rng.choice([0, 1, 2, 3, 257, 4, 5, 9, 12, 21])
    path = f"/home/{name}/work/file-{rng.randrange(20000)}.txt"
    lines = [f"type=SYSCALL msg=audit({s}): arch=c000003e syscall={syscall} success=yes exit=0 a0=7ffd1a2b "
             f"a1=55d0c3e0 a2=55d0c4a8 a3=0 items=2 ppid=900 pid={rng.randrange(1000, 60000)} auid={auid} uid={auid} "
             f"gid={auid} euid={auid} suid={auid} fsuid={auid} egid={auid} sgid={auid} fsgid={auid} tty=pts0 ses=3 "
             f'comm="prog" exe="/usr/bin/prog" subj=unconfined key="exec"{GS}ARCH=x86_64 SYSCALL=x AUID="{name}" '
             f'UID="{name}" GID="{name}" EUID="{name}" SUID="{name}" FSUID="{name}" EGID="{name}" SGID="{name}" '
             f'FSGID="{name}"']
    if execve:
        arg = f"--file=/tmp/x {rng.randrange(5000)}"
        if rng.random() < 0.05:
            long = "z" * 300 + arg
            lines.append(f"type=EXECVE msg=audit({s}): argc=3 a0=\"grep\" a1_len={len(long)} a1[0]={hx(long[:150])}")
            lines.append(f"type=EXECVE msg=audit({s}): a1[1]={hx(long[150:])} a2=\"/etc/hosts\"")
        else:
            lines.append(f"type=EXECVE msg=audit({s}): argc=3 a0=\"prog\" a1={hx(arg)} a2=\"-v\"")
    lines.append(f'type=CWD msg=audit({s}): cwd="/home/{name}"')
    lines.append(f'type=PATH msg=audit({s}): item=0 name="{path}" inode=4242 dev=08:01 mode=0100644 ouid=0 ogid=0 '
                 f'rdev=00:00 nametype=NORMAL cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 cap_frootid=0{GS}OUID="root" '
                 f'OGID="root"')
    lines.append(f'type=PATH msg=audit({s}): item=1 name="/lib64/ld-linux-x86-64.so.2" inode=17 dev=08:01 '
                 f'mode=0100755 ouid=0 ogid=0 rdev=00:00 nametype=NORMAL cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 '
                 f'cap_frootid=0{GS}OUID="root" OGID="root"')
    lines.append(f"type=PROCTITLE msg=audit({s}): proctitle={hx('prog' + chr(0) + '-v')}")
    lines.append(f"type=EOE msg=audit({s}): ")
    return "\n".join(lines) + "\n"


def generate(path: Path, size: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    written, serial, stamp = 0, 1, 1700000000.0
    with path.open("w") as out:
        while written < size:
            chunk = "".join(event(rng, serial + i, stamp + i / 1000) for i in range(1000))
            out.write(chunk)
            written += len(chunk)
            serial += 1000
            stamp += 1


CHILD = """
import resource, sys, time
sys.path.insert(0, {repo!r})
from orchestrator.security.audit_jobs import report_local
t = time.perf_counter()
report = report_local({log!r})
wall = time.perf_counter() - t
print(wall, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, report.events)
"""


def ours(log: Path) -> tuple[float, int, int]:
    done = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO), log=str(log))], check=True,
                          capture_output=True, text=True)
    wall, rss, events = done.stdout.split()
    return float(wall), int(rss), int(events)


def baseline(log: Path) -> float:
    t = time.perf_counter()
    subprocess.run(["ausearch", "--raw", "-if", str(log)], stdout=subprocess.DEVNULL, check=True,
                   env={**os.environ, "LC_ALL": "C", "TZ": "UTC"})
    return time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 MB and 200 MB instead of 100 MB and 1 GB")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    sizes = [20 * 10**6, 200 * 10**6] if args.quick else [100 * 10**6, 1000 * 10**6]
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="audit-bench-") as work:
        rows = []
        for size in sizes:
            log = Path(work) / f"audit-{size // 10**6}M.log"
            generate(log, size)
            mb = log.stat().st_size / 10**6
            base = baseline(log)
            wall, rss, events = ours(log)
            rows.append((mb, base, wall, rss, events))
            log.unlink()
    print(f"{'log MB':>8} {'events':>9} {'ausearch MB/s':>14} {'report MB/s':>12} {'ours/base':>10} {'peak RSS MiB':>13}")
    for mb, base, wall, rss, events in rows:
        print(f"{mb:8.0f} {events:9d} {mb / base:14.1f} {mb / wall:12.1f} {wall / base:10.2f} {rss / 1024:13.1f}")
    print(f"peak RSS {rows[1][0]:.0f} MB / {rows[0][0]:.0f} MB: {rows[1][3] / rows[0][3]:.2f} (flat memory ~1.0)")
    print(f"machine: {os.cpu_count()} cores; child maxrss includes the interpreter; ausearch runs beside it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
