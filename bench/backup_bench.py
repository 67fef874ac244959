#!/usr/bin/env python3
"""Backup benchmark: our streaming pipeline against the seed's script and against hardware limits.

One run, on a generated (deterministic) corpus that looks like a host:

1. seed baseline: ``tar cpf - DIR | split -b CHUNK - backup_X`` per directory, then
   ``find . -type f | xargs -n 1 -P (cores+1) xz -LEVEL [-e]``, exactly the seed's script;
2. ours: a full ``inv backup`` (``orchestrator.job.execute`` with ``jobs.backup``) with the
   same codec, level and chunk size, to a directory store;
3. compression limit: our exact tar stream cut into chunks as the pipeline cuts it, every
   chunk compressed with our xz argv by one xz per core at once (``xargs -P cores``); its wall
   time is the limit, its CPU-seconds the codec's share of our pipeline's;
4. nightly incremental: 1% of the files rewritten, ours again (it is an incremental);
5. peak RSS of our whole process tree (Python + tar + codecs) at two corpus sizes, and the
   bound ``workers x codec memory + (workers + queue_depth) x chunk_size``;
6. restore of the full set from the staging copies against the decode limit (one core's
   ``xz -dc`` rate x cores; and, as info, every part decoded by one ``xz -dc`` per core at once);
7. restore drill: ``inv restore`` with the staging copies gone and ``inv verify`` of the same
   set, both reading the directory store; verify's time split into its restore and compare.

A benchmark, not a test: it prints ratios against baselines measured in the same process and
exits 0 whatever the numbers are (non-zero only when something crashed).  See bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from itertools import accumulate
from pathlib import Path

KiB = 1024
MiB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------
# corpus
# ------------------------------------------------------------------------------------------

# (directory under the corpus root, content kind, share of the bytes, min size, max size,
#  files per leaf directory, mode).  Top-level names are the directories backed up.
PLAN = [
    ("etc", "config", 0.04, 200, 12 * KiB, 30, 0o644),
    ("usr/share/doc", "prose", 0.14, 1 * KiB, 64 * KiB, 40, 0o644),
    ("usr/share/man", "prose", 0.06, 2 * KiB, 48 * KiB, 60, 0o644),
    ("usr/include", "config", 0.04, 500, 40 * KiB, 50, 0o644),
    ("usr/lib", "bin", 0.20, 16 * KiB, 2 * MiB, 40, 0o755),
    ("usr/bin", "bin", 0.06, 8 * KiB, 512 * KiB, 200, 0o755),
    ("var/log", "log", 0.10, 64 * KiB, 4 * MiB, 20, 0o640),
    ("var/lib", "bin", 0.12, 1 * MiB, 12 * MiB, 10, 0o600),
    ("opt", "bin", 0.18, 8 * MiB, 40 * MiB, 4, 0o644),
    ("opt/dist", "packed", 0.06, 256 * KiB, 8 * MiB, 20, 0o644),
]
TOP_DIRS = ["etc", "usr", "var", "opt"]
EPOCH = 1_700_000_000  # corpus mtimes: a fixed past, so a rewrite is always newer


class Text:
    """Text-like content from a Zipf-weighted pseudo-word vocabulary: configs, prose, logs."""

    LETTERS = "etaoinshrdlucmfwypvbgkjqxz"
    LETTER_W = list(accumulate([12, 9, 8, 7, 7, 6, 6, 6, 5, 4, 4, 3, 3, 2, 2, 2, 2, 2, 1, 1, 1, 1, .2, .2, .1, .1]))

    def __init__(self, vocab_rng: random.Random, rng: random.Random, n: int = 6000):
        words: set[str] = set()
        while len(words) < n:
            k = vocab_rng.choice((2, 3, 3, 4, 4, 5, 5, 6, 7, 8, 9, 10, 12))
            words.add("".join(vocab_rng.choices(self.LETTERS, cum_weights=self.LETTER_W, k=k)))
        self.words = sorted(words)
        vocab_rng.shuffle(self.words)
        self.cw = list(accumulate(1.0 / (i + 1) ** 1.05 for i in range(n)))
        self.rng = rng

    def phrase(self, lo: int, hi: int) -> str:
        return " ".join(self.rng.choices(self.words, cum_weights=self.cw, k=self.rng.randint(lo, hi)))

    def prose(self, nbytes: int) -> bytes:
        r, out, size = self.rng, [], 0
        while size < nbytes:
            line = self.phrase(4, 14)
            if r.random() < 0.3:
                line += f" {r.randint(0, 99999)}"
            out.append(line)
            size += len(line) + 1
        return ("\n".join(out) + "\n").encode()[:nbytes]

    def config(self, nbytes: int) -> bytes:
        r, out, size = self.rng, [], 0
        common = self.words[:800]
        while size < nbytes:
            x = r.random()
            if x < 0.15:
                line = "# " + self.phrase(3, 10)
            elif x < 0.2:
                line = ""
            else:
                key = "_".join(r.choices(common, k=r.randint(1, 3)))
                pick = r.randrange(6)
                if pick == 0:
                    value = str(r.randint(0, 65535))
                elif pick == 1:
                    value = r.choice(("yes", "no", "true", "false", "auto"))
                elif pick == 2:
                    value = "/" + "/".join(r.choices(common[:400], k=3))
                elif pick == 3:
                    value = f"{r.randint(1, 254)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"
                else:
                    value = '"' + self.phrase(1, 4) + '"'
                line = f"{key} = {value}"
            out.append(line)
            size += len(line) + 1
        return ("\n".join(out) + "\n").encode()[:nbytes]

    def log(self, nbytes: int) -> bytes:
        r, out, size = self.rng, [], 0
        t = EPOCH - r.randint(0, 86400 * 30)
        daemons = ("sshd", "cron", "kernel", "nginx", "postfix/smtpd", "dhcpcd", "sudo", "fail2ban.actions")
        while size < nbytes:
            t += r.expovariate(0.5)
            line = (time.strftime("%b %d %H:%M:%S", time.gmtime(t)) + f" gentoo {r.choice(daemons)}"
                    f"[{r.randint(100, 32000)}]: " + self.phrase(3, 9)
                    + f" from {r.randint(1, 254)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"
                    f" port {r.randint(1024, 65535)}")
            out.append(line)
            size += len(line) + 1
        return ("\n".join(out) + "\n").encode()[:nbytes]


class Binary:
    """Semi-compressible binaries: 4 KiB blocks of machine-code-like bytes, shared "library"
    blocks with a few bytes changed, random (already compressed) data, zero padding, strings."""

    BLOCK = 4096
    KINDS = ("random", "code", "repeat", "zeros", "strings")
    PROFILES = {"bin": (0.20, 0.40, 0.20, 0.10, 0.10), "packed": (0.92, 0.04, 0.02, 0.0, 0.02)}

    def __init__(self, shared_rng: random.Random, rng: random.Random, text: Text):
        weights = [1.0 / (i + 1) ** 0.9 for i in range(256)]
        perm = list(range(256))
        shared_rng.shuffle(perm)
        self.table = bytes(shared_rng.choices(perm, weights=weights, k=256))
        self.rng = shared_rng
        self.shared = [self.code(self.BLOCK) for _ in range(512)]
        self.rng = rng
        self.text = text

    def code(self, n: int) -> bytes:
        return self.rng.randbytes(n).translate(self.table)

    def blob(self, nbytes: int, kind: str = "bin") -> bytes:
        r, B = self.rng, self.BLOCK
        cw = list(accumulate(self.PROFILES[kind]))
        parts, own, size = [], [], 0
        while size < nbytes:
            what = r.choices(self.KINDS, cum_weights=cw)[0]
            if what == "random":
                b = r.randbytes(B)
            elif what == "code":
                b = self.code(B)
            elif what == "repeat":
                src = r.choice(own) if own and r.random() < 0.5 else r.choice(self.shared)
                mutable = bytearray(src)
                for _ in range(r.randint(1, 24)):
                    mutable[r.randrange(B)] = r.randrange(256)
                b = bytes(mutable)
            elif what == "zeros":
                b = bytes(B)
            else:
                b = self.text.prose(B)
            if len(own) < 256:
                own.append(b)
            else:
                own[r.randrange(256)] = b
            parts.append(b)
            size += B
        return b"".join(parts)[:nbytes]


class Generator:
    def __init__(self, seed: int, salt: str):
        rng = random.Random(f"{seed}:{salt}")
        self.text = Text(random.Random(f"{seed}:vocab"), rng)
        self.binary = Binary(random.Random(f"{seed}:shared"), rng, self.text)
        self.rng = rng

    def content(self, kind: str, size: int) -> bytes:
        if kind == "config":
            return self.text.config(size)
        if kind == "prose":
            return self.text.prose(size)
        if kind == "log":
            return self.text.log(size)
        return self.binary.blob(size, kind)


def generate_corpus(root: Path, total: int, seed: int) -> list[dict]:
    """Write the corpus under ``root``; returns its regular files (rel path, size, kind)."""
    files = []
    root.mkdir(parents=True)
    for top in TOP_DIRS:
        (root / top).mkdir()
    for sub, kind, share, lo, hi, per_dir, mode in PLAN:
        gen = Generator(seed, sub)
        r = gen.rng
        budget = int(total * share)
        i = 0
        leaf = None
        while budget > 0:
            if budget < lo:
                size = budget
            else:
                size = int(math.exp(r.uniform(math.log(lo), math.log(min(hi, budget)))))
            size = max(1, min(size, budget))
            if i % per_dir == 0:
                leaf = root / sub / f"{r.choice(gen.text.words[:2000])}-{i // per_dir}"
                leaf.mkdir(parents=True)
            ext = {"config": ".conf", "prose": ".txt", "log": ".log", "bin": "", "packed": ".tar.xz"}[kind]
            path = leaf / f"{r.choice(gen.text.words)}{i}{ext}"
            path.write_bytes(gen.content(kind, size))
            os.chmod(path, mode)
            stamp = (EPOCH - r.randint(0, 86400 * 365)) * 10**9
            os.utime(path, ns=(stamp, stamp))
            rel = str(path.relative_to(root))
            files.append({"path": rel, "size": size, "kind": kind})
            if kind == "config" and i % 25 == 0:  # a few symlinks, like /etc has
                (leaf / f"link{i}").symlink_to(path.name)
            budget -= size
            i += 1
    return files


def change_files(root: Path, files: list[dict], fraction: float, seed: int) -> tuple[int, int]:
    """Rewrite ``fraction`` of the files (same kind and size, new content) and bump their mtime."""
    r = random.Random(f"{seed}:nightly")
    picked = r.sample(files, max(1, round(len(files) * fraction)))
    gen = Generator(seed, "nightly")
    now = time.time_ns()
    for f in picked:
        path = root / f["path"]
        path.write_bytes(gen.content(f["kind"], f["size"]))
        os.utime(path, ns=(now, now))
    return len(picked), sum(f["size"] for f in picked)


def tree_digest(root: Path) -> tuple[str, int, int]:
    """(digest of every path, type, size and content; regular files; bytes) for a round-trip check."""
    h = hashlib.sha256()
    count = total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                h.update(f"L {rel} -> {os.readlink(path)}\n".encode())
                continue
            data = path.read_bytes()
            h.update(f"F {rel} {len(data)} {oct(path.stat().st_mode & 0o7777)} ".encode())
            h.update(hashlib.sha256(data).digest())
            count += 1
            total += len(data)
    return h.hexdigest(), count, total


# ------------------------------------------------------------------------------------------
# measuring processes
# ------------------------------------------------------------------------------------------

PAGE = os.sysconf("SC_PAGE_SIZE")


class TreeSampler(threading.Thread):
    """Peak resident memory of a process and all its descendants, read from /proc every 50 ms."""

    def __init__(self, root_pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.root_pid = root_pid
        self.interval = interval
        self.peak = 0
        self.peak_breakdown: dict[str, int] = {}
        self.max_by_name: dict[str, int] = {}
        self.max_procs: dict[str, int] = {}
        self.samples = 0
        self._known: dict[int, int] = {}  # pid -> parent pid
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def sample(self) -> None:
        # The parent of a pid is read once (pids are not reused within a run), so a tick
        # costs a listdir plus one statm per process of the tree: the sampler's own CPU, counted
        # as other load, stays well under 1% of a core.
        known = self._known
        live = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            live.add(pid)
            if pid in known:
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    stat = fh.read().decode(errors="replace")
            except OSError:
                continue
            close = stat.rfind(")")
            known[pid] = int(stat[close + 2:].split()[1])
        for pid in list(known):
            if pid not in live:
                del known[pid]
        children: dict[int, list[int]] = {}
        for pid, ppid in known.items():
            children.setdefault(ppid, []).append(pid)
        tree, todo = [], [self.root_pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, []))
        statm = {}
        for pid in tree:
            try:
                with open(f"/proc/{pid}/statm") as fh:
                    statm[pid] = fh.read()
            except OSError:
                continue
        total, by_name, counts = 0, {}, {}
        for pid, line in statm.items():
            if pid != self.root_pid and statm.get(known.get(pid)) == line:
                continue  # forked (vfork) and not yet exec'd: the parent's own pages, counted there
            try:  # the name is read every time: a forked child is renamed when it execs
                rss = int(line.split()[1]) * PAGE
                with open(f"/proc/{pid}/comm") as fh:
                    name = fh.read().strip()
            except (OSError, IndexError, ValueError):
                continue
            total += rss
            by_name[name] = by_name.get(name, 0) + rss
            counts[name] = counts.get(name, 0) + 1
            self.max_by_name[name] = max(self.max_by_name.get(name, 0), rss)
        for name, n in counts.items():
            self.max_procs[name] = max(self.max_procs.get(name, 0), n)
        self.samples += 1
        if total > self.peak:
            self.peak = total
            self.peak_breakdown = by_name


def run_measured(argv: list[str], *, cwd=None, log: Path | None = None, shell_name: str = "") -> dict:
    """Run argv to completion; wall time, CPU of the whole tree (RUSAGE_CHILDREN), peak tree RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0 = busy_seconds()
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        rc = proc.wait()
        wall = time.monotonic() - t0
        sampler.stop()
    finally:
        if log:
            out.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    foreign = max(0.0, busy_seconds() - busy0 - cpu)
    NOISE.append((shell_name or argv[0], wall, foreign))
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:] if log else []
        raise RuntimeError(f"{shell_name or argv[0]} exited {rc}" + ("\n  " + "\n  ".join(tail) if tail else ""))
    return {"wall": wall, "cpu": cpu, "peak_rss": sampler.peak, "peak_breakdown": sampler.peak_breakdown,
            "max_rss_by_name": sampler.max_by_name, "max_procs": sampler.max_procs, "t0": t0,
            "foreign_cpu": foreign}


