#!/usr/bin/env python3
"""Binhost benchmark: a one-package refresh against the first full run, parallel quickpkg against serial.

Real Portage from PyPI in a scratch prefix (``tests/portage_lab.py``): a toy upstream
repository of N packages and a binhost prefix that syncs from it over rsync (file://).
Every job is the real ``inv binhost`` (``orchestrator.job.execute`` with ``jobs.build``),
run in this process:

1. first run: the full job (sync, world, package, index, publish, owner, configs) on the
   fresh prefix; it builds all N packages;
2. refresh: one ebuild bumped upstream, then the full job again; ratio refresh / first
   (target <= 0.10);
3. quickpkg: every binary package and Packages deleted from PKGDIR, then the ``package``
   stage with ``binhost.quickpkg_jobs`` = 1 (serial baseline) and = 0 (one per core),
   each from that same state; the parallel run's CPU utilisation (children's CPU-seconds /
   (wall x cores), target >= 0.75) and the speed-up serial / parallel. Every package carries
   a payload (--payload-kib, default 2048) so that packing costs what it does for real
   packages (tar, zstd, checksums) and not only quickpkg's start-up. One quickpkg is not one
   core: Portage compresses with ``zstd -T<jobs>`` beside its own tar writer, so the serial
   baseline already uses more than one core and the speed-up cannot reach the core count.

Stage and script times come from wrapping ``stages.RUNNERS`` and ``BuildSession.script``
for the duration of a job (nothing in ``orchestrator/`` is changed).

A benchmark, not a test: it prints ratios against baselines measured in the same process
and exits 0 whatever the numbers are (non-zero only when something crashed or a job did
not do what it must, e.g. the refresh built more than one package).  See bench/README.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, redirect_stderr
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO), str(REPO / "tests")]

import backup_bench as bb  # noqa: E402  (machine-load counters, formatting)
import portage_lab as lab  # noqa: E402
from orchestrator.binhost import jobs, stages  # noqa: E402
from orchestrator.buildenv.session import BuildSession  # noqa: E402
from orchestrator.job import execute  # noqa: E402

STAGES = tuple(s for s in stages.STAGES if s not in stages.OPT_IN)  # a default `inv binhost`: opt-in stages off
NOISE: list[dict] = []  # per measured job: wall, our CPU, CPU-seconds used by everybody else


# ------------------------------------------------------------------------------------------
# environment and scratch binhost
# ------------------------------------------------------------------------------------------

def portage_environment() -> None:
    """What the chroot/ scripts need to find and run the PyPI Portage (see portage_lab.portage_env).

    PORTAGE_OVERRIDE_EPREFIX is not set here: the build system sets it per command from
    ``binhost.root``.
    """
    for key, value in lab.portage_env("/").items():
        if key != "PORTAGE_OVERRIDE_EPREFIX":
            os.environ[key] = value


def site_config(base: Path, eprefix: Path, quickpkg_jobs: int = 0) -> dict:
    return {
        "orchestrator": {"state_dir": str(base / "state"), "progress": "plain"},
        "binhost": {"mode": "prefix", "root": str(eprefix), "quickpkg_jobs": quickpkg_jobs},
        "run": {"dry": False},
    }


def clear_binpkgs(pkgdir: Path) -> int:
    """Delete every binary package and the Packages index: all installed packages are then missing."""
    gone = 0
    for path in pkgdir.rglob("*.gpkg.tar"):
        path.unlink()
        gone += 1
    (pkgdir / "Packages").unlink(missing_ok=True)
    return gone


# ------------------------------------------------------------------------------------------
# measuring a job
# ------------------------------------------------------------------------------------------

def children_cpu() -> float:
    """User + system CPU-seconds of every reaped child (and their reaped children) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime + children_cpu()


def timed(fn, record: dict):
    """``fn`` wrapped to add its wall and children's CPU to ``record`` (a stage or a script)."""
    def wrapper(*args, **kwargs):
        t0, cpu0 = time.monotonic(), children_cpu()
        try:
            return fn(*args, **kwargs)
        finally:
            record["wall"] = record.get("wall", 0.0) + time.monotonic() - t0
            record["cpu"] = record.get("cpu", 0.0) + children_cpu() - cpu0
            record["calls"] = record.get("calls", 0) + 1
    return wrapper


