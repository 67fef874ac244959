"""The fleet room: the inventory (``fleet``), ``select_hosts``, ``connect`` and ``run_on_hosts``, against a
real sshd on a loopback port. Several "hosts" are entries of the inventory that reach that one sshd, each
with a ``root`` of its own under the test's temp dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from children import HANG_S, finish, no_sshd_session_left, wait_gone, wait_until
from conftest import Site
from daemons import group_members, stop_group
from orchestrator.config import load_section
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.fleet import run_on_hosts, select_hosts
from orchestrator.fleet.runner import ABORT_WAIT
from sshd import SshServer, free_port

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("every_session_ends")]
REPO_ROOT = Path(__file__).resolve().parents[1]






def entry(sshd: SshServer, name: str, root: Path, **settings) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    return {"name": name, "host": sshd.host, "port": sshd.port, "key_filename": sshd.key_filename,
            "known_hosts": sshd.known_hosts, "root": str(root), **settings}


def fleet(site: Site, sshd: SshServer, tmp_path: Path, *names: str, **settings) -> Site:
    hosts = [entry(sshd, name, tmp_path / "hosts" / name) for name in names]
    return site.set("fleet", {"hosts": hosts, **settings})


# --- the inventory ---------------------------------------------------------

INVENTORY = {"hosts": [
    {"name": "web1", "host": "10.0.0.1", "groups": ["web", "eu"]},
    {"name": "web2", "host": "10.0.0.2", "groups": ["web"]},
    {"name": "db1", "host": "10.0.0.3", "groups": ["db", "eu"], "instance_id": "i-0123456789abcdef0"},
]}


@pytest.mark.parametrize("change, message", [
    (lambda h: h[1].update(name="web1"), "fleet.hosts[1].name: 'web1' is used twice (also fleet.hosts[0])"),
    (lambda h: h[2].update(groups=["web1"]), "fleet.hosts[2].groups[0]: 'web1' is also a host's name"),
    (lambda h: h[0].update(instance_id="i-xyz"),
     "fleet.hosts[0].instance_id: 'i-xyz' is not an EC2 instance id (i- and 8 to 17 hex digits)"),
    (lambda h: h[0].update(root="mnt/image"), "fleet.hosts[0].root: must be an absolute path, got 'mnt/image'"),
    (lambda h: h[0].update(name="web 1"),
     "fleet.hosts[0].name: 'web 1' is not a name of letters, digits and . _ - (it names log files and report keys)"),
    (lambda h: h[0].update(groups=["all"]),
     "fleet.hosts[0].groups[0]: 'all' is not a group name of letters, digits and . _ - ('all' means every host)"),
    (lambda h: h[0].update(port=0), "fleet.hosts[0].port: 0 is not a TCP port (1-65535)"),
    (lambda h: h[0].pop("host"), "fleet.hosts[0].host: required setting is missing"),
])
def test_a_bad_inventory_is_one_line_naming_the_key(change, message):
    raw = json.loads(json.dumps(INVENTORY))
    change(raw["hosts"])
    with pytest.raises(ConfigError) as caught:
        load_section("fleet", raw)
    assert str(caught.value) == message


def test_the_inventory_loads_with_its_defaults():
    cfg = load_section("fleet", INVENTORY)
    assert (cfg.parallel, cfg.command_timeout, cfg.names, cfg.groups) == (
        8, 3600, ["web1", "web2", "db1"], ["web", "eu", "db"])
    web1 = cfg.host("web1")
    assert (web1.user, web1.port, web1.root, web1.known_hosts, web1.instance_id) == ("root", 22, "/", None, "")


@pytest.mark.parametrize("words, chosen", [
    ([], ["web1", "web2", "db1"]),
    (["@all"], ["web1", "web2", "db1"]),
    (["db1", "web1"], ["web1", "db1"]),  # inventory order
    (["@eu", "web1", "@db"], ["web1", "db1"]),  # each once
    (["@web"], ["web1", "web2"]),
])
def test_select_hosts_by_name_and_group(words, chosen):
    assert [host.name for host in select_hosts(load_section("fleet", INVENTORY), words)] == chosen


@pytest.mark.parametrize("words, message", [
    (["web3"], "HOST: no host 'web3' in fleet.hosts (known: web1, web2, db1)"),
    (["web1", "@mail"], "HOST: no group '@mail' in fleet.hosts (groups: @web, @eu, @db, @all)"),
])
def test_select_hosts_refuses_an_unknown_word_in_one_line(words, message):
    with pytest.raises(ConfigError) as caught:
        select_hosts(load_section("fleet", INVENTORY), words)
    assert str(caught.value) == message


def test_select_hosts_with_no_inventory_says_so():
    with pytest.raises(ConfigError, match=r"^fleet.hosts: no hosts configured$"):
        select_hosts(load_section("fleet", {}), [])


# --- the runner --------------------------------------------------------------


def test_one_host_failing_does_not_stop_the_others(site, sshd, tmp_path):
    fleet(site, sshd, tmp_path, "a", "b", "c")
    gone = free_port()  # nobody listens there
    site.config["fleet"]["hosts"][1]["port"] = gone
    got = {}

    def body(run):
        results = run_on_hosts(run, select_hosts(run.section("fleet"), []),
                               lambda host, remote: remote.run(["cat", f"{host.root}/name"], mutates=False).stdout,
                               what="read name")
        got["results"] = results
        results.raise_if_failed("read name")

    for name in ("a", "c"):
        (tmp_path / "hosts" / name / "name").write_text(f"I am {name}\n")
    code, output = site.run("fleet-test", body)
    results = got["results"]
    assert code == 1
    assert results.succeeded == {"a": "I am a\n", "c": "I am c\n"}
    reason = f"ssh root@127.0.0.1:{gone}: connect failed: Connection refused"
    assert results.failed == {"b": reason}
    assert f"error: 1 of 3 host(s) failed to read name: b: {reason}" in output.splitlines()
    report = json.loads((site.root / "state/reports/fleet-test-latest.json").read_text())
    assert report["summary"]["hosts"] == {"a": "ok", "b": f"FAILED: {reason}", "c": "ok"}


def test_a_failing_command_is_one_line_and_the_dry_run_prints_with_the_host_name(site, sshd, tmp_path):
    fleet(site, sshd, tmp_path, "a", "b")
    got = {}

    def body(run):
        def job(host, remote):
            remote.run(["touch", f"{host.root}/made"])
            if host.name == "b":
                remote.run(["sh", "-c", "echo broken >&2; exit 3"], mutates=False)
            return host.name
        got["results"] = run_on_hosts(run, select_hosts(run.section("fleet"), []), job, what="touch")

    code, output = site.run("fleet-test", body, dry=True)
    assert code == 0, output
    assert got["results"].failed == {"b": f"ssh:root@127.0.0.1:{sshd.port}: sh exited 3: broken"}
    for name in ("a", "b"):
        assert f"{name}: [dry-run] ssh:root@127.0.0.1:{sshd.port}: touch {tmp_path}/hosts/{name}/made" in output
        assert not (tmp_path / "hosts" / name / "made").exists()


def test_at_most_limit_hosts_at_once_and_each_connection_closed_after(site, sshd, tmp_path):
    """Four hosts, limit 2: two jobs meet at a barrier (a limit of 1 would break it), never three at once."""
    fleet(site, sshd, tmp_path, "a", "b", "c", "d", parallel=1)
    lock, barrier = threading.Lock(), threading.Barrier(2, timeout=HANG_S)
    state = {"now": 0, "most": 0, "remotes": []}

    def job(host, remote):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            state["remotes"].append(remote)
        remote.run(["true"])
        barrier.wait()
        with lock:
            state["now"] -= 1
        return threading.current_thread().name

    got = {}
    code, output = site.run("fleet-test", lambda run: got.update(
        r=run_on_hosts(run, select_hosts(run.section("fleet"), []), job, what="meet", limit=2)))
    assert code == 0, output
    assert state["most"] == 2 and sorted(got["r"].succeeded) == ["a", "b", "c", "d"]
    assert all(name.startswith("fleet-meet") for name in got["r"].succeeded.values())
    assert all(remote._conn is None for remote in state["remotes"])
    assert not [t for t in threading.enumerate() if t.name.startswith("fleet-")]


def test_a_bug_in_a_job_is_not_a_host_failure(site, sshd, tmp_path):
    fleet(site, sshd, tmp_path, "a")

    def job(host, remote):
        raise KeyError("oops")

    code, output = site.run("fleet-test", lambda run: run_on_hosts(
        run, select_hosts(run.section("fleet"), []), job, what="crash"))
    assert code == 1 and "internal error: KeyError: 'oops'" in output and "Traceback" in output


# --- interrupted: Ctrl-C and SIGTERM to a real `inv` ------------------------


def held_pids(root: Path) -> list[int]:
    files = [root / "leader.pid", root / "child.pid"]
    wait_until(lambda: all(f.exists() for f in files), f"the command on {root.name} never wrote its pid files")
    return [int(f.read_text()) for f in files]


@pytest.mark.parametrize("signum, stopped_by", [(signal.SIGINT, "interrupted (Ctrl-C); cleaned up"),
                                               (signal.SIGTERM, "stopped by SIGTERM; cleaned up")])
def test_interrupting_inv_kills_every_remote_command_and_closes_every_connection(site, sshd, tmp_path, signum,
                                                                                 stopped_by):
    fleet(site, sshd, tmp_path, "one", "two", "three", parallel=2)
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump(site.config))
    argv = [sys.executable, "-m", "invoke", "-r", str(REPO_ROOT / "tests"), "-c", "fleet_tasks", "-f", str(config),
            "hold"]
    with open(tmp_path / "stdout", "wb") as out, open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", *argv], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err, start_new_session=True, cwd=tmp_path,
                                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        pids = held_pids(tmp_path / "hosts/one") + held_pids(tmp_path / "hosts/two")
        proc.send_signal(signum)
        code = finish(proc, "the interrupted inv")
        assert not group_members(proc.pid), "inv left processes behind"
    finally:
        stop_group(proc)
    stderr, stdout = (tmp_path / "stderr").read_text(), (tmp_path / "stdout").read_text()
    assert code == 130, stderr
    assert stderr.endswith(f"error: {stopped_by}\n"), stderr
    for pid in pids:
        wait_gone(pid, "a command the interrupted inv ran on a host")
    no_sshd_session_left(sshd)
    assert not (tmp_path / "hosts/three/leader.pid").exists(), "the third host was never started"
    report = json.loads((site.root / "state/reports/fleet-hold-latest.json").read_text())
    assert report["summary"]["hosts"] == {"one": "FAILED: interrupted", "two": "FAILED: interrupted",
                                          "three": "FAILED: interrupted"}
    assert "fleet-hold: FAILED" in stdout and "still busy" not in stderr
    # every worker ended at once: the run did not sit out the bound for workers that never started
    assert report["duration_s"] < ABORT_WAIT


def test_ctrl_c_in_process_leaves_no_thread_and_no_remote_command(site, sshd, tmp_path):
    """The same, inside this process: afterwards no worker or SSH transport thread of ours is left."""
    fleet(site, sshd, tmp_path, "one", "two")
    before = set(threading.enumerate())

    def interrupt_once_both_hold():
        held_pids(tmp_path / "hosts/one")
        held_pids(tmp_path / "hosts/two")
        os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=interrupt_once_both_hold)
    sender.start()
    try:
        from fleet_tasks import hold_on
        code, output = site.run("fleet-hold", lambda run: run_on_hosts(
            run, select_hosts(run.section("fleet"), []), hold_on, what="hold"))
    finally:
        sender.join(HANG_S)
    assert code == 130, output
    for root in ("one", "two"):
        for pid in held_pids(tmp_path / "hosts" / root):
            wait_gone(pid, f"the command held on {root}")
    wait_until(lambda: set(threading.enumerate()) <= before,
               lambda: f"threads left: {set(threading.enumerate()) - before}")


def test_raise_if_failed_names_each_host():
    from orchestrator.fleet import HostResults

    HostResults({"a": 1}, {}).raise_if_failed("x")
    with pytest.raises(OrchestratorError) as caught:
        HostResults({"a": 1, "b": 2}, {"c": "down", "d": "full"}).raise_if_failed("update")
    assert str(caught.value) == "2 of 4 host(s) failed to update: c: down; d: full"