def busy_seconds() -> float:
    """CPU-seconds every process on the machine has used since boot (all of /proc/stat's cpu line but
    idle and iowait).  Minus our own tree's CPU over a phase, it is what others ran meanwhile."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


NOISE: list[tuple[str, float, float]] = []  # (phase, wall, CPU-seconds used by processes not ours)


def steal_seconds() -> float:
    """Time the hypervisor gave our vCPUs to someone else (the 8th field of /proc/stat's cpu line)."""
    with open("/proc/stat") as fh:
        fields = fh.readline().split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def xz_flags(level: int, extreme: bool) -> str:
    return f"-{level}{'e' if extreme else ''}"


def xz_memory(level: int, extreme: bool) -> tuple[int, int]:
    """(compress, decompress) bytes xz says it needs at this preset, single-threaded."""
    err = subprocess.run(["xz", "-vv", "--threads=1", xz_flags(level, extreme), "-c"], input=b"",
                         capture_output=True).stderr.decode()
    comp = re.search(r"([0-9,]+) MiB of memory is required", err)
    dec = re.search(r"Decompression will need ([0-9,]+) MiB", err)
    if not comp or not dec:
        raise RuntimeError(f"cannot read xz's memory needs from: {err!r}")
    return int(comp.group(1).replace(",", "")) * MiB, int(dec.group(1).replace(",", "")) * MiB


# ------------------------------------------------------------------------------------------
# 1. the seed's script
# ------------------------------------------------------------------------------------------

def seed_cpus() -> int:
    """The seed's ``cat /proc/cpuinfo | grep processor | wc -l`` then ``let CPUS++``."""
    with open("/proc/cpuinfo") as fh:
        return sum(1 for line in fh if "processor" in line) + 1


def run_seed(dirs: list[Path], stage: Path, chunk: int, level: int, extreme: bool, log: Path) -> dict:
    stage.mkdir(parents=True)
    cpus = seed_cpus()
    split_wall = split_cpu = 0.0
    for d in dirs:
        tmp = str(d).replace("/", "_")  # the seed's TMP=`echo $TMP | sed -e 's/\//_/g'`
        script = f"cd {shlex.quote(str(stage))}; tar cpf - {shlex.quote(str(d))} | split -b {chunk} - backup_{tmp}"
        m = run_measured(["bash", "-c", "set -o pipefail; " + script], log=log, shell_name="seed tar|split")
        split_wall += m["wall"]
        split_cpu += m["cpu"]
    tar_bytes = sum(p.stat().st_size for p in stage.iterdir())
    chunks = len(list(stage.iterdir()))
    xz = f"xz -{level}" + (" -e" if extreme else "")
    script = f"cd {shlex.quote(str(stage))}; find . -type f | xargs -n 1 -P {cpus} {xz}"
    m = run_measured(["bash", "-c", "set -o pipefail; " + script], log=log, shell_name="seed xargs xz")
    stored = sum(p.stat().st_size for p in stage.iterdir())
    return {"wall": split_wall + m["wall"], "split_wall": split_wall, "xz_wall": m["wall"],
            "cpu": split_cpu + m["cpu"], "xz_cpu": m["cpu"], "peak_rss": m["peak_rss"],
            "max_procs": m["max_procs"], "tar_bytes": tar_bytes, "stored": stored, "chunks": chunks,
            "cpus": cpus, "command": f"tar cpf - DIR | split -b {chunk} - backup_X; {script.split('; ', 1)[1]}"}


# ------------------------------------------------------------------------------------------
# 2-6. ours, in a child process (so its whole process tree can be sampled)
# ------------------------------------------------------------------------------------------

def site_config(root: Path, dirs: list[Path], args) -> dict:
    return {
        "orchestrator": {"state_dir": str(root / "state"), "progress": "quiet"},
        "backup": {
            "host": "benchhost",
            "directories": [str(d) for d in dirs],
            "staging_dir": str(root / "staging"),
            "chunk_size": args.chunk_size,
            "queue_depth": args.queue_depth,
            "min_free_space": 0,
            "compression": {"codec": "xz", "level": args.level, "extreme": args.extreme, "workers": args.workers},
            "store": {"type": "directory", "path": str(root / "store")},
        },
        "run": {"dry": False},
    }


def run_ours(job: str, config: dict, work: Path, name: str, **extra) -> dict:
    """``python backup_bench.py --child spec``: runs the job via orchestrator.job.execute, traced."""
    spec = work / f"{name}.spec.json"
    result = work / f"{name}.result.json"
    log = work / f"{name}.log"
    spec.write_text(json.dumps({"config": config, "job": job, "result": str(result), **extra}))
    m = run_measured([sys.executable, str(Path(__file__).resolve()), "--child", str(spec)], cwd=REPO, log=log,
                     shell_name=f"ours ({name})")
    child = json.loads(result.read_text())
    if child["code"] != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"ours ({name}) failed with exit {child['code']}:\n  " + "\n  ".join(tail))
    m.update(child)
    return m


