"""Instances updated from the binhost over SSH, three ways, with real parts end to end.

The binhost is real Portage (PyPI) in a scratch prefix, built by `inv binhost`'s
own job; it is served by our `serving()` (the real `rsync --daemon` and the
PKGDIR web server) on loopback ports. Each "instance" is another Portage prefix
reached through a real sshd on a loopback port, as root; its emerge runs over
that SSH session. No EC2 instance exists here: the prefix is the nearest real thing.
"""

from __future__ import annotations

import json
import re
import socket
import sys
from pathlib import Path

import pytest
import yaml

import portage_lab as lab
from children import TAG, Finished, finished, new_tag, no_sshd_session_left, no_tagged_left
from conftest import Site
from daemons import group_members
from orchestrator.binhost import jobs
from orchestrator.binhost.jobs import update_clients
from orchestrator.binhost.facts import BinhostFacts
from orchestrator.binhost.serve import serving
from orchestrator.config import load_section
from sshd import free_port, running_sshd

pytestmark = pytest.mark.slow  # every test here runs real emerge on a prefix over SSH, or shares that fixture

PACKAGES = 3
ALL = {f"app-lab/toy{i:02d}": "1" for i in range(PACKAGES)}
REPO_ROOT = Path(__file__).resolve().parents[1]


