"""rsyslog -> MariaDB through our rendered snippet: sustained messages per second, and a database restart mid-stream.

    python bench/logs_bench.py [--messages 20000] [--batches 1,128]

A scratch ``mariadbd`` (loopback port, own data directory) set up by ``logs.setup`` itself, and for each
``queue_batch`` a fresh ``rsyslogd`` with the image's rendered snippet plus an omfile action writing every
message to a file: the baseline, in the same process and the same run. Messages go in as fast as the unix
socket takes them; the clock stops when the last row (or the last file line) is there.

1. sustained: N messages; messages/s into the file and into SystemEvents, and their ratio;
2. restart: N messages sent while the database is stopped after a third and started again after two thirds;
   rows counted when the stream has drained: sent, arrived, distinct, lost.

Prints figures; asserts nothing about time (the counts are printed, a loss says so). Debian 12's rsyslog
8.2302 sometimes segfaults when the database goes away during a transaction (fixed upstream in 8.2402,
1e45801fd, and 8.2606, 107446947); a run where that happens says CRASH with the rows that arrived.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from children import wait_until  # noqa: E402
from logs_lab import MariaDB, Rsyslog  # noqa: E402
from orchestrator.config import load_section  # noqa: E402
from orchestrator.job import execute  # noqa: E402
from orchestrator.logs import render as lr  # noqa: E402
from orchestrator.logs import setup as ls  # noqa: E402
from orchestrator.logs.passwords import password_for  # noqa: E402


def site_config(root: Path, db: MariaDB, batch: int) -> dict:
    syslog = {"enabled": True, "server": "127.0.0.1", "port": db.port, "resume_interval": 1, "queue_batch": batch,
              "password_file": str(root / "rsyslog.pwd"), "queue_dir": str(root / "queue")}
    return {"orchestrator": {"state_dir": str(root / "state"), "progress": "plain"},
            "guard": {"images": [{"name": "bench", "syslog": syslog}]}, "logs": {"socket": str(db.socket)}}


def rsyslog_for(root: Path, config: dict) -> Rsyslog:
    image = load_section("guard", config["guard"]).images[0]
    password = password_for(root / "state" / "logs" / "passwords.json", image.syslog.db_user(image.name))
    files = lr.render_syslog(image, load_section("logs", config["logs"]), password)
    lr.validate_syslog(image, files)
    Path(image.syslog.queue_dir).mkdir(mode=0o700, exist_ok=True)
    pw = Path(image.syslog.password_file)
    pw.write_text(files[str(pw)].text)
    pw.chmod(0o600)
    (root / "snippet.conf").write_text(files[lr.SNIPPET].text)
    return Rsyslog(root / "rsyslog", root / "snippet.conf")


def file_count(rs: Rsyslog, tag: str) -> int:
    return rs.all.read_bytes().count(f" {tag}: ".encode()) if rs.all.exists() else 0


def sustained(db: MariaDB, rs: Rsyslog, tag: str, n: int) -> tuple[float, float]:
    """Seconds until all ``n`` are in the file, and until all ``n`` are rows."""
    started = time.perf_counter()
    rs.send(tag, [f"{tag} message {i} " + "x" * 60 for i in range(n)])
    in_file = in_db = 0.0
    while not (in_file and in_db):
        now = time.perf_counter() - started
        if not in_file and file_count(rs, tag) >= n:
            in_file = now
        if not in_db and db.count(f"SysLogTag='{tag}:'") >= n:
            in_db = now
        if now > 600:
            raise SystemExit(f"{tag}: not all {n} arrived in 600 s")
        time.sleep(0.02)
    return in_file, in_db


class Crashed(Exception):
    """rsyslogd ended by itself during the restart run (8.2302's ommysql: a commit on a closed connection)."""


def restart_mid_stream(db: MariaDB, rs: Rsyslog, tag: str, n: int) -> tuple[int, int, float]:
    """(rows, distinct rows, seconds the database was down) for ``n`` messages across a stop and a start."""
    if rs.proc.poll() is not None:
        raise Crashed(f"rsyslogd died (exit {rs.proc.returncode}) before the run")
    sent = threading.Event()
    third = n // 3

    def sender() -> None:
        try:
            for start in range(0, n, 100):
                rs.send(tag, [f"{tag}-{i}" for i in range(start, min(n, start + 100))])
                if start == third // 100 * 100:
                    sent.set()
                time.sleep(0.002)  # a stream, not one burst: the outage falls in its middle
        except OSError:  # rsyslogd is gone (see the crash line)
            sent.set()

    worker = threading.Thread(target=sender)
    worker.start()
    sent.wait()
    down_at = time.perf_counter()
    db.down()
    wait_until(lambda: "Can't connect" in rs.log.read_text(errors="replace"), "rsyslogd saw the outage")
    db.up()
    down_for = time.perf_counter() - down_at
    worker.join()
    if rs.proc.poll() is not None:
        raise Crashed(f"rsyslogd died (exit {rs.proc.returncode}) when the database went away; "
                      f"{db.count(f'SysLogTag={tag!r}')} of {n} rows arrived")
    rs.taken()
    wait_until(lambda: db.count(f"SysLogTag='{tag}:'") >= n, lambda: f"{db.count(f'SysLogTag={tag!r}')} of {n}",
               timeout=600, poll=0.2)
    rows = db.count(f"SysLogTag='{tag}:'")
    distinct = int(db.root_sql(f"SELECT count(DISTINCT Message) FROM SystemEvents WHERE SysLogTag='{tag}:';",
                               "Syslog").strip())
    return rows, distinct, down_for


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--batches", default="1,128")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="logs-bench-") as tmp:
        db = MariaDB(Path(tmp) / "db").up()
        try:
            for batch in (int(b) for b in args.batches.split(",")):
                root = Path(tmp) / f"batch{batch}"
                root.mkdir()
                config = site_config(root, db, batch)
                out = io.StringIO()
                if execute({**config, "run": {"dry": False}}, "logs-setup", ls.setup, out=out):
                    raise SystemExit(out.getvalue())
                rs = rsyslog_for(root, config).up()
                try:
                    tag = f"sustained{batch}"
                    in_file, in_db = sustained(db, rs, tag, args.messages)
                    n = args.messages
                    print(f"queue_batch {batch}: {n} messages: omfile {n / in_file:,.0f}/s, "
                          f"ommysql {n / in_db:,.0f}/s (ommysql/omfile time {in_db / in_file:.1f}x)")
                    rows, distinct, down_for = restart_mid_stream(db, rs, f"restart{batch}", n)
                    print(f"queue_batch {batch}: database restarted mid-stream (down {down_for:.1f} s): "
                          f"sent {n}, rows {rows}, distinct {distinct}, lost {n - distinct}")
                except Crashed as crash:
                    print(f"queue_batch {batch}: CRASH: {crash}")
                finally:
                    rs.down()
        finally:
            db.close()


if __name__ == "__main__":
    main()