class Trace:
    """Timestamps of the pipeline's stages, collected in the child by wrapping functions."""

    def __init__(self):
        self.events: dict[str, list] = {}
        self.lock = threading.Lock()

    def add(self, kind: str, *values) -> None:
        with self.lock:
            self.events.setdefault(kind, []).append(values)

    def wrap(self, owner, attr: str, kind: str, detail=None):
        """Time every call of ``owner.attr``; a name the code no longer has is skipped (and listed)."""
        original = getattr(owner, attr, None)
        if original is None:
            self.add("untraced", 0, 0, "", f"{getattr(owner, '__name__', owner)}.{attr}")
            return
        trace = self

        def wrapper(*args, **kwargs):
            t0 = time.monotonic()
            try:
                return original(*args, **kwargs)
            finally:
                trace.add(kind, t0, time.monotonic(), threading.current_thread().name,
                          detail(*args, **kwargs) if detail else None)

        setattr(owner, attr, wrapper)


def check_restored(tree: Path, corpus: Path, digest_full: tuple) -> tuple:
    """The restored copy of the corpus (restores are relative to /) must equal the corpus."""
    restored = tree_digest(tree / corpus.relative_to("/"))
    if restored != digest_full:
        raise RuntimeError(f"restored tree differs from the corpus: {restored[1:]} vs {digest_full[1:]}")
    return restored


def store_drill(config: dict, work: Path, base: Path, full: dict, corpus: Path, digest_full: tuple,
                repeat: int) -> tuple[list[dict], list[dict]]:
    """Phase 7: ``inv restore`` and ``inv verify`` of the full set, both reading the directory store.

    The set's staging copies are moved out of the staging directory for these runs (a restore then
    finds none and fetches every part from the store, as verify always does) and put back after,
    so the nightly incremental that follows starts from the same state as before.  With
    ``repeat`` > 1 the two alternate (restore, verify, verify, restore, ...): on these VMs a
    ``tar -x`` gets slower as a run goes on, and a fixed order would bill that to one side.
    """
    local = Path(config["backup"]["staging_dir"]) / "benchhost" / "complete" / full["set_id"]
    aside = work / f"staging-copies-{full['set_id']}"
    rests, vers = [], []
    os.rename(local, aside)
    try:
        for rep in range(repeat):
            tag = f"-run{rep + 1}" if rep else ""
            for which in ("restore", "verify") if rep % 2 == 0 else ("verify", "restore"):
                if which == "restore":
                    rests.append(store_restore(config, work, base / f"restore-store{tag}", full, corpus, digest_full))
                else:
                    vers.append(run_ours("verify", config, work, f"verify{tag}", set_id=full["set_id"]))
                    vers[-1]["staging_survived"] = local.parent.is_dir()
    finally:
        local.parent.mkdir(parents=True, exist_ok=True)
        os.rename(aside, local)
    if not all(v["staging_survived"] for v in vers):
        say(f"   NOTE: {local.parent} was gone after inv verify (its staging copies had been moved aside "
            "and are back); a host's local copies would have been deleted")
    return rests, vers


def store_restore(config: dict, work: Path, target: Path, full: dict, corpus: Path, digest_full: tuple) -> dict:
    target.mkdir()
    rest = run_ours("restore", config, work, target.name, target=str(target / "tree"), set_id=full["set_id"])
    check_restored(target / "tree", corpus, digest_full)
    shutil.rmtree(target)
    return rest


def median_run(runs: list[dict]) -> dict:
    """The run with the median wall time (the upper one of an even count, as for the backups)."""
    return sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]