@contextmanager
def clocked():
    """Per-stage times, and per-script times within each stage ("setup": the job around the stages).

    Each entry is {"wall", "cpu", "calls"}; scripts are keyed ``[stage][script]``.
    """
    times: dict[str, dict] = {"stages": {}, "scripts": {}}
    current = ["setup"]
    runners = dict(stages.RUNNERS)
    script = BuildSession.script

    def stage_timed(name, fn):
        def run_stage(ctx):
            current[0] = name
            try:
                return timed(fn, times["stages"].setdefault(name, {}))(ctx)
            finally:
                current[0] = "setup"
        return run_stage

    def script_timed(system, name, *args, **kwargs):
        record = times["scripts"].setdefault(current[0], {}).setdefault(name, {})
        return timed(script, record)(system, name, *args, **kwargs)

    for name, fn in runners.items():
        stages.RUNNERS[name] = stage_timed(name, fn)
    BuildSession.script = script_timed
    try:
        yield times
    finally:
        stages.RUNNERS.update(runners)
        BuildSession.script = script


def run_job(config: dict, names, log: Path, label: str) -> dict:
    """One ``inv binhost`` with these stages; wall, CPU, stage/script times and the report's summary."""
    busy0, cpu0, child0 = bb.busy_seconds(), own_cpu(), children_cpu()
    with open(log, "a", encoding="utf-8") as out, redirect_stderr(out), clocked() as times:
        out.write(f"===== {label}\n")
        out.flush()
        t0 = time.monotonic()
        code = execute(copy.deepcopy(config), "binhost", lambda run: jobs.build(run, names), out=out)
        wall = time.monotonic() - t0
    ours = own_cpu() - cpu0
    foreign = max(0.0, bb.busy_seconds() - busy0 - ours)
    NOISE.append({"phase": label, "wall": wall, "ours_cpu": ours, "foreign_cpu": foreign})
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-20:]
        raise RuntimeError(f"{label}: inv binhost exited {code}:\n  " + "\n  ".join(tail))
    report = Path(config["orchestrator"]["state_dir"]) / "reports" / "binhost-latest.json"
    summary = json.loads(report.read_text())["summary"]
    return {"wall": wall, "children_cpu": children_cpu() - child0, "foreign_cpu": foreign,
            "summary": summary, **times}


def expect(label: str, summary: dict, stage: str, prefix: str) -> None:
    """A job that did something else than planned measures nothing: stop (this is no timing assert)."""
    message = summary.get(stage, "")
    if not message.startswith(prefix):
        raise RuntimeError(f"{label}: {stage} said {message!r}, expected {prefix!r}...")


# ------------------------------------------------------------------------------------------
# the measurements
# ------------------------------------------------------------------------------------------

def full_runs(base: Path, eprefix: Path, upstream: Path, packages: int, log: Path,
              payload_kib: int) -> tuple[dict, dict, str]:
    config = site_config(base, eprefix)
    bb.say(f"1. first run: full inv binhost on a fresh prefix ({packages} packages to build) ...")
    first = run_job(config, STAGES, log, "first run")
    expect("first run", first["summary"], "world", f"built {packages}:")
    bb.say(f"   {bb.fmt_s(first['wall'])}; world: {first['summary']['world']}")
    bumped = packages - 1
    lab.bump(upstream, bumped, payload_kib=payload_kib)
    atom = f"{lab.CATEGORY}/{lab.package_name(bumped)}-2"
    bb.say(f"2. refresh: {atom} bumped upstream, full inv binhost again ...")
    refresh = run_job(config, STAGES, log, "refresh")
    expect("refresh", refresh["summary"], "world", f"built 1: {atom}")
    bb.say(f"   {bb.fmt_s(refresh['wall'])}; world: {refresh['summary']['world']}")
    return first, refresh, atom


