#!/usr/bin/env python3
"""Kernel build benchmark: `inv build-kernel` against plain `make -jN` of the same tree and config
in the same root, and a no-op rebuild.

The root is the one the tests use (``tests/kernel_lab.py``): an overlay of this machine's own
root as the build chroot, mounted in each child's private mount namespace; the tree is Debian's
linux-source-6.1; the config is `make tinyconfig` plus ``tests/kernel/qemu-tiny.config`` (a
bench of a full EC2 config would take an hour a side on 2 cores). Per round:

1. baseline: the final .config our build made (ours runs first in odd rounds; in even ones
   the baseline goes first, on the previous round's config) copied into a fresh build
   directory, then `chroot ROOT make -C TREE O=DIR -jN` (the environment our scripts get:
   ``env -i`` with the chroot's PATH). Its wall time;
2. ours: `inv build-kernel --image bench-N` for a fresh image (fresh build directory, same
   tree, same fragment, ``initramfs: none``, the same N): config, build, depmod, publish
   (copies, modules tarball, sha256). The child's wall time, interpreter start included;
3. by hand: what an admin types for the same inputs in a fresh build directory in the same
   chroot: `make tinyconfig`, `merge_config.sh -m` of the fragment, `make olddefconfig`,
   `make -jN` (the baseline of 1. is handed the final .config, so it skips making one);
4. no-op: `inv build-kernel --image bench-N` again: the same fingerprint, nothing to do.

With ``--rounds`` medians are used. Ratios: ours / baseline and ours / by hand (target <= 1.05)
and the no-op's wall time (target < 2 s). A benchmark, not a test: it prints the figures and exits
0 whatever they are (non-zero only when a build failed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO), str(REPO / "tests")]

import backup_bench as bb  # noqa: E402  (machine-load counters, formatting)
import kernel_lab  # noqa: E402

# The baseline's chroot gets what ChrootTarget gives ours: /dev, /proc and /sys (kbuild needs /dev/null).
CHROOT_THEN_EXEC = ('mount -t overlay overlay -o "lowerdir=/,upperdir=$1,workdir=$2" "$3" && '
                    'mount --rbind /dev "$3/dev" && mount -t proc proc "$3/proc" && mount --rbind /sys "$3/sys" && '
                    'root="$3" && shift 3 && exec chroot "$root" "$@"')
CHROOT_ENV = ["/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "HOME=/root", "TERM=dumb", "LANG=C.UTF-8"]


def timed(argv: list[str], log: Path) -> tuple[float, float, int]:
    """Wall time, CPU-seconds others used meanwhile, exit code; output to ``log``."""
    busy0, t0 = bb.busy_seconds(), time.monotonic()
    before = os.times()
    with open(log, "ab") as out:
        code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              cwd=REPO).returncode
    wall = time.monotonic() - t0
    after = os.times()
    ours = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, max(0.0, bb.busy_seconds() - busy0 - ours), code


def inv_argv(lab: kernel_lab.KernelLab, site: Path, image: str) -> list[str]:
    """`inv build-kernel` with the lab's overlay mounted in its private namespace (its chroot does the rest)."""
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", kernel_lab.MOUNT_THEN_EXEC, "sh",
            str(lab.upper), str(lab.work), str(lab.root), str(kernel_lab.INV), "-f", str(site), "build-kernel",
            "--image", image]


def fresh_build_dir(lab: kernel_lab.KernelLab, name: str) -> tuple[str, Path]:
    """A new, empty build directory: as the chroot names it, and on the build box."""
    inside = f"/var/tmp/kernel-bench/{name}"
    host = lab.upper / inside.lstrip("/")
    shutil.rmtree(host, ignore_errors=True)
    host.mkdir(parents=True)
    return inside, host


def in_chroot(lab: kernel_lab.KernelLab, script: str, *args: str) -> list[str]:
    """``sh -c script`` in the lab's chroot, with the clean environment our scripts get."""
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", CHROOT_THEN_EXEC, "sh",
            str(lab.upper), str(lab.work), str(lab.root), *CHROOT_ENV, "sh", "-c", script, "sh", *args]


def baseline(lab: kernel_lab.KernelLab, config: Path, round_no: int, jobs: int, log: Path) -> tuple[float, float]:
    """Plain make in a fresh build directory inside the chroot, the final .config in place."""
    inside, host = fresh_build_dir(lab, f"baseline-{round_no}")
    shutil.copy(config, host / ".config")
    return _timed_ok(in_chroot(lab, 'make -C "$1" O="$2" -j"$3"', str(lab.sources), inside, str(jobs)), log,
                     "baseline make")