def trace_restore(trace: Trace, restore) -> None:
    """What a restore spends its time on: checking staging copies, fetching from the store, unpacking."""
    trace.wrap(restore.Restorer, "restore", "restorer_restore")
    trace.wrap(restore.Restorer, "locate", "locate")  # hashes the staging copies (none when use_local is off)
    trace.wrap(restore.Restorer, "fetch_verified", "fetch")  # per directory: every part not found locally
    trace.wrap(restore, "download_verified", "download", lambda store, part, dest, **k: part["size"])
    trace.wrap(restore.Restorer, "decode_one", "decode", lambda self, source: source.plain_size)
    trace.wrap(restore.Restorer, "unpack", "unpack")


def trace_drill(trace: Trace) -> None:
    """``inv verify`` beyond its restore: the expected tree from the index, the comparison, the clean-up."""
    from orchestrator.backup import verify

    trace.wrap(verify, "expected_for", "expected")
    trace.wrap(verify, "compare_tree", "compare",
               lambda root, expected, *a, **k: [len(expected), sum(e.size for e in expected.values() if e.type == "f")])
    trace.wrap(verify, "_check_entry", "check_entry")
    trace.wrap(verify, "_sha256", "sha256")
    trace.wrap(verify, "remove_tree", "scratch_rm")


def child_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    sys.path.insert(0, str(REPO))
    from orchestrator.backup import jobs, pipeline, restore
    from orchestrator.backup.catalog import Catalog
    from orchestrator.job import execute

    trace = Trace()
    trace.wrap(os, "fsync", "fsync")
    trace.wrap(pipeline, "compress_to_file", "compress", lambda data, out_path, *a, **k: [len(data), out_path.name])
    trace.wrap(pipeline, "fill", "fill")
    for name in ("file_hashes", "file_digests"):  # renamed in the cold-storage work
        if hasattr(pipeline, name):
            trace.wrap(pipeline, name, "digests")
    trace.wrap(pipeline.BackupRun, "_take_buffer", "take_buffer")
    trace.wrap(pipeline.BackupRun, "archive_directory", "tar_dir", lambda self, plan, slug, *a: slug)
    trace.wrap(pipeline.BackupRun, "archive_all", "archive_all")
    trace.wrap(pipeline.BackupRun, "upload_part", "upload")
    trace.wrap(pipeline.BackupRun, "commit", "commit")
    trace_restore(trace, restore)
    trace_drill(trace)
    original_decoded = getattr(restore.Restorer, "decoded", None)

    def decoded(self, sources):  # time waiting for decoders vs time tar takes to swallow a chunk
        gen = original_decoded(self, sources)
        while True:
            t0 = time.monotonic()
            try:
                item = next(gen)
            except StopIteration:
                return
            t1 = time.monotonic()
            trace.add("wait_decoded", t0, t1, "", len(item))
            yield item
            trace.add("tar_write", t1, time.monotonic(), "", len(item))

    if original_decoded is not None:
        restore.Restorer.decoded = decoded

    config = spec["config"]
    bodies = {"backup": jobs.backup,
              "restore": lambda r: jobs.restore(r, spec["target"], spec.get("set_id")),
              "verify": lambda r: jobs.verify(r, spec.get("set_id"))}
    started = time.monotonic()
    code = execute(config, spec["job"], bodies[spec["job"]], out=sys.stdout)
    ended = time.monotonic()
    out = {"code": code, "execute_wall": ended - started, "execute_t0": started, "execute_t1": ended,
           "trace": trace.events}
    if code == 0 and spec["job"] == "backup":
        with Catalog.open(Path(config["orchestrator"]["state_dir"]) / "catalog.sqlite") as catalog:
            row = catalog.sets("benchhost")[-1]
            totals = catalog.set_totals(row["id"])
            parts = catalog.parts(row["id"])
            out.update(set_id=row["id"], kind=row["kind"], parts=totals["parts"], plain=totals["plain"],
                       stored=totals["stored"], part_plain_sizes=[p["plain_size"] for p in parts],
                       part_paths=[str(Path(config["backup"]["staging_dir"]) / "benchhost" / "complete" / row["id"]
                                       / p["name"]) for p in parts])
    Path(spec["result"]).write_text(json.dumps(out))
    return 0


# ------------------------------------------------------------------------------------------
# limits
# ------------------------------------------------------------------------------------------

def compress_limit(config: dict, work: Path, full: dict, cores: int, repeat: int) -> dict:
    """Phase 3: every part of our tar stream through our own xz argv, one xz per core at once.

    The slices are written before the clock starts; with ``--repeat`` the limit is run as
    many times as the full backups and the median wall counts.
    """
    from orchestrator.backup import codec
    from orchestrator.config import load_section

    argv = codec.compress_argv(load_section("backup", config["backup"]).compression)
    slices = our_tar_slices(config, work)
    sizes = [p.stat().st_size for p in slices]
    try:
        runs = [parallel_codec(slices, argv, cores, f"compress limit ({cores} xz at once)") for _ in range(repeat)]
    finally:
        shutil.rmtree(work / "slices")
    median = sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]
    return median | {"walls": [r["wall"] for r in runs], "slice_sizes": sizes,
                     "same_cut": sorted(sizes) == sorted(full["part_plain_sizes"])}


def our_tar_slices(config: dict, work: Path) -> list[Path]:
    """Our exact tar stream cut into one file per part, exactly as the pipeline cuts it.

    Per directory, ``pipeline.tar_create_argv`` with a fresh snapshot (a full dump, as the
    full backup's), read with the pipeline's own ``chunks.fill`` into chunk_size buffers: one
    slice per buffer, the directory's last one shorter (``BackupRun.split``'s rules).  The
    bench's staging, state and store lie outside the corpus, so no protected path is excluded.
    """
    from orchestrator.backup.chunks import fill
    from orchestrator.backup.pipeline import tar_create_argv
    from orchestrator.config import load_section

    cfg = load_section("backup", config["backup"])
    out_dir = work / "slices"
    out_dir.mkdir()
    buf = bytearray(cfg.chunk_size)
    slices: list[Path] = []
    for i, d in enumerate(cfg.directories):
        snar = work / f"slices-{i}.snar"
        tar = subprocess.Popen(tar_create_argv(d, snar, cfg), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL, bufsize=0)
        idx = 0
        while True:
            length = fill(tar.stdout, buf)
            if length == 0 and idx > 0:
                break
            slices.append(out_dir / f"{i:03d}-{idx:06d}")
            slices[-1].write_bytes(memoryview(buf)[:length])
            idx += 1
            if length < len(buf):
                break
        tar.stdout.close()
        if tar.wait() not in (0, 1):
            raise RuntimeError(f"tar of {d} failed while cutting the limit's slices")
        snar.unlink(missing_ok=True)
    return slices


def parallel_codec(inputs: list[Path], argv: list[str], procs: int, name: str) -> dict:
    """Every input through its own ``argv < input > /dev/null``, ``procs`` at a time, in order.

    Like ``xargs -n 1 -P procs``: each of ``procs`` workers takes the next input when its
    previous process ends.  Wall clock from the first start to the last finish; CPU-seconds
    of those processes alone (RUSAGE_CHILDREN: the caller has no other child meanwhile); idle
    core-seconds (fewer than ``procs`` running: the tail of the last, longest inputs).
    """
    todo = iter(inputs)
    lock = threading.Lock()
    failed: list[Path] = []
    spans: list[tuple[float, float]] = []

    def worker() -> None:
        while True:
            with lock:
                path = next(todo, None)
            if path is None:
                return
            with open(path, "rb") as src:
                start = time.monotonic()
                if subprocess.run(argv, stdin=src, stdout=subprocess.DEVNULL).returncode:
                    failed.append(path)
                spans.append((start, time.monotonic()))

    threads = [threading.Thread(target=worker) for _ in range(max(1, procs))]
    busy0 = busy_seconds()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    NOISE.append((name, wall, max(0.0, busy_seconds() - busy0 - cpu)))
    if failed:
        raise RuntimeError(f"{' '.join(argv)} failed on {failed[0]}")
    return {"wall": wall, "cpu": cpu, "inputs": len(inputs), "bytes": sum(p.stat().st_size for p in inputs),
            "procs": procs, "argv": argv, "idle_core_s": busy_profile(spans, t0, t0 + wall, procs)["idle_core_s"]}