def quickpkg_runs(base: Path, eprefix: Path, packages: int, log: Path, cores: int) -> tuple[dict, dict]:
    """The package stage alone, serial then one quickpkg per core, each with PKGDIR emptied first."""
    pkgdir = eprefix / "var/cache/binpkgs"
    results = []
    for jobs_setting, label in ((1, "quickpkg_jobs=1"), (0, f"quickpkg_jobs=0 ({cores} at once)")):
        gone = clear_binpkgs(pkgdir)
        bb.say(f"3. package stage, {label}: {gone} binary packages and Packages deleted ...")
        result = run_job(site_config(base, eprefix, jobs_setting), ["package"], log, f"package, {label}")
        expect(label, result["summary"], "package", f"packaged {packages} of {packages}")
        stage = result["stages"]["package"]
        bb.say(f"   package stage {bb.fmt_s(stage['wall'])}, children's CPU {stage['cpu']:.1f} s")
        results.append(result)
    return results[0], results[1]


# ------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------

def headline_rows(first: dict, refresh: dict, serial: dict, parallel: dict, cores: int) -> list[dict]:
    s, p = serial["stages"]["package"], parallel["stages"]["package"]
    qs, qp = serial["scripts"]["package"]["binhost-package"], parallel["scripts"]["package"]["binhost-package"]
    refresh_ratio = refresh["wall"] / first["wall"]
    utilisation = p["cpu"] / (p["wall"] * cores)
    return [
        {"metric": "refresh (1 package bumped) vs first run, full job", "ours": bb.fmt_s(refresh["wall"]),
         "base": bb.fmt_s(first["wall"]) + " first", "ratio": refresh_ratio, "target": "<= 0.10",
         "met": refresh_ratio <= 0.10},
        {"metric": "package stage CPU utilisation, quickpkg_jobs 0", "ours": f"{p['cpu']:.1f} CPU-s",
         "base": f"{p['wall'] * cores:.1f} core-s", "ratio": utilisation,
         "target": f">= 0.75 of {cores} cores", "met": utilisation >= 0.75},
        {"metric": "package stage CPU utilisation, quickpkg_jobs 1", "ours": f"{s['cpu']:.1f} CPU-s",
         "base": f"{s['wall'] * cores:.1f} core-s", "ratio": s["cpu"] / (s["wall"] * cores),
         "target": "info (baseline)", "met": None},
        {"metric": "package stage speed-up, quickpkg_jobs 1 / 0", "ours": bb.fmt_s(p["wall"]),
         "base": bb.fmt_s(s["wall"]) + " serial", "ratio": s["wall"] / p["wall"],
         "target": "info", "met": None},
        {"metric": "binhost-package script alone, speed-up 1 / 0", "ours": bb.fmt_s(qp["wall"]),
         "base": bb.fmt_s(qs["wall"]) + " serial", "ratio": qs["wall"] / qp["wall"],
         "target": "info", "met": None},
        {"metric": "binhost-package script alone, CPU utilisation", "ours": f"{qp['cpu']:.1f} CPU-s",
         "base": f"{qp['wall'] * cores:.1f} core-s", "ratio": qp["cpu"] / (qp["wall"] * cores),
         "target": "info", "met": None},
    ]


def print_table(head: list[str], cells: list[list[str]]) -> None:
    cells = [head] + cells
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    line = "+-" + "-+-".join("-" * w for w in widths) + "-+"
    print(line)
    for n, row in enumerate(cells):
        print("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |")
        if n == 0:
            print(line)
    print(line)


def print_headline(rows: list[dict]) -> None:
    met = {True: "yes", False: "NO", None: "-"}
    print_table(["metric", "ours", "baseline", "ratio", "target", "met"],
                [[r["metric"], r["ours"], r["base"], f"{r['ratio']:.3f}", r["target"], met[r["met"]]] for r in rows])


def print_stages(first: dict, refresh: dict) -> None:
    """Where the time of the two full runs went; "setup" is the job around the stages (facts, lock, report)."""
    cells = []
    for name in STAGES:
        a, b = first["stages"][name]["wall"], refresh["stages"][name]["wall"]
        cells.append([name, bb.fmt_s(a), bb.fmt_s(b), f"{b / a:.3f}" if a >= 0.01 else "-"])
    setup = [run["wall"] - sum(s["wall"] for s in run["stages"].values()) for run in (first, refresh)]
    cells.append(["setup", bb.fmt_s(setup[0]), bb.fmt_s(setup[1]), f"{setup[1] / setup[0]:.3f}"])
    cells.append(["whole job", bb.fmt_s(first["wall"]), bb.fmt_s(refresh["wall"]),
                  f"{refresh['wall'] / first['wall']:.3f}"])
    print_table(["stage", "first run", "refresh", "refresh/first"], cells)