def by_hand(lab: kernel_lab.KernelLab, fragment: str, round_no: int, jobs: int, log: Path) -> tuple[float, float]:
    """What an admin types for the same inputs: the base config, the fragment merged with the kernel's
    merge_config.sh, olddefconfig, make, in a fresh build directory inside the chroot."""
    inside, host = fresh_build_dir(lab, f"by-hand-{round_no}")
    (host.parent / f"by-hand-{round_no}.config").write_text(fragment)
    script = ('make -C "$1" O="$2" tinyconfig && cd "$1" && scripts/kconfig/merge_config.sh -m -O "$2" '
              '"$2/.config" "$2.config" && make -C "$1" O="$2" olddefconfig && make -C "$1" O="$2" -j"$3"')
    return _timed_ok(in_chroot(lab, script, str(lab.sources), inside, str(jobs)), log, "the steps by hand")


def _timed_ok(argv: list[str], log: Path, what: str) -> tuple[float, float]:
    wall, others, code = timed(argv, log)
    if code:
        raise SystemExit(f"{what} failed (exit {code}); see {log}")
    return wall, others


def ours(lab: kernel_lab.KernelLab, site: Path, image: str, log: Path) -> tuple[float, float]:
    wall, others, code = timed(inv_argv(lab, site, image), log)
    if code:
        raise SystemExit(f"inv build-kernel --image {image} failed (exit {code}); see {log}")
    return wall, others


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory under /var/tmp")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="kernel-bench-", dir="/var/tmp"))
    log = base / "bench.log"
    try:
        return run(base, log, args)
    finally:
        if args.keep:
            bb.say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def run(base: Path, log: Path, args) -> int:
    bb.say(f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; unpacking {kernel_lab.SOURCE_TARBALL}")
    lab = kernel_lab.KernelLab(base, kernel_lab.unpack_sources(base / "src"))
    fragment = (kernel_lab.DATA / "qemu-tiny.config").read_text()
    steal0 = bb.steal_seconds()
    figures: dict[str, list[tuple[float, float]]] = {"baseline": [], "by_hand": [], "ours": [], "noop": []}
    previous_config = None
    for n in range(1, args.rounds + 1):
        image = f"bench-{n}"
        lab.add_image(image, {"qemu.config": fragment}, base="tinyconfig", fragments=["qemu.config"],
                      initramfs="none", ec2_check="warn", jobs=args.jobs)
        site = base / f"site-{n}.json"
        site.write_text(json.dumps(lab.config))
        first = n % 2 or previous_config is None
        order = ("ours", "baseline", "by_hand") if first else ("by_hand", "baseline", "ours")
        for side in order:
            if side == "ours":
                figures["ours"].append(ours(lab, site, image, log))
                previous_config = lab.image_dir(image) / "latest" / "config"
                bb.say(f"round {n}: inv build-kernel {bb.fmt_s(figures['ours'][-1][0])}")
            elif side == "baseline":
                figures["baseline"].append(baseline(lab, previous_config, n, args.jobs, log))
                bb.say(f"round {n}: make -j{args.jobs} {bb.fmt_s(figures['baseline'][-1][0])}")
            else:
                figures["by_hand"].append(by_hand(lab, fragment, n, args.jobs, log))
                bb.say(f"round {n}: by hand (tinyconfig, merge, olddefconfig, make -j{args.jobs}) "
                       f"{bb.fmt_s(figures['by_hand'][-1][0])}")
        figures["noop"].append(ours(lab, site, image, log))
        bb.say(f"round {n}: no-op {bb.fmt_s(figures['noop'][-1][0])}")
    report(figures, bb.steal_seconds() - steal0)
    return 0


def report(figures: dict, steal: float) -> None:
    med = {k: statistics.median(w for w, _ in v) for k, v in figures.items()}
    rows = [
        {"metric": "inv build-kernel vs make -jN (same tree, config, root)", "ours": bb.fmt_s(med["ours"]),
         "base": bb.fmt_s(med["baseline"]), "ratio": med["ours"] / med["baseline"], "target": "<= 1.05",
         "met": med["ours"] / med["baseline"] <= 1.05},
        {"metric": "inv build-kernel vs the same steps by hand (base, merge, olddefconfig, make)",
         "ours": bb.fmt_s(med["ours"]), "base": bb.fmt_s(med["by_hand"]), "ratio": med["ours"] / med["by_hand"],
         "target": "<= 1.05", "met": med["ours"] / med["by_hand"] <= 1.05},
        {"metric": "no-op rebuild wall (interpreter start included)", "ours": bb.fmt_s(med["noop"]),
         "base": "2 s", "ratio": med["noop"] / 2.0, "target": "< 1.00 (under 2 s)", "met": med["noop"] < 2.0},
    ]
    bb.print_table(rows)
    for side, runs in figures.items():
        print(f"{side}: " + ", ".join(f"{bb.fmt_s(w)} (others used {o:.1f} CPU-s)" for w, o in runs))
    print(f"CPU steal during the bench: {steal:.1f} s; load now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