def decode_rate(parts: list[str], budget: int) -> dict:
    """One core's ``xz -dc`` rate (compressed bytes per second) on the produced parts, one at a time."""
    parts = sorted(parts)
    sizes = [os.path.getsize(p) for p in parts]
    if sum(sizes) > budget:  # evenly spaced subset
        keep = max(1, int(len(parts) * budget / sum(sizes)))
        idx = sorted({round(i * (len(parts) - 1) / max(keep - 1, 1)) for i in range(keep)})
        parts, sizes = [parts[i] for i in idx], [sizes[i] for i in idx]
    wall = 0.0
    busy0 = busy_seconds()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for p in parts:
        with open(p, "rb") as src:
            t0 = time.monotonic()
            subprocess.run(["xz", "--decompress", "--stdout", "--threads=1"], stdin=src, stdout=subprocess.DEVNULL,
                           check=True)
            wall += time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    NOISE.append(("xz -dc rate", wall, max(0.0, busy_seconds() - busy0 - cpu)))
    return {"rate": sum(sizes) / wall, "bytes": sum(sizes), "parts": len(parts), "wall": wall}


# ------------------------------------------------------------------------------------------
# trace analysis
# ------------------------------------------------------------------------------------------

def busy_profile(intervals: list[tuple[float, float]], t_start: float, t_end: float, cores: int) -> dict:
    """Idle core-seconds in [t_start, t_end] when fewer than ``cores`` intervals overlap."""
    points = sorted([(a, 1) for a, b in intervals] + [(b, -1) for a, b in intervals])
    idle = 0.0
    level, last = 0, t_start
    max_level = 0
    for t, d in points + [(t_end, 0)]:
        t = min(max(t, t_start), t_end)
        idle += max(0, cores - level) * (t - last)
        last = t
        level += d
        max_level = max(max_level, level)
    return {"idle_core_s": idle, "max_concurrent": max_level}


def analyse_backup(run: dict, cores: int, chunk: int) -> dict:
    ev = run["trace"]
    comp = [(a, b) for a, b, _, _ in ev.get("compress", [])]
    if not comp:
        return {}
    tars = ev.get("tar_dir", [])
    arch = ev["archive_all"][0]
    first_start = min(a for a, _ in comp)
    last_end = max(b for _, b in comp)
    last_submit = max(b for _, b, _, _ in tars)  # the splitter returns after the last part is submitted
    streaming = busy_profile(comp, first_start, last_submit, cores)
    tail = busy_profile(comp, last_submit, last_end, cores)
    fsyncs = ev.get("fsync", [])
    sizes = [d[0] for *_, d in ev.get("compress", [])]
    a, b, _, (size, name) = max(ev["compress"], key=lambda e: e[1] - e[0])
    return {
        "startup_s": arch[0] - run["t0"],
        "archive_s": arch[1] - arch[0],
        "commit_s": sum(b - a for a, b, _, _ in ev.get("commit", [])),
        "after_archive_s": run["t0"] + run["wall"] - arch[1],
        "first_part_at_s": first_start - arch[0],
        "tar_s": {slug: round(b - a, 2) for a, b, _, slug in tars},
        "splitter_read_s": sum(b - a for a, b, _, _ in ev.get("fill", [])),
        "splitter_blocked_s": sum(b - a for a, b, _, _ in ev.get("take_buffer", [])),
        "idle_core_s_streaming": streaming["idle_core_s"],
        "idle_core_s_tail": tail["idle_core_s"],
        "tail_s": last_end - last_submit,
        "max_concurrent_codecs": max(streaming["max_concurrent"], tail["max_concurrent"]),
        "parts": len(comp),
        "short_parts": sum(1 for s in sizes if s < chunk),
        "fsync_n": len(fsyncs),
        "fsync_s": sum(b - a for a, b, _, _ in fsyncs),
        "fsync_compress_threads_s": sum(b - a for a, b, th, _ in fsyncs if th.startswith("compress")),
        "digests_s": sum(b - a for a, b, _, _ in ev.get("digests", [])),
        "upload_s": sum(b - a for a, b, _, _ in ev.get("upload", [])),
        "upload_after_last_part_s": max((b for a, b, _, _ in ev.get("upload", [])), default=last_end) - last_end,
        "codec_wall_sum_s": sum(b - a for a, b in comp),
        "longest_part": {"name": name, "plain": size, "codec_wall_s": b - a, "cut_at_s": a - arch[0],
                         "archive_s": arch[1] - arch[0]},
    }


def span_sum(ev: dict, kind: str) -> float:
    """Seconds spent in calls of one traced kind (thread-seconds when they ran in parallel)."""
    return sum(b - a for a, b, *_ in ev.get(kind, []))


def analyse_restore(run: dict, cores: int) -> dict:
    """A restore's time: before ``Restorer.restore``, checking staging copies, fetching from the
    store, unpacking (waiting for decoders vs feeding ``tar -x``), and what follows."""
    ev = run["trace"]
    dec = [(a, b) for a, b, _, _ in ev.get("decode", [])]
    unpack = ev.get("unpack", [])
    restorer = ev.get("restorer_restore", [])
    out = {
        "startup_s": (min(a for a, *_ in restorer) - run["t0"]) if restorer else None,
        "restorer_s": span_sum(ev, "restorer_restore"),
        "locate_s": span_sum(ev, "locate"),
        "fetch_s": span_sum(ev, "fetch"),
        "downloads": len(ev.get("download", [])),
        "download_thread_s": span_sum(ev, "download"),
        "download_bytes": sum(d for *_, d in ev.get("download", [])),
        "unpack_s": span_sum(ev, "unpack"),
        "decode_wall_sum_s": sum(b - a for a, b in dec),
        "wait_for_decoders_s": span_sum(ev, "wait_decoded"),
        "tar_write_s": span_sum(ev, "tar_write"),
        "after_unpack_s": run["t0"] + run["wall"] - max((b for a, b, _, _ in unpack), default=0),
    }
    out["restorer_other_s"] = out["restorer_s"] - out["locate_s"] - out["fetch_s"] - out["unpack_s"]
    if dec and unpack:
        prof = busy_profile(dec, min(a for a, *_ in unpack), max(b for _, b, *_ in unpack), cores)
        out.update(idle_core_s_decoding=prof["idle_core_s"], max_concurrent_decoders=prof["max_concurrent"])
    return out


def analyse_drill(run: dict, cores: int) -> dict:
    """``inv verify``'s time: its restore (as :func:`analyse_restore`), the expected tree read from
    the file index, the comparison (thread-seconds in per-entry checks and in sha256 of contents),
    the scratch removal, and the rest (interpreter, imports, catalog, report)."""
    ev = run["trace"]
    out = analyse_restore(run, cores)
    compare = ev.get("compare", [])
    out.update(expected_s=span_sum(ev, "expected"), compare_s=span_sum(ev, "compare"),
               compare_entries=sum(d[0] for *_, d in compare), compare_bytes=sum(d[1] for *_, d in compare),
               check_entry_thread_s=span_sum(ev, "check_entry"), sha256_thread_s=span_sum(ev, "sha256"),
               scratch_rm_s=span_sum(ev, "scratch_rm"))
    out["rest_s"] = run["wall"] - out["restorer_s"] - out["expected_s"] - out["compare_s"] - out["scratch_rm_s"]
    return out


# ------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------

def fmt_s(x: float) -> str:
    return f"{x:.1f} s" if x >= 10 else f"{x:.2f} s"


def fmt_b(x: float) -> str:
    return f"{x / MiB:.0f} MiB" if x >= 100 * MiB else f"{x / MiB:.1f} MiB"


