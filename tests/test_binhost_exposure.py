"""Exposing the binhost: rendered rsyncd.conf and web snippets, and the real
``rsync --daemon`` plus the PKGDIR HTTP server run by ``serving``."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest
from children import TAG, finish, new_tag, no_tagged_left, tagged, wait_gone, wait_until
from daemons import free_port, group_members, running
from portage_lab import make_repo

from orchestrator.binhost.exposure import render_exposure, write_rendered
from orchestrator.binhost import serve as serve_module
from orchestrator.binhost.facts import BinhostFacts, RepoFacts
from orchestrator.binhost.serve import serve_forever, serving
from orchestrator.config import load_section
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.run import LocalTarget

LOOPBACK = "127.0.0.1"
BINPKG = "app-lab/toy00/toy00-1-1.gpkg.tar"


class Lab:
    """A build box's view: one repository with the directories mirrors exclude, and a PKGDIR."""

    def __init__(self, base: Path):
        self.base = base
        self.repo = make_repo(base / "build" / "var/db/repos/lab")
        for excluded in ("distfiles", "packages"):
            (self.repo / excluded).mkdir()
            (self.repo / excluded / "big.tar.xz").write_bytes(b"not part of the tree")
        self.pkgdir = base / "build" / "var/cache/binpkgs"
        (self.pkgdir / BINPKG).parent.mkdir(parents=True)
        (self.pkgdir / "Packages").write_text("ARCH: amd64\nPACKAGES: 1\nVERSION: 0\n")
        (self.pkgdir / BINPKG).write_bytes(os.urandom(300_000))
        (self.pkgdir / ".hidden").write_text("editor leftover")
        (base / "build" / "secret.txt").write_text("outside PKGDIR")
        (self.pkgdir / "escape").symlink_to(base / "build" / "secret.txt")
        self.facts = BinhostFacts("/var/cache/binpkgs", self.pkgdir,
                                  (RepoFacts("lab", "/var/db/repos/lab", self.repo),))

    def config(self, **serve):
        return load_section("binhost", {"serve": {"listen_address": LOOPBACK, **serve}})


@pytest.fixture
def lab(tmp_path) -> Lab:
    return Lab(tmp_path)