class Lab:
    """The binhost site, its servers, the sshd, and helpers to add instances."""

    def __init__(self, site: Site, base: Path, ssh, tag: str):
        self.site, self.base, self.ssh = site, base, ssh
        self.instance_tag = f"{tag}-instance"  # every emerge on an instance carries it
        self.upstream = lab.make_repo(base / "upstream", packages=PACKAGES)
        self.binhost = lab.make_binhost_prefix(base, upstream=self.upstream, packages=PACKAGES)
        self.site.set("binhost", {
            "mode": "prefix", "root": str(self.binhost.eprefix), "clients": [],
            "serve": {"public_host": "127.0.0.1", "listen_address": "127.0.0.1",
                      "rsync_port": free_port(), "http_port": free_port()},
        })
        self.site.set("fleet", {"hosts": []})

    def build(self, stages=None) -> dict:  # None: the full `inv binhost`
        code, output = self.site.run("binhost", lambda run: jobs.build(run, stages))
        assert code == 0, output
        return self.summary("binhost")

    def summary(self, job: str) -> dict:
        return json.loads((self.site.root / "state/reports" / f"{job}-latest.json").read_text())["summary"]

    def instance(self, name: str, **settings) -> lab.Prefix:
        """A prefix reached as fleet host ``name`` (through the one sshd), and a binhost client of it."""
        prefix = lab.make_client_prefix(self.base, name, packages=PACKAGES)
        host = {"name": name, "host": self.ssh.host, "port": self.ssh.port, "key_filename": self.ssh.key_filename,
                "known_hosts": self.ssh.known_hosts, "root": str(prefix.eprefix)}
        client = {"host": name, "eprefix": str(prefix.eprefix), "env": {**prefix.env(), TAG: self.instance_tag},
                  **settings}
        fleet = self.site.config["fleet"]
        fleet["hosts"] = [h for h in fleet["hosts"] if h["name"] != name] + [host]
        self.site.config["binhost"]["clients"] = [
            c for c in self.site.config["binhost"]["clients"] if c["host"] != name] + [client]
        return prefix

    def fleet_host(self, name: str) -> dict:
        return next(h for h in self.site.config["fleet"]["hosts"] if h["name"] == name)

    def update(self, *only: str, mode: str | None = None, dry: bool = False) -> tuple[int, str]:
        return self.site.run("binhost-clients", lambda run: update_clients(run, list(only), mode), dry=dry)

    def inv(self, *args: str) -> Finished:
        """A real ``inv -f site.yaml ARGS`` from the repository root, run to its end as its own process group."""
        runs = len(list(self.base.glob("inv-*")))
        config = self.base / f"inv-{runs}" / "site.yaml"
        config.parent.mkdir()
        config.write_text(yaml.safe_dump(self.site.config))
        return finished([sys.executable, "-m", "invoke", "-f", str(config), *args], what=f"inv {' '.join(args)}",
                        out_dir=config.parent, cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def binlab(tmp_path_factory):
    """The binhost, built once, served by ``serving`` (rsync tagged with the module's tag) beside a real sshd;
    afterwards the daemon's process group is gone and nothing carrying the tag is left."""
    base = tmp_path_factory.mktemp("binlab")
    tag = new_tag("binlab")
    with pytest.MonkeyPatch.context() as env:
        env.setenv(TAG, tag)
        for key, value in lab.portage_env(base).items():
            if key != "PORTAGE_OVERRIDE_EPREFIX":
                env.setenv(key, value)
        with running_sshd(base / "sshd") as ssh:
            site_root = base / "site"
            site_root.mkdir()
            world = Lab(Site(site_root), base, ssh, tag)
            world.build()
            cfg = load_section("binhost", world.site.config["binhost"])
            facts = BinhostFacts.load(site_root / "state/binhost/facts.json")
            with serving(cfg, facts, base / "serve") as server:
                daemon = server.rsync_pid()
                yield world
    assert not Path(f"/proc/{daemon}").exists() and group_members(daemon) == []
    no_tagged_left(tag, "the binhost lab")


@pytest.fixture(autouse=True)
def every_instance_run_ends(binlab):
    """After each test no SSH session is open and nothing run on an instance (its tag) is left running."""
    yield
    no_sshd_session_left(binlab.ssh)
    no_tagged_left(binlab.instance_tag, "a command run on an instance")


def repos_conf(prefix: lab.Prefix) -> str:
    return (prefix.etc_portage / "repos.conf/zz-gentoo-ec2-orchestrator.conf").read_text()


def binrepos_conf(prefix: lab.Prefix) -> str:
    return (prefix.etc_portage / "binrepos.conf/zz-gentoo-ec2-orchestrator.conf").read_text()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_direct_mode_installs_binaries_only_and_a_rerun_has_nothing_to_do(binlab):
    prefix = binlab.instance("direct1", mode="direct")
    code, output = binlab.update("direct1")
    assert code == 0, output
    outcome = binlab.summary("binhost-clients")["clients"]["direct1"]
    assert sorted(outcome["installed"]) == [f"{atom}-1" for atom in ALL]
    assert outcome["skipped"] == [] and len(outcome["configs_written"]) == 2
    assert prefix.installed() == ALL
    serve = binlab.site.config["binhost"]["serve"]
    assert f"sync-uri = rsync://127.0.0.1:{serve['rsync_port']}/lab" in repos_conf(prefix)
    assert f"sync-uri = http://127.0.0.1:{serve['http_port']}/binpkgs" in binrepos_conf(prefix)
    assert "verify-signature = false" in binrepos_conf(prefix)
    update_log = (binlab.site.root / "state/binhost/logs/direct1-update.log").read_text()
    assert ">>> Emerging binary" in update_log and ">>> Emerging (" not in update_log, "nothing was compiled"

    code, output = binlab.update("direct1")
    assert code == 0, output
    assert "installed 0; no binary package for 0; configs unchanged" in output


def test_tunnel_mode_carries_rsync_and_http_through_one_ssh_session(binlab):
    prefix = binlab.instance("tunnel1", mode="tunnel", tunnel_rsync_port=free_port(), tunnel_http_port=free_port())
    client = binlab.site.config["binhost"]["clients"][-1]
    code, output = binlab.update("tunnel1")
    assert code == 0, output
    assert prefix.installed() == ALL
    assert f"rsync://127.0.0.1:{client['tunnel_rsync_port']}/lab" in repos_conf(prefix)
    assert f"http://127.0.0.1:{client['tunnel_http_port']}/binpkgs" in binrepos_conf(prefix)
    assert refused(client["tunnel_rsync_port"]) and refused(client["tunnel_http_port"]), "the tunnel is closed"


def test_tarball_mode_ships_tree_and_binaries_and_leaves_one_unpacked_copy(binlab, tmp_path):
    staging = tmp_path / "instance-staging"
    prefix = binlab.instance("tarball1", mode="tarball", staging_dir=str(staging))
    code, output = binlab.update("tarball1")
    assert code == 0, output
    assert prefix.installed() == ALL
    assert f"sync-uri = file://{staging}/binhost/tree/lab/" in repos_conf(prefix)
    assert f"sync-uri = file://{staging}/binhost/binpkgs" in binrepos_conf(prefix)
    assert sorted(p.name for p in staging.iterdir()) == ["binhost"], "no tarball or half-unpacked copy left"
    assert (staging / "binhost/tree/lab/metadata/timestamp.chk").is_file()
    assert (staging / "binhost/binpkgs/Packages").is_file()


def test_legacy_make_conf_block_is_added_and_the_rest_is_kept(binlab):
    prefix = binlab.instance("legacy1", mode="direct", legacy_make_conf=True)
    original = (prefix.etc_portage / "make.conf").read_text()
    code, output = binlab.update("legacy1")
    assert code == 0, output
    text = (prefix.etc_portage / "make.conf").read_text()
    assert text.startswith(original), "every line the admin wrote is kept as it was"
    assert "# BEGIN gentoo-ec2-orchestrator binhost" in text and 'PORTAGE_BINHOST="http://127.0.0.1:' in text
    assert (prefix.etc_portage / ".make.conf.previous").read_text() == original


BROKEN_MAKE_CONF = b'CFLAGS="-O2 -pipe\nFEATURES="-sandbox"\n'  # the first value's quote is never closed


def not_parsable(prefix: lab.Prefix) -> str:
    """A pattern of why our check refuses BROKEN_MAKE_CONF, in Portage's own words (the open quote runs on to
    the end of the text checked: the file with our block added)."""
    path = re.escape(str(prefix.etc_portage / "make.conf"))
    return rf'{path}: not a valid make.conf: "{path}", line \d+: No closing quotation'


def test_a_make_conf_portage_cannot_parse_is_left_untouched(binlab):
    prefix = binlab.instance("badconf1", mode="direct", legacy_make_conf=True)
    (prefix.etc_portage / "make.conf").write_bytes(BROKEN_MAKE_CONF)
    code, output = binlab.update("badconf1")
    assert code == 1
    (error,) = [line for line in output.splitlines() if line.startswith("error:")]
    assert re.fullmatch(f"error: 1 of 1 host\\(s\\) failed to update from the binhost: badconf1: "
                        f"{not_parsable(prefix)}", error), output
    assert (prefix.etc_portage / "make.conf").read_bytes() == BROKEN_MAKE_CONF
    assert not (prefix.etc_portage / ".make.conf.previous").exists()
    assert prefix.installed() == {}


def test_a_bad_make_conf_does_not_stop_the_next_instance_and_inv_exits_1_naming_it(binlab):
    """README: one instance failing (a bad make.conf) does not stop the others; the run exits 1 naming it."""
    bad = binlab.instance("badconf2", mode="direct", legacy_make_conf=True)
    healthy = binlab.instance("healthy2", mode="direct")
    (bad.etc_portage / "make.conf").write_bytes(BROKEN_MAKE_CONF)

    done = binlab.inv("binhost.clients", "--only", "badconf2", "--only", "healthy2")  # the bad one first

    assert done.returncode == 1, done
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert re.fullmatch(f"error: 1 of 2 host\\(s\\) failed to update from the binhost: badconf2: "
                        f"{not_parsable(bad)}", error), done.stderr
    assert done.stderr.endswith(error + "\n") and "error:" not in done.stdout
    assert (bad.etc_portage / "make.conf").read_bytes() == BROKEN_MAKE_CONF, "untouched, byte for byte"
    assert not (bad.etc_portage / ".make.conf.previous").exists() and bad.installed() == {}
    assert healthy.installed() == ALL
    report = binlab.summary("binhost-clients")
    assert re.fullmatch(f"FAILED: {not_parsable(bad)}", report["badconf2"])
    assert sorted(report["clients"]["healthy2"]["installed"]) == [f"{atom}-1" for atom in ALL]
    assert list(report["clients"]) == ["healthy2"]
    assert report["hosts"]["healthy2"] == "ok" and report["hosts"]["badconf2"].startswith("FAILED: ")


def test_one_unreachable_instance_does_not_stop_the_others(binlab):
    binlab.instance("good1", mode="direct")
    binlab.instance("gone1", mode="direct")
    port = binlab.fleet_host("gone1")["port"] = free_port()  # nobody listens there
    code, output = binlab.update("gone1", "good1")
    assert code == 1
    assert [line for line in output.splitlines() if line.startswith("error:")] == [
        f"error: 1 of 2 host(s) failed to update from the binhost: gone1: ssh root@127.0.0.1:{port}: "
        "connect failed: Connection refused"]
    assert sorted(binlab.summary("binhost-clients")["clients"]["good1"]["installed"]) == [
        f"{atom}-1" for atom in ALL]


@pytest.mark.parametrize("mode", ["direct", "tunnel", "tarball"])
def test_dry_run_prints_the_plan_and_changes_nothing_on_the_instance(binlab, mode, tmp_path):
    name = f"dry{mode}"
    prefix = binlab.instance(name, mode=mode, staging_dir=str(tmp_path / "staging"),
                             tunnel_rsync_port=free_port(), tunnel_http_port=free_port())
    before = sorted(p for p in prefix.eprefix.rglob("*"))
    code, output = binlab.update(name, dry=True)
    assert code == 0, output
    assert "emerge --color=n --sync" in output, output
    assert "--getbinpkgonly --usepkgonly @world" in output and "would write 2 config file(s)" in output
    assert sorted(p for p in prefix.eprefix.rglob("*")) == before and prefix.installed() == {}
    assert not (tmp_path / "staging").exists()


def test_unknown_instance_name_or_mode_is_one_line(binlab):
    code, output = binlab.update("nosuch")
    assert code == 2 and "--only: no instance named 'nosuch'" in output
    binlab.site.config["binhost"]["clients"].append({"host": "ghost"})
    try:
        code, output = binlab.update()
    finally:
        binlab.site.config["binhost"]["clients"].pop()
    known = ", ".join(h["name"] for h in binlab.site.config["fleet"]["hosts"])
    assert code == 2 and output.splitlines() == [
        f"binhost.clients[{len(binlab.site.config['binhost']['clients'])}].host: no host 'ghost' in fleet.hosts "
        f"(known: {known})"]
    code, output = binlab.update(mode="carrier-pigeon")
    assert code == 2 and "--mode: 'carrier-pigeon' is not one of direct, tunnel, tarball" in output


def test_an_update_without_a_binary_is_reported_then_installed_once_built(binlab):
    """Runs last: it changes the binhost. Bump one ebuild, publish the tree but do not build it yet."""
    prefix = binlab.instance("bump1", mode="direct")
    assert binlab.update("bump1")[0] == 0
    lab.bump(binlab.upstream, 1)
    binlab.build(["sync", "publish"])
    code, output = binlab.update("bump1")
    assert code == 0, output
    outcome = binlab.summary("binhost-clients")["clients"]["bump1"]
    assert outcome["installed"] == [] and outcome["skipped"] == ["app-lab/toy01-2"]
    assert prefix.installed()["app-lab/toy01"] == "1"

    summary = binlab.build()
    assert summary["world"] == "built 1: app-lab/toy01-2"
    code, output = binlab.update("bump1")
    assert code == 0, output
    outcome = binlab.summary("binhost-clients")["clients"]["bump1"]
    assert outcome["installed"] == ["app-lab/toy01-2"] and outcome["skipped"] == []
    assert prefix.installed()["app-lab/toy01"] == "2"