def print_table(rows: list[dict]) -> None:
    head = ["metric", "ours", "baseline/limit", "ratio", "target", "met"]
    cells = [head] + [[r["metric"], r["ours"], r["base"], f"{r['ratio']:.3f}", r["target"],
                       "-" if r["met"] is None else "yes" if r["met"] else "NO"] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    line = "+-" + "-+-".join("-" * w for w in widths) + "-+"
    print(line)
    for n, c in enumerate(cells):
        print("| " + " | ".join(v.ljust(w) for v, w in zip(c, widths)) + " |")
        if n == 0:
            print(line)
    print(line)


def print_limit_lines(lim: dict, full: dict, full_cpu: float, seed: dict, seed_core_rate: float, cores: int) -> None:
    d = full["diag"]
    print(f"compress limit: {lim['inputs']} slices of our tar stream ({fmt_b(lim['bytes'])}, cut "
          f"{'as' if lim['same_cut'] else 'NOT as'} the pipeline's parts), {lim['procs']} x "
          f"`{' '.join(lim['argv'])}` at once: {fmt_s(lim['wall'])}, {lim['cpu']:.1f} CPU-s "
          f"({lim['cpu'] / (lim['wall'] * cores):.0%} of {cores} cores); idle core-seconds {lim['idle_core_s']:.1f} "
          f"(ours: {d.get('idle_core_s_streaming', 0) + d.get('idle_core_s_tail', 0):.1f})")
    print(f"CPU: ours {full_cpu:.1f} s = the limit's xz {lim['cpu']:.1f} s {full_cpu - lim['cpu']:+.1f} s (tar, "
          f"Python, hashing, file writes, and xz slower beside them); seed {seed['cpu']:.1f} s; xz per CPU-second: "
          f"limit {lim['bytes'] / lim['cpu'] / MiB:.3f} MiB/s, seed's {seed_core_rate / MiB:.3f} MiB/s (gnu tar)")


def print_restore_lines(label: str, run: dict, r: dict) -> None:
    print(f"{label}: {fmt_s(run['wall'])} = before Restorer.restore {r['startup_s'] or 0:.2f} s + restore "
          f"{r['restorer_s']:.2f} s + after {run['wall'] - (r['startup_s'] or 0) - r['restorer_s']:.2f} s")
    print(f"  in restore: check staging copies {r['locate_s']:.2f} s, fetch from the store {r['fetch_s']:.2f} s "
          f"({r['downloads']} parts, {fmt_b(r['download_bytes'])}, downloads {r['download_thread_s']:.2f} thread-s), "
          f"{unpack_text(r)}, other {r['restorer_other_s']:.2f} s")


def unpack_text(r: dict) -> str:
    return (f"unpack {r['unpack_s']:.2f} s (waiting for decoders {r['wait_for_decoders_s']:.2f} s, tar taking chunks "
            f"{r['tar_write_s']:.2f} s; idle core-seconds while decoding {r.get('idle_core_s_decoding', 0):.1f})")


def print_drill_lines(run: dict, v: dict, restore_diag: dict) -> None:
    print(f"verify: {fmt_s(run['wall'])} = restore part {v['restorer_s']:.2f} s (fetch {v['fetch_s']:.2f} s, "
          f"{unpack_text(v)}) + compare part {v['compare_s']:.2f} s + expected tree from the index "
          f"{v['expected_s']:.2f} s + scratch removal {v['scratch_rm_s']:.2f} s + the rest {v['rest_s']:.2f} s "
          f"(interpreter, imports, catalog, report)")
    print(f"  compare: {v['compare_entries']} entries, {fmt_b(v['compare_bytes'])} of file content; per-entry checks "
          f"{v['check_entry_thread_s']:.2f} thread-s, of which sha256 {v['sha256_thread_s']:.2f} thread-s; restore "
          f"part vs inv restore's own {v['restorer_s'] - restore_diag['restorer_s']:+.2f} s")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=float, help="corpus size in MB (MiB); default 300, 30 with --quick")
    p.add_argument("--level", type=int, help="xz preset; default 9 (6 with --quick)")
    p.add_argument("--extreme", action=argparse.BooleanOptionalAction, default=None,
                   help="xz -e; default on (off with --quick)")
    p.add_argument("--chunk-mb", type=float,
                   help="chunk size for both (default: the config's backup.chunk_size; 4 with --quick)")
    p.add_argument("--workers", type=int, default=0,
                   help="our compress workers (default 0: the config's default; the seed always runs cores+1)")
    p.add_argument("--queue-depth", type=int, default=1, help="our extra buffers (config backup.queue_depth)")
    p.add_argument("--seed", type=int, default=20130916, help="corpus random seed")
    p.add_argument("--change", type=float, default=0.01, help="fraction of files changed for the nightly run")
    p.add_argument("--no-half", action="store_true", help="skip the half-size memory run")
    p.add_argument("--repeat", type=int, default=1,
                   help="run seed and ours full N times, interleaved (seed, ours, ours, seed, ...); medians are used")
    p.add_argument("--quick", action="store_true", help="smoke run: 30 MB, xz -6, 4 MiB chunks")
    p.add_argument("--workdir", type=Path, help="where the corpus and sites go (default: a new dir in /var/tmp)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.size_mb = a.size_mb or (30 if a.quick else 300)
    a.level = a.level if a.level is not None else (6 if a.quick else 9)
    a.extreme = a.extreme if a.extreme is not None else not a.quick
    if not a.chunk_mb and not a.quick:
        sys.path.insert(0, str(REPO))
        from orchestrator.config import BackupConfig

        a.chunk_mb = BackupConfig().chunk_size / MiB
    a.chunk_mb = a.chunk_mb or 4
    a.chunk_size = int(a.chunk_mb * MiB)
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    sys.path.insert(0, str(REPO))
    from orchestrator.backup import codec
    from orchestrator.config import load_section

    cores = os.cpu_count() or 1
    total = int(args.size_mb * MiB)
    base = args.workdir or Path(tempfile.mkdtemp(prefix="backup-bench-", dir="/var/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    work = base / "work"
    work.mkdir(exist_ok=True)
    figures: dict = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    xz_version = subprocess.run(["xz", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    say(f"{cores} cores, {os.sysconf('SC_PHYS_PAGES') * PAGE / 2**30:.1f} GiB RAM, {xz_version}; work dir {base}")
    steal0, started = steal_seconds(), time.monotonic()
    head = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "orchestrator"],
                           capture_output=True, text=True).stdout.strip()
    code_version = (head.stdout.strip() or "unknown") + (" (+ uncommitted changes in orchestrator/)" if dirty else "")
    say(f"code under test: {code_version}")
    figures["code"] = code_version
    try:
        # corpus --------------------------------------------------------------------------------
        corpus = base / "corpus"
        t0 = time.monotonic()
        files = generate_corpus(corpus, total, args.seed)
        dirs = [corpus / d for d in TOP_DIRS]
        digest_full = tree_digest(corpus)
        say(f"corpus: {len(files)} files, {fmt_b(sum(f['size'] for f in files))} in {', '.join(TOP_DIRS)} "
            f"(seed {args.seed}, {time.monotonic() - t0:.1f} s to generate)")
        figures["corpus"] = {"files": len(files), "bytes": sum(f["size"] for f in files)}

        ours_site = base / "ours"
        config = site_config(ours_site, dirs, args)
        cfg = load_section("backup", config["backup"])
        workers = cfg.compression.effective_workers()
        flags = xz_flags(args.level, args.extreme)
        say(f"codec xz {flags}, chunk {fmt_b(args.chunk_size)}, ours: {workers} workers + queue_depth "
            f"{cfg.queue_depth}; seed: xargs -P {seed_cpus()}")

        # 1 and 2, interleaved when repeated (seed, ours, ours, seed, ...) -------------------------
        seeds, fulls = [], []
        for rep in range(args.repeat):
            tag = f" (run {rep + 1} of {args.repeat})" if args.repeat > 1 else ""
            for which in (("seed", "ours") if rep % 2 == 0 else ("ours", "seed")):
                if which == "seed":
                    say(f"1. seed baseline: tar | split, then find | xargs xz ...{tag}")
                    seed = run_seed(dirs, base / "seed-stage", args.chunk_size, args.level, args.extreme,
                                    work / "seed.log")
                    say(f"   seed: {fmt_s(seed['wall'])} (tar|split {fmt_s(seed['split_wall'])}, xz "
                        f"{fmt_s(seed['xz_wall'])}), {seed['chunks']} chunks, {fmt_b(seed['tar_bytes'])} -> "
                        f"{fmt_b(seed['stored'])}, xz CPU {seed['xz_cpu']:.1f} s")
                    shutil.rmtree(base / "seed-stage")
                    seeds.append(seed)
                else:
                    say(f"2. ours: full backup via orchestrator.job.execute ...{tag}")
                    last = rep == args.repeat - 1  # the last run's site goes on to restore and incremental
                    site = ours_site if last else base / f"ours-run{rep + 1}"
                    full = run_ours("backup", config if last else site_config(site, dirs, args), work,
                                    "full" if last else f"full-run{rep + 1}")
                    say(f"   ours: {fmt_s(full['wall'])} ({full['kind']}, {full['parts']} parts, "
                        f"{fmt_b(full['plain'])} -> {fmt_b(full['stored'])}), CPU {full['cpu']:.1f} s, "
                        f"peak RSS {fmt_b(full['peak_rss'])}")
                    if not last:
                        shutil.rmtree(site)
                    fulls.append(full)
        full = fulls[-1]
        seed = dict(seeds[-1])
        seed_wall = sorted(s["wall"] for s in seeds)[len(seeds) // 2]
        full_wall = sorted(f["wall"] for f in fulls)[len(fulls) // 2]
        figures["seed"] = seed | {"walls": [s["wall"] for s in seeds], "median_wall": seed_wall}
        full_diag = analyse_backup(full, cores, args.chunk_size)
        figures["ours_full"] = ({k: v for k, v in full.items() if k != "trace"}
                                | {"diag": full_diag, "walls": [f["wall"] for f in fulls], "median_wall": full_wall})

        # 3. compression limit -----------------------------------------------------------------
        say(f"3. compression limit: our tar stream's parts, {cores} xz {flags} at once ...")
        lim = compress_limit(config, work, full, cores, args.repeat)
        full_cpu = sorted(f["cpu"] for f in fulls)[len(fulls) // 2]
        seed_core_rate = seed["tar_bytes"] / seed["xz_cpu"] if seed["xz_cpu"] else 0.0
        say(f"   {lim['inputs']} slices, {fmt_b(lim['bytes'])} (cut {'as' if lim['same_cut'] else 'NOT as'} the "
            f"pipeline's {full['parts']} parts): {fmt_s(lim['wall'])} wall, {lim['cpu']:.1f} CPU-s "
            f"({lim['bytes'] / lim['cpu'] / MiB:.3f} MiB per CPU-second; the seed's xz "
            f"{seed_core_rate / MiB:.3f})")
        figures["compress_limit"] = lim | {"seed_per_cpu_rate": seed_core_rate}

        # 6. restore (of the full set, before the nightly changes) ------------------------------
        say("6. restore of the full set from the staging copies ...")
        drate = decode_rate(full["part_paths"], 256 * MiB)
        pdec = parallel_codec([Path(x) for x in full["part_paths"]], codec.decompress_argv("xz"), cores,
                              f"decode limit ({cores} xz -dc at once)")
        target_parent = base / "restore"
        target_parent.mkdir()
        rest = run_ours("restore", config, work, "restore", target=str(target_parent / "tree"), set_id=full["set_id"])
        dec_limit = full["stored"] / (drate["rate"] * cores)
        restored = check_restored(target_parent / "tree", corpus, digest_full)
        say(f"   restore: {fmt_s(rest['wall'])}, decode limit {fmt_s(dec_limit)} (xz -dc {drate['rate'] / MiB:.2f} "
            f"MiB/s compressed on {drate['parts']} parts), {cores} xz -dc at once on all {pdec['inputs']} parts "
            f"{fmt_s(pdec['wall'])}; peak RSS {fmt_b(rest['peak_rss'])}; tree identical ({restored[1]} files)")
        shutil.rmtree(target_parent)
        rest_diag = analyse_restore(rest, cores)
        figures["restore"] = {k: v for k, v in rest.items() if k != "trace"} | {"diag": rest_diag,
                                                                             "decode_rate": drate,
                                                                             "limit": dec_limit,
                                                                             "decode_parallel": pdec}

        # 7. restore and verify, both from the store ----------------------------------------------
        say("7. restore with the staging copies gone, then inv verify, both from the store ...")
        srests, vers = store_drill(config, work, base, full, corpus, digest_full, args.repeat)
        srest, ver = median_run(srests), median_run(vers)
        srest_diag, ver_diag = analyse_restore(srest, cores), analyse_drill(ver, cores)
        say(f"   restore from the store {', '.join(fmt_s(r['wall']) for r in srests)}, verify "
            f"{', '.join(fmt_s(r['wall']) for r in vers)} ({ver_diag['compare_entries']} entries, "
            f"{fmt_b(ver_diag['compare_bytes'])} compared)")
        figures["restore_store"] = ({k: v for k, v in srest.items() if k != "trace"}
                                    | {"diag": srest_diag, "walls": [r["wall"] for r in srests]})
        figures["verify"] = ({k: v for k, v in ver.items() if k != "trace"}
                             | {"diag": ver_diag, "walls": [r["wall"] for r in vers]})

        # 4. nightly incremental ---------------------------------------------------------------
        n_changed, b_changed = change_files(corpus, files, args.change, args.seed)
        say(f"4. nightly: {n_changed} files rewritten ({fmt_b(b_changed)}, "
            f"{b_changed / figures['corpus']['bytes']:.2%} of the bytes); ours again ...")
        incr = run_ours("backup", config, work, "incremental")
        say(f"   ours: {fmt_s(incr['wall'])} ({incr['kind']}, {incr['parts']} parts, {fmt_b(incr['plain'])} -> "
            f"{fmt_b(incr['stored'])}), peak RSS {fmt_b(incr['peak_rss'])}")
        incr_diag = analyse_backup(incr, cores, args.chunk_size)
        figures["ours_incremental"] = ({k: v for k, v in incr.items() if k != "trace"}
                                       | {"diag": incr_diag, "changed_files": n_changed, "changed_bytes": b_changed})

        # 5. memory at half the size -----------------------------------------------------------
        half = None
        if not args.no_half:
            say(f"5. memory: full backup of a {args.size_mb / 2:g} MB corpus ...")
            half_corpus = base / "corpus-half"
            generate_corpus(half_corpus, total // 2, args.seed)
            half_dirs = [half_corpus / d for d in TOP_DIRS]
            half = run_ours("backup", site_config(base / "ours-half", half_dirs, args), work, "half")
            say(f"   ours at half size: {fmt_s(half['wall'])}, peak RSS {fmt_b(half['peak_rss'])}")
            figures["ours_half"] = {k: v for k, v in half.items() if k != "trace"}
            shutil.rmtree(half_corpus)
            shutil.rmtree(base / "ours-half")
        codec_mem, _ = xz_memory(args.level, args.extreme)
        bound = workers * codec_mem + (workers + cfg.queue_depth) * cfg.chunk_size

        # table --------------------------------------------------------------------------------
        rows = [
            {"metric": "full backup wall vs seed", "ours": fmt_s(full_wall), "base": fmt_s(seed_wall) + " seed",
             "ratio": full_wall / seed_wall, "target": "<= 1.00"},
            {"metric": "full backup wall vs compress limit", "ours": fmt_s(full_wall),
             "base": fmt_s(lim["wall"]) + " limit", "ratio": full_wall / lim["wall"], "target": "<= 1.10"},
            {"metric": "full backup CPU-s vs the limit's xz CPU-s (info)", "ours": f"{full_cpu:.1f} s",
             "base": f"{lim['cpu']:.1f} s xz", "ratio": full_cpu / lim["cpu"], "target": "info"},
            {"metric": f"nightly incremental ({args.change:.0%} files) vs full", "ours": fmt_s(incr["wall"]),
             "base": fmt_s(full_wall) + " full", "ratio": incr["wall"] / full_wall, "target": "<= 0.05"},
        ]
        if half:
            rows.append({"metric": f"peak RSS {args.size_mb:g} MB vs {args.size_mb / 2:g} MB corpus",
                         "ours": fmt_b(full["peak_rss"]), "base": fmt_b(half["peak_rss"]) + " half",
                         "ratio": full["peak_rss"] / half["peak_rss"], "target": "~1.0 (<= 1.10)"})
        rows += [
            {"metric": "peak RSS vs formula bound", "ours": fmt_b(full["peak_rss"]), "base": fmt_b(bound) + " bound",
             "ratio": full["peak_rss"] / bound, "target": "<= 1.00"},
            {"metric": "restore wall vs decode limit", "ours": fmt_s(rest["wall"]), "base": fmt_s(dec_limit) + " limit",
             "ratio": rest["wall"] / dec_limit, "target": "<= 1.10"},
            {"metric": f"restore wall vs {cores} xz -dc at once on its parts (info)", "ours": fmt_s(rest["wall"]),
             "base": fmt_s(pdec["wall"]) + " decode", "ratio": rest["wall"] / pdec["wall"], "target": "info"},
            {"metric": "verify wall vs restore wall (both from the store)", "ours": fmt_s(ver["wall"]),
             "base": fmt_s(srest["wall"]) + " restore", "ratio": ver["wall"] / srest["wall"], "target": "<= 1.20"},
        ]
        for r in rows:
            r["met"] = None if r["target"] == "info" else \
            r["ratio"] <= float(re.search(r"[0-9.]+\)?$", r["target"]).group(0).rstrip(")"))
        print()
        print(f"backup benchmark: {figures['corpus']['files']} files, {fmt_b(figures['corpus']['bytes'])}, "
              f"xz {flags}, chunk {fmt_b(args.chunk_size)}, {cores} cores, {workers} workers")
        print_table(rows)
        if args.repeat > 1:
            print(f"walls (median in the table): seed {', '.join(fmt_s(x['wall']) for x in seeds)}; "
                  f"ours {', '.join(fmt_s(x['wall']) for x in fulls)}; limit {', '.join(fmt_s(x) for x in lim['walls'])}"
                  f"; restore from the store {', '.join(fmt_s(x['wall']) for x in srests)}; verify "
                  f"{', '.join(fmt_s(x['wall']) for x in vers)}")
        print(f"memory bound = workers x codec + (workers + queue_depth) x chunk = {workers} x "
              f"{codec_mem // MiB} MiB + ({workers} + {cfg.queue_depth}) x {cfg.chunk_size // MiB} MiB = "
              f"{bound // MiB} MiB  (xz {flags} needs {codec_mem // MiB} MiB per process, per xz -vv)")
        peak_parts = ", ".join(f"{k} {fmt_b(v)}" for k, v in sorted(full["peak_breakdown"].items(), key=lambda x: -x[1]))
        print(f"ours at peak: {peak_parts}; largest single xz {fmt_b(full['max_rss_by_name'].get('xz', 0))}; "
              f"seed's tree peak {fmt_b(seed['peak_rss'])}")
        print(f"tar bytes: ours {fmt_b(full['plain'])} (posix/pax, listed-incremental), seed {fmt_b(seed['tar_bytes'])}"
              f" (gnu); stored: ours {fmt_b(full['stored'])}, seed {fmt_b(seed['stored'])}")
        print_limit_lines(lim, figures["ours_full"], full_cpu, seed, seed_core_rate, cores)
        d = full_diag
        print(f"ours full, where the time went: startup {d['startup_s']:.2f} s, archive {d['archive_s']:.1f} s "
              f"(first part compressing at +{d['first_part_at_s']:.2f} s), after archive {d['after_archive_s']:.2f} s"
              f" (commit {d['commit_s']:.2f} s)")
        print(f"  parts {d['parts']} ({d['short_parts']} shorter than a chunk); idle core-seconds while streaming "
              f"{d['idle_core_s_streaming']:.1f}, in the tail {d['idle_core_s_tail']:.1f} (tail {d['tail_s']:.1f} s "
              f"after the last part was cut); splitter read {d['splitter_read_s']:.1f} s, blocked on buffers "
              f"{d['splitter_blocked_s']:.1f} s")
        print(f"  fsync {d['fsync_n']} x = {d['fsync_s']:.2f} s ({d['fsync_compress_threads_s']:.2f} s on compress "
              f"threads); digests {d['digests_s']:.2f} s; uploads {d['upload_s']:.2f} s, "
              f"{d['upload_after_last_part_s']:.2f} s after the last part")
        lp = d["longest_part"]
        print(f"  longest part: {lp['name']} ({fmt_b(lp['plain'])}) compressed for {lp['codec_wall_s']:.1f} s, cut at "
              f"+{lp['cut_at_s']:.1f} s of {lp['archive_s']:.1f} s")
        print(f"  per-directory tar time: {d['tar_s']}")
        if incr_diag:
            i = incr_diag
            print(f"ours incremental: startup {i['startup_s']:.2f} s, archive {i['archive_s']:.2f} s, after "
                  f"{i['after_archive_s']:.2f} s; {i['parts']} parts, codec wall sum {i['codec_wall_sum_s']:.2f} s, "
                  f"fsync {i['fsync_s']:.2f} s; {n_changed} files / {fmt_b(b_changed)} changed")
        print_restore_lines("restore (staging copies)", rest, rest_diag)
        print(f"  decode: one xz -dc at a time {drate['wall']:.1f} s on {drate['parts']} parts; {cores} at once "
              f"{pdec['wall']:.2f} s on all {pdec['inputs']} parts, {pdec['cpu']:.1f} CPU-s")
        print_restore_lines("restore from the store", srest, srest_diag)
        print_drill_lines(ver, ver_diag, srest_diag)
        untraced = sorted({d for run in (full, rest, srest, ver) for *_, d in run["trace"].get("untraced", [])})
        if untraced:
            print(f"not traced (no longer in the code): {', '.join(untraced)}")
        stolen = steal_seconds() - steal0
        print(f"CPU steal during the run: {stolen:.1f} s over {time.monotonic() - started:.0f} s")
        noisy = [(name, wall, cpu) for name, wall, cpu in NOISE if cpu > 0.02 * wall * cores + 0.2]
        if noisy:
            print("OTHER LOAD on the machine while measuring (CPU-seconds used by processes not ours; those "
                  "figures are pessimistic for the phase named):")
            for name, wall, cpu in noisy:
                print(f"  {name}: {cpu:.1f} CPU-s during {wall:.1f} s ({cpu / (wall * cores):.0%} of the machine)")
        else:
            print("no other load on the machine while measuring (< 2% of the CPU in every phase)")
        figures["table"] = rows
        figures["steal_s"] = stolen
        figures["other_load"] = [{"phase": n, "wall": w, "foreign_cpu": c} for n, w, c in NOISE]
        figures["memory_bound"] = {"bound": bound, "workers": workers, "codec_memory": codec_mem,
                                   "queue_depth": cfg.queue_depth, "chunk_size": cfg.chunk_size}
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
            print(f"figures written to {args.json}")
    finally:
        if args.keep:
            print(f"work directory kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