def refused(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture(autouse=True)
def tag(monkeypatch):
    """Every process a test here starts carries the test's tag (rsync inherits it); none may outlive the test."""
    value = new_tag("exposure")
    monkeypatch.setenv(TAG, value)
    yield value
    no_tagged_left(value, "a process this test started")


def alive(pid: int) -> bool:
    """Alive and not a zombie (a killed daemon whose new parent has not reaped it yet is gone for us)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def assert_daemon_gone(pid: int) -> None:
    """The daemon itself is reaped, and its process group (the per-connection children) ends."""
    assert not alive(pid), f"rsync --daemon (pid {pid}) still runs"
    wait_until(lambda: not group_members(pid), lambda: f"rsync --daemon's group {pid} still has {group_members(pid)}")


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def status(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    """A raw request: http.client sends the path exactly as given (no ``..`` folding)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- rendering -------------------------------------------------------------------------------

def test_rsyncd_conf_has_the_globals_and_one_module_per_repo(lab, tmp_path):
    cfg = lab.config(rsync_port=8873)
    text = render_exposure(cfg, lab.facts, pid_file=tmp_path / "rsyncd.pid")["rsyncd.conf"]
    lines = text.splitlines()
    for expected in ("address = 127.0.0.1", "port = 8873", f"pid file = {tmp_path / 'rsyncd.pid'}",
                     "use chroot = yes", "read only = yes", "list = yes", "[lab]", f"path = {lab.repo}",
                     "exclude = /distfiles/ /packages/"):
        assert expected in lines, expected
    assert any(line.startswith("max connections = ") for line in lines)
    assert any(line.startswith("timeout = ") for line in lines)
    assert not any(line.startswith(("uid", "gid", "hosts allow")) for line in lines)
    assert "comment = " in text

    allowed = render_exposure(lab.config(hosts_allow=["10.0.0.0/8", "192.168.1.5"]), lab.facts)["rsyncd.conf"]
    assert "hosts allow = 10.0.0.0/8 192.168.1.5" in allowed.splitlines()
    assert "pid file" not in allowed


def test_only_the_configured_repos_are_published(lab, tmp_path):
    other = make_repo(tmp_path / "other", name="other")
    facts = BinhostFacts(lab.facts.pkgdir, lab.pkgdir, lab.facts.repos + (RepoFacts("other", "/x", other),))
    every = render_exposure(lab.config(), facts)["rsyncd.conf"]
    assert "[lab]" in every and "[other]" in every
    cfg = load_section("binhost", {"repos": ["other"], "serve": {"listen_address": LOOPBACK}})
    only = render_exposure(cfg, facts)["rsyncd.conf"]
    assert "[other]" in only and "[lab]" not in only
    with pytest.raises(ConfigError, match=r"binhost\.repos: .*'nope'"):
        render_exposure(load_section("binhost", {"repos": ["nope"]}), facts)


def test_web_snippets_alias_pkgdir_at_url_path(lab):
    # nginx and Apache are not installed on CI, so `nginx -t` / `apachectl -t` are not run:
    # these checks are on the rendered text only.
    files = render_exposure(lab.config(url_path="/gentoo/binpkgs/"), lab.facts)
    nginx, apache = files["nginx-binhost.conf"], files["apache-binhost.conf"]
    assert "INSIDE a server { } block" in nginx
    assert "location /gentoo/binpkgs/ {" in nginx
    assert f'alias "{lab.pkgdir}/";' in nginx
    assert "autoindex on;" in nginx
    assert "location ~ /\\. {" in nginx and "deny all;" in nginx
    assert f'Alias "/gentoo/binpkgs" "{lab.pkgdir}"' in apache
    assert f'<Directory "{lab.pkgdir}">' in apache
    assert "Require all granted" in apache
    assert "    Options Indexes\n" in apache and "FollowSymLinks" not in apache


def test_a_path_with_spaces_is_quoted_and_percent_escaped_for_rsync(lab, tmp_path):
    spaced = tmp_path / "my binhost" / "50% off"
    facts = BinhostFacts("/var/cache/binpkgs", spaced / "binpkgs", (RepoFacts("lab", "/r", spaced / "repo"),))
    files = render_exposure(lab.config(), facts)
    assert f'alias "{spaced}/binpkgs/";' in files["nginx-binhost.conf"]
    assert f'Alias "/binpkgs" "{spaced}/binpkgs"' in files["apache-binhost.conf"]
    assert f"path = {str(spaced).replace('%', '%%')}/repo" in files["rsyncd.conf"].splitlines()


@pytest.mark.parametrize("serve, key", [
    ({"listen_address": "127.0.0.1\nuid = root"}, "binhost.serve.listen_address"),
    ({"hosts_allow": ["10.0.0.0/8 *"]}, r"binhost.serve.hosts_allow\[0\]"),
    ({"url_path": "/bin pkgs"}, "binhost.serve.url_path"),
    ({"url_path": "/binpkgs/../etc"}, "binhost.serve.url_path"),
    ({"url_path": '/a";'}, "binhost.serve.url_path"),
    ({"rsync_port": 0}, "binhost.serve.rsync_port"),
])
def test_unsafe_serve_settings_are_refused_by_key(lab, serve, key):
    with pytest.raises(ConfigError, match=key):
        render_exposure(lab.config(**serve), lab.facts)


@pytest.mark.parametrize("pkgdir, repo_path, needle", [
    ('/srv/bin"pkgs', "/srv/repo", "PKGDIR"),
    ("/srv/$host/binpkgs", "/srv/repo", "PKGDIR"),
    ("/srv/binpkgs", "/srv/repo\n[evil]", "binhost.repos: repository 'lab'"),
    ("/srv/binpkgs", "relative/repo", "binhost.repos: repository 'lab'"),
    ("/srv/binpkgs", "/srv/repo\\", "binhost.repos: repository 'lab'"),
])
def test_paths_that_a_format_cannot_carry_are_refused(lab, pkgdir, repo_path, needle):
    facts = BinhostFacts("/var/cache/binpkgs", Path(pkgdir), (RepoFacts("lab", "/r", Path(repo_path)),))
    with pytest.raises(ConfigError) as info:
        render_exposure(lab.config(), facts)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_write_rendered_only_writes_changes_and_keeps_the_previous_version_as_a_dot_file(tmp_path):
    """``.<name>.previous``, not ``<name>.orig``: Portage reads every file of a repos.conf/ directory but dot
    files, so an ``.orig`` beside a rendered client config would be read too, after ours, and win."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "rsyncd.conf").write_text("# written by hand\n")
    local = LocalTarget()
    assert write_rendered({"rsyncd.conf": "v1\n", "nginx-binhost.conf": "n1\n"}, out, local) == [
        "rsyncd.conf", "nginx-binhost.conf"]
    assert (out / "rsyncd.conf").read_text() == "v1\n"
    assert (out / ".rsyncd.conf.previous").read_text() == "# written by hand\n"
    assert not (out / ".nginx-binhost.conf.previous").exists()

    assert write_rendered({"rsyncd.conf": "v1\n", "nginx-binhost.conf": "n1\n"}, out, local) == []

    assert write_rendered({"rsyncd.conf": "v2\n", "nginx-binhost.conf": "n1\n"}, out, local) == ["rsyncd.conf"]
    assert (out / "rsyncd.conf").read_text() == "v2\n"
    assert (out / ".rsyncd.conf.previous").read_text() == "v1\n"
    assert sorted(p.name for p in out.iterdir()) == [".rsyncd.conf.previous", "nginx-binhost.conf", "rsyncd.conf"]

    lines = []
    assert write_rendered({"rsyncd.conf": "v3\n"}, out, LocalTarget(dry=True, echo=lines.append)) == ["rsyncd.conf"]
    assert lines[-2:] == ["-v2", "+v3"] and (out / "rsyncd.conf").read_text() == "v2\n"


# --- the real daemons ------------------------------------------------------------------------

def test_rsync_daemon_serves_the_tree_without_excluded_dirs(lab, tmp_path):
    with serving(lab.config(), lab.facts, tmp_path / "work", rsync_port=free_port(), http_port=0) as server:
        daemon = server.rsync_pid()
        listing = subprocess.run(["rsync", "--list-only", f"rsync://{LOOPBACK}:{server.rsync_port}/"],
                                 capture_output=True, text=True, timeout=30)
        assert listing.returncode == 0, listing.stderr
        assert listing.stdout.split()[0] == "lab"

        dest = tmp_path / "pulled"
        pulled = subprocess.run(["rsync", "-a", server.rsync_url("lab") + "/", f"{dest}/"],
                                capture_output=True, text=True, timeout=30)
        assert pulled.returncode == 0, pulled.stderr

        direct = subprocess.run(["rsync", "--list-only", server.rsync_url("lab") + "/distfiles/big.tar.xz"],
                                capture_output=True, text=True, timeout=30)
        assert (direct.returncode, direct.stdout) == (23, ""), direct
        assert 'change_dir "/distfiles" (in lab) failed: No such file or directory' in direct.stderr, "excluded"

    expected = {path: data for path, data in tree(lab.repo).items()
                if not path.startswith(("distfiles/", "packages/"))}
    assert tree(dest) == expected
    assert "metadata/timestamp.chk" in expected
    assert not (dest / "distfiles").exists() and not (dest / "packages").exists()
    assert_daemon_gone(daemon)


def test_http_serves_pkgdir_and_nothing_else(lab, tmp_path, capfd):
    with serving(lab.config(), lab.facts, tmp_path / "work", rsync_port=free_port(), http_port=0) as server:
        assert server.http_url == f"http://{LOOPBACK}:{server.http_port}/binpkgs"
        with urllib.request.urlopen(f"{server.http_url}/Packages", timeout=5) as response:
            assert response.read() == (lab.pkgdir / "Packages").read_bytes()
        with urllib.request.urlopen(f"{server.http_url}/{BINPKG}", timeout=5) as response:
            assert response.read() == (lab.pkgdir / BINPKG).read_bytes()
        assert status(server.http_port, f"/binpkgs/{BINPKG}", "HEAD")[0] == 200

        port = server.http_port
        for path in ("/", "/Packages", "/binpkgsX/Packages", "/binpkgs/../secret.txt",
                     "/binpkgs/%2e%2e/secret.txt", "/binpkgs/..%2fsecret.txt", "/binpkgs/escape",
                     "/binpkgs/.hidden"):
            code, body = status(port, path)
            assert code == 404, path
            assert b"outside PKGDIR" not in body
        assert status(port, "/binpkgs/Packages", "POST")[0] == 501
        with pytest.raises(urllib.error.HTTPError) as climbed:
            urllib.request.urlopen(f"http://{LOOPBACK}:{port}/../../etc/passwd", timeout=5)
        with climbed.value:
            assert (climbed.value.code, climbed.value.url) == (404, f"http://{LOOPBACK}:{port}/../../etc/passwd")
            assert b"root:" not in climbed.value.read()
        requests = server.http_requests
        daemon = server.rsync_pid()

    assert requests == 13  # every request above, 404s and the 501 included
    assert "GET /binpkgs/Packages" in (tmp_path / "work" / "http.log").read_text()
    assert capfd.readouterr().err == ""
    assert_daemon_gone(daemon)


def test_after_the_block_both_ports_refuse_and_rsync_is_gone(lab, tmp_path, tag):
    rsync_port = free_port()
    with pytest.raises(RuntimeError, match="boom"):
        with serving(lab.config(), lab.facts, tmp_path / "work", rsync_port=rsync_port, http_port=0) as server:
            pid, http_port = server.rsync_pid(), server.http_port
            assert pid in tagged(tag) and group_members(pid), "the daemon runs, in a process group of its own"
            raise RuntimeError("boom")
    assert refused(rsync_port) and refused(http_port)
    assert_daemon_gone(pid)
    no_tagged_left(tag, "after the block")


def test_a_taken_rsync_port_is_one_line_naming_it_and_leaves_nothing_running(lab, tmp_path, tag):
    http_port = free_port()
    with socket.socket() as squatter:
        squatter.bind((LOOPBACK, 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        with pytest.raises(OrchestratorError) as info:
            with serving(lab.config(), lab.facts, tmp_path / "work", rsync_port=taken, http_port=http_port):
                pytest.fail("serving started on a taken port")
    message = str(info.value)
    assert message.startswith(f"rsync --daemon on port {taken} exited 10: "), message
    assert "Address already in use" in message and "\n" not in message
    assert "does not answer" not in message, "rsync's own exit is the reason, not a start-up deadline"
    no_tagged_left(tag, "a failed start")
    assert refused(http_port)


def test_a_taken_http_port_is_named_and_rsync_is_not_left_running(lab, tmp_path, tag):
    rsync_port = free_port()
    with socket.socket() as squatter:
        squatter.bind((LOOPBACK, 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        with pytest.raises(OrchestratorError) as info:
            with serving(lab.config(), lab.facts, tmp_path / "work", rsync_port=rsync_port, http_port=taken):
                pytest.fail("serving started on a taken port")
    assert str(info.value) == f"HTTP server on 127.0.0.1:{taken}: Address already in use"
    no_tagged_left(tag, "a failed start")
    assert refused(rsync_port)


# --- inv binhost.serve: stopping, at any moment -----------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
SERVING = "serving; stop with Ctrl-C or SIGTERM"
STARTUP_STOPPED = ("error: stopped by {} while starting; rsync and the HTTP server were stopped, "
                   "nothing is left running")
SERVE_CHILD = """
import json, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from orchestrator.binhost.facts import BinhostFacts
from orchestrator.binhost.serve import serve_forever
from orchestrator.config import load_section
from orchestrator.job import execute
spec = json.loads(Path(sys.argv[1]).read_text())
cfg = load_section("binhost", spec["binhost"])
facts = BinhostFacts.load(Path(spec["facts"]))
config = {{"orchestrator": spec["orchestrator"], "run": {{"dry": False}}}}
sys.exit(execute(config, "binhost-serve", lambda run: serve_forever(run, cfg, facts, Path(spec["work"]))))
"""


def session_children() -> list[int]:
    """Our children that lead a session of their own: the daemon ``serving`` starts (found by pid, not name;
    right after the fork its command line may not be readable yet)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split() if entry.name.isdigit() else []
        except OSError:
            continue
        if fields and fields[0] not in ("Z", "X") and int(fields[1]) == os.getpid() \
                and int(fields[3]) == int(entry.name):
            found.append(int(entry.name))
    return found


def greets(port: int) -> bool:
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        return sock.recv(8) == b"@RSYNCD:"


class ServeProcess:
    """The ``inv binhost.serve`` job in a child process (signals go to it, never to pytest), run by
    ``daemons.running``; its rsync daemon is found by the child's own tag."""

    def __init__(self, lab: Lab, base: Path, rsync_port: int, http_port: int, tag: str):
        self.work = base / "serve-work"
        self.log = base / "serve.log"
        self.tag = tag
        facts = base / "facts.json"
        lab.facts.save(facts)
        spec = base / "serve.json"
        spec.write_text(json.dumps({
            "binhost": {"serve": {"listen_address": LOOPBACK, "rsync_port": rsync_port, "http_port": http_port}},
            "facts": str(facts), "work": str(self.work),
            "orchestrator": {"state_dir": str(base / "state"), "progress": "plain"}}))
        self.argv = [sys.executable, "-c", SERVE_CHILD.format(root=str(ROOT)), str(spec)]
        self.env = {**os.environ, TAG: tag}
        self.proc = None

    @property
    def output(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def serving(self) -> bool:
        return SERVING in self.output

    def daemons(self) -> list[int]:
        """Processes carrying this child's tag but the child itself: its rsync daemon (from the fork on)."""
        return sorted(pid for pid in tagged(self.tag) if pid != self.proc.pid)

    def wait_for(self, condition, what: str, poll: float = 0.05) -> None:
        """Until ``condition()`` is true once (judged on that value: the daemon seen a moment ago may be
        between fork and exec when asked again), or the child ended first."""
        seen = []

        def met() -> bool:
            if condition():
                seen.append(True)
            return bool(seen) or self.proc.poll() is not None

        wait_until(met, f"inv binhost.serve: {what}", poll=poll)
        assert seen, f"inv binhost.serve exited {self.proc.returncode} before {what}: {self.output}"

    def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        return finish(self.proc, f"inv binhost.serve after {sig.name}")

    def rsync_pid(self) -> int:
        return int((self.work / "rsyncd.pid").read_text().split()[0])


@pytest.fixture
def serve_process(lab, tmp_path, tag):
    """``serve_process(rsync_port, http_port)`` starts a child; on every path it is stopped by its process
    group, and nothing carrying its tag (its rsync daemon) may outlive the test."""
    children: list[ServeProcess] = []
    with ExitStack() as stack:
        def start(rsync_port: int, http_port: int) -> ServeProcess:
            child = ServeProcess(lab, tmp_path / f"child{len(children)}", rsync_port, http_port,
                                 f"{tag}-child{len(children)}")
            child.proc = stack.enter_context(running(child.argv, what="inv binhost.serve", ready=lambda: True,
                                                     log=child.log, env=child.env))
            children.append(child)
            return child

        yield start
    for child in children:
        no_tagged_left(child.tag, f"the rsync daemon of {child.work}")


def test_serve_forever_stops_cleanly_on_sigterm_and_counts_requests(serve_process, lab):
    rsync_port, http_port = free_port(), free_port()
    child = serve_process(rsync_port, http_port)
    child.wait_for(child.serving, "serving")
    daemon = child.rsync_pid()
    assert daemon in child.daemons()
    assert greets(rsync_port)
    with urllib.request.urlopen(f"http://{LOOPBACK}:{http_port}/binpkgs/Packages", timeout=10) as response:
        fetched = response.read()

    code = child.stop(signal.SIGTERM)

    assert fetched == (lab.pkgdir / "Packages").read_bytes()
    assert code == 0, child.output
    assert child.output[:4] == [f"rsync: rsync://{LOOPBACK}:{rsync_port}/lab",
                                f"http: http://{LOOPBACK}:{http_port}/binpkgs", SERVING, "served 1 HTTP requests"]
    assert child.output[4].startswith("binhost-serve: OK in "), child.output
    assert_daemon_gone(daemon)
    assert refused(rsync_port) and refused(http_port)


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt, as under a terminal: a shell that starts pytest in the background
    ignores SIGINT for it, and a Ctrl-C the test raises would be lost (the job would serve for ever)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.timeout(120)  # a lost signal leaves the job serving: fail well before the suite's 300 s
@pytest.mark.parametrize("point, sig, name", [
    ("rsync-spawned", signal.SIGTERM, "SIGTERM"),  # between starting rsync and registering its stop
    ("rsync-spawned", signal.SIGINT, "Ctrl-C"),
    ("rsync-started", signal.SIGTERM, "SIGTERM"),
    ("rsync-ready", signal.SIGHUP, "SIGHUP"),
    ("http-started", signal.SIGTERM, "SIGTERM"),
    ("ready", signal.SIGTERM, "SIGTERM"),
])
def test_serve_interrupted_at_any_moment_of_start_up_stops_what_started(lab, site, tmp_path, monkeypatch, tag,
                                                                        ctrl_c_raises, point, sig, name):
    """The signal is raised by the job itself at a named moment, while its handlers are in place."""
    rsync_port, http_port = free_port(), free_port()
    work = tmp_path / "serve-work"
    seen: dict[str, list[int]] = {}

    def reached(where: str) -> None:
        seen[where] = session_children()
        if where == point:
            signal.raise_signal(sig)

    monkeypatch.setattr(serve_module, "_reached", reached)
    cfg = lab.config(rsync_port=rsync_port, http_port=http_port)
    code, out = site.run("binhost-serve", lambda run: serve_forever(run, cfg, lab.facts, work))

    assert point in seen and len(seen[point]) == 1, seen
    (daemon,) = seen[point]
    try:
        lines = out.splitlines()
        assert code == 130, out
        assert lines[0].startswith("binhost-serve: FAILED in ") and lines[1].startswith("  report: "), out
        assert lines[2:] == [STARTUP_STOPPED.format(name)], out
        assert_daemon_gone(daemon)
        no_tagged_left(tag, f"a {name} at {point}")
        assert refused(rsync_port) and refused(http_port)
    finally:
        if alive(daemon):
            os.killpg(daemon, signal.SIGKILL)


def test_serve_sigterm_as_soon_as_rsync_appears_leaves_no_daemon(serve_process):
    """A real asynchronous signal from outside, the moment the daemon exists: the start-up is cut anywhere."""
    for _round in range(3):
        rsync_port, http_port = free_port(), free_port()
        child = serve_process(rsync_port, http_port)
        child.wait_for(child.daemons, "rsync --daemon is forked", poll=0.002)
        daemons = child.daemons()
        code = child.stop(signal.SIGTERM)
        if SERVING in child.output:  # the start won the race: a normal stop
            assert code == 0 and "served 0 HTTP requests" in child.output, child.output
        else:
            assert code == 130, child.output
            assert STARTUP_STOPPED.format("SIGTERM") in child.output
            assert not any(line.startswith(("rsync:", "http:", "served")) for line in child.output), child.output
        for pid in daemons:
            assert not alive(pid), f"rsync --daemon (pid {pid}) survived"
        no_tagged_left(child.tag, "a SIGTERM during start-up")
        assert refused(rsync_port) and refused(http_port)


def test_serve_killed_with_kill_9_takes_its_daemon_along_and_the_next_start_works(serve_process, lab):
    rsync_port, http_port = free_port(), free_port()
    child = serve_process(rsync_port, http_port)
    child.wait_for(child.serving, "serving")
    daemon = child.rsync_pid()
    assert greets(rsync_port)

    assert child.stop(signal.SIGKILL) == -signal.SIGKILL
    wait_gone(daemon, "rsync --daemon after kill -9 of its parent")
    assert (child.work / "rsyncd.pid").exists(), "the killed daemon left its pid file"

    with serving(lab.config(), lab.facts, child.work, rsync_port=rsync_port, http_port=http_port) as server:
        assert greets(rsync_port)
        again = server.rsync_pid()
        assert again != daemon
    assert_daemon_gone(again)
