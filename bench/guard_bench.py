"""From ``inv ssh HOST -- CMD`` to the command's output, through knockd, on loopback in a network namespace.

    python bench/guard_bench.py [--runs 7]

One throwaway namespace holds the rendered rules (iptables), knockd on ``lo`` with the rendered
knockd.conf, and a real sshd on 127.0.0.1:22. Each run is a whole ``inv ssh web1 -- echo ok`` (a new
interpreter, config check, knock, banner wait, exec of the system ssh, the command) timed from the
outside. The baseline, measured in the same run, interleaved: the plain system ``ssh`` with the same
options to the same sshd (no knock), and ``inv --list`` (the interpreter and imports alone).
Target: inv ssh under 1 s. Prints medians; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import yaml  # noqa: E402

from guard_lab import rendered, sshd_in  # noqa: E402
from netns import checked_namespaces  # noqa: E402
from orchestrator.security import render  # noqa: E402
from orchestrator.security.access import ssh_argv  # noqa: E402
from orchestrator.config import HostConfig  # noqa: E402

INV = str(Path(sys.executable).parent / "inv")


def timed(argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=REPO, timeout=60)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{argv[4:]} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return elapsed, done.stdout


def site(tmp: Path, guard, server) -> Path:
    config = {
        "orchestrator": {"state_dir": str(tmp / "state"), "progress": "plain"},
        "fleet": {"hosts": [{"name": "web1", "host": server.host, "port": server.port, "user": server.user,
                             "key_filename": server.key_filename, "known_hosts": server.known_hosts}]},
        "guard": {"secrets_file": str(guard.secrets_file),
                  "images": [{"name": "web", "hosts": ["web1"], "interface": "lo", "knock": {"cmd_timeout": 600}}]},
    }
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="guard-bench-") as tmp_name, checked_namespaces() as new:
        tmp = Path(tmp_name)
        ns = new()
        guard = rendered(tmp, interface="lo", knock={"cmd_timeout": 600})
        ns.run("iptables-restore", str(guard.path(render.RULES_V4)))
        out = tmp / "knockd.out"
        knockd = ns.running(["knockd", "-i", "lo", "-c", str(guard.knockd_conf), "-v", "-D"], what="knockd", log=out,
                            ready=lambda: out.exists() and "listening on lo" in out.read_text(), timeout=10)
        server = sshd_in(ns, tmp / "sshd", "127.0.0.1")
        config = site(tmp, guard, server)
        host = HostConfig("web1", server.host, server.user, server.port, Path(server.key_filename),
                          Path(server.known_hosts))
        rows = {"inv ssh -- echo ok (knock + banner + ssh)": ns.argv(INV, "-f", str(config), "ssh", "web1", "--",
                                                                      "echo", "ok"),
                "plain ssh -- echo ok (no knock)": ns.argv(*ssh_argv(host, ["echo", "ok"])),
                "inv --list (interpreter + imports)": ns.argv(INV, "--list")}
        times: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.runs):
            for name, argv in rows.items():
                elapsed, stdout = timed(argv)
                if "echo" in argv:
                    assert stdout == "ok\n", stdout
                times[name].append(elapsed)
        os.killpg(knockd.pid, 9)  # SIGTERM would wait for its cmd_timeout children
        report(times)


def report(times: dict[str, list[float]]) -> None:
    medians = {name: statistics.median(values) for name, values in times.items()}
    ours, plain, startup = medians.values()
    print(f"{'row':48} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, values in times.items():
        print(f"{name:48} {medians[name]:9.3f} {min(values):7.3f} {max(values):7.3f}")
    print(f"inv ssh vs plain ssh: {ours / plain:.2f}x; inv ssh minus plain ssh: {ours - plain:.3f} s "
          f"(of which interpreter+imports ~{startup:.3f} s)")
    print(f"target: inv ssh under 1 s on loopback: {'met' if ours < 1.0 else 'NOT met'} ({ours:.3f} s)")


if __name__ == "__main__":
    main()