def print_package_scripts(serial: dict, parallel: dict) -> None:
    for label, run in (("quickpkg_jobs=1", serial), ("quickpkg_jobs=0", parallel)):
        parts = ", ".join(f"{name} x{t['calls']} {bb.fmt_s(t['wall'])} (CPU {t['cpu']:.1f} s)"
                          for name, t in run["scripts"]["package"].items())
        print(f"in the package stage, {label}: {parts}")


def print_load(cores: int, load_before, steal: float) -> None:
    load = os.getloadavg()
    print(f"load average before {fmt_load(load_before)}, after {fmt_load(load)}; "
          f"CPU steal during the run {steal:.1f} s")
    busy = [n for n in NOISE if n["foreign_cpu"] > 0.1 * n["wall"] * cores]
    for n in busy:
        print(f"  OTHER LOAD during {n['phase']}: {n['foreign_cpu']:.1f} CPU-s by processes not ours over "
              f"{n['wall']:.1f} s ({n['foreign_cpu'] / (n['wall'] * cores):.0%} of the machine): "
              "its figures are pessimistic")
    if not busy:
        print("others used < 10% of the machine during every measured job")


def fmt_load(load) -> str:
    return " ".join(f"{x:.2f}" for x in load)


def code_version() -> str:
    head = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "orchestrator", "chroot"],
                           capture_output=True, text=True).stdout.strip()
    note = " (+ uncommitted changes in orchestrator/ or chroot/)" if dirty else ""
    return (head.stdout.strip()[:100] or "unknown") + note


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--packages", type=int, default=50, help="toy packages in the repository (default 50)")
    p.add_argument("--payload-kib", type=int, default=2048,
                   help="data each toy package installs (default 2048 KiB; 0 = a few bytes)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = p.parse_args(argv)
    if args.packages < 1:
        p.error("--packages must be at least 1")
    return args


def measure(base: Path, args, cores: int) -> dict:
    upstream = lab.make_repo(base / "upstream", packages=args.packages, payload_kib=args.payload_kib)
    eprefix = lab.make_binhost_prefix(base, upstream=upstream, packages=args.packages).eprefix
    log = base / "jobs.log"
    bb.say(f"scratch {base}; every job's output goes to {log}")
    first, refresh, atom = full_runs(base, eprefix, upstream, args.packages, log, args.payload_kib)
    serial, parallel = quickpkg_runs(base, eprefix, args.packages, log, cores)
    return {"first": first, "refresh": refresh, "bumped": atom, "serial": serial, "parallel": parallel}


def report(figures: dict, args, cores: int, load_before, steal: float) -> None:
    f = figures
    rows = headline_rows(f["first"], f["refresh"], f["serial"], f["parallel"], cores)
    print()
    print(f"binhost benchmark: {args.packages} toy packages of {args.payload_kib} KiB, {cores} cores, "
          f"refresh bumps {f['bumped']}")
    print_headline(rows)
    print_stages(f["first"], f["refresh"])
    print_package_scripts(f["serial"], f["parallel"])
    print_load(cores, load_before, steal)
    f["table"] = rows
    f["load_after"] = os.getloadavg()
    f["steal_s"] = steal
    f["other_load"] = NOISE
    if args.json:
        args.json.write_text(json.dumps(f, indent=2, default=str) + "\n")
        print(f"figures written to {args.json}")


def main(argv=None) -> int:
    args = parse_args(argv)
    portage_environment()
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()
    bb.say(f"{cores} cores, load average {fmt_load(load_before)} (1, 5, 15 min): the figures mean something "
           "only on an otherwise idle machine")
    code = code_version()
    bb.say(f"code under test: {code}")
    steal0 = bb.steal_seconds()
    base = Path(tempfile.mkdtemp(prefix="binhost-bench-", dir="/var/tmp"))
    try:
        figures = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                   "cores": cores, "load_before": load_before, "code": code}
        figures |= measure(base, args, cores)
        report(figures, args, cores, load_before, bb.steal_seconds() - steal0)
    finally:
        if args.keep:
            print(f"scratch directory kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
