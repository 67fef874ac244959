"""Configuration through invoke's own system, validated into typed objects with one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.config import BackupConfig, Cidr, Port, Size, _coerce, defaults, load_section
from orchestrator.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("raw, message", [
    ({"compresion": {}}, "backup.compresion: unknown setting (did you mean compression?)"),
    ({"chunk_size": "lots"}, "backup.chunk_size: expected a size like 32M or 1G, got 'lots'"),
    ({"keep_local_sets": "seven"}, "backup.keep_local_sets: expected an integer, got 'seven'"),
    ({"keep_local_sets": -1}, "backup.keep_local_sets: must not be negative, got -1"),
    ({"directories": "/etc"}, "backup.directories: expected a list, got str"),
    ({"directories": ["/etc", 3]}, "backup.directories[1]: expected a string, got int 3"),
    ({"compression": {"codec": "gzip"}}, "backup.compression.codec: 'gzip' is not one of 'xz', 'zstd'"),
    ({"one_file_system": "maybe"}, "backup.one_file_system: expected true or false, got 'maybe'"),
    ({"hooks": [{"argv": ["true"]}]}, "backup.hooks[0].name: required setting is missing"),
    ({"store": ["directory"]}, "backup.store: expected a mapping of settings, got list"),
    ({"compression": {"level": 42}}, "backup.compression.level: must be 0-9 for xz, got 42"),
    ({"compression": {"codec": "zstd", "level": 0}}, "backup.compression.level: must be 1-19 for zstd, got 0"),
    ({"compression": {"codec": "zstd", "level": "20"}}, "backup.compression.level: must be 1-19 for zstd, got 20"),
    ({"compression": {"workers": 5000}}, "backup.compression.workers: must be at most 1024, got 5000"),
    ({"queue_depth": -2}, "backup.queue_depth: must not be negative, got -2"),
    ({"store": {"upload_workers": 0}}, "backup.store.upload_workers: must be at least 1, got 0"),
    ({"store": {"retrieval_days": "0"}}, "backup.store.retrieval_days: must be at least 1, got 0"),
    ({"min_free_space": -1}, "backup.min_free_space: must not be negative, got -1"),
    ({"chunk_size": "512K"}, "backup.chunk_size: 524288 bytes is below the 1M minimum"),
    ({"directories": []}, "backup.directories: no directories to back up"),
    ({"directories": ["/etc", "var/log"]}, "backup.directories[1]: 'var/log' is not an absolute path"),
    ({"hooks": [{"name": "dump", "argv": []}]}, "backup.hooks[0].argv: empty command for hook 'dump'"),
    ({"hooks": [{"name": "dump", "argv": ["true"], "timeout": 0}]},
     "backup.hooks[0].timeout: must be at least 1, got 0"),
])
def test_bad_settings_are_one_line_errors_naming_the_key(raw, message):
    with pytest.raises(ConfigError) as err:
        load_section("backup", raw)
    assert str(err.value) == message
    assert "\n" not in str(err.value)


def test_levels_at_the_edges_of_each_codec_are_accepted():
    for codec, level in (("xz", 0), ("xz", 9), ("zstd", 1), ("zstd", 19)):
        assert load_section("backup", {"compression": {"codec": codec, "level": level}}).compression.level == level


def test_ports_and_networks():
    assert _coerce(Port, "8873", "k") == 8873 and type(_coerce(Port, 65535, "k")) is int, "sockets refuse subclasses"
    for bad in (0, 65536, -1):
        with pytest.raises(ConfigError) as err:
            _coerce(Port, bad, "binhost.serve.http_port")
        assert str(err.value) == f"binhost.serve.http_port: {bad} is not a TCP port (1-65535)"
    with pytest.raises(ConfigError, match=r"^k: expected an integer, got 'http'$"):
        _coerce(Port, "http", "k")
    assert Cidr.parse("10.0.0.0/16", "k") == "10.0.0.0/16"
    assert Cidr.parse("10.1.2.3", "k") == "10.1.2.3/32" and Cidr.parse("fd00::/8", "k").network.version == 6
    with pytest.raises(ConfigError) as err:
        Cidr.parse("10.0.0.1/16", "security.allow[0]")
    assert str(err.value) == ("security.allow[0]: expected a network like 10.0.0.0/16, got '10.0.0.1/16' "
                              "(10.0.0.1/16 has host bits set)")
    with pytest.raises(ConfigError, match=r"^k: expected a network like 10.0.0.0/16, got 'vpc'"):
        Cidr.parse("vpc", "k")


def test_sizes_and_defaults():
    assert Size.parse("32M", "k") == 32 * 1024**2
    assert Size.parse("1.5GiB", "k") == int(1.5 * 1024**3)
    assert Size.parse(4096, "k") == 4096
    cfg = load_section("backup", {})
    assert isinstance(cfg, BackupConfig)
    assert cfg.directories == ["/etc"] and cfg.keep_local_sets == 7
    assert cfg.compression.level == 9 and cfg.compression.extreme, "the seed's xz -9 -e"
    assert cfg.compression.effective_workers() == (os.cpu_count() or 1), "one codec per core"
    assert cfg.chunk_size == 16 * 1024**2
    assert load_section("backup", defaults()["backup"]) == cfg, "registered defaults validate to the same"


INV = Path(sys.executable).with_name("inv")  # the venv's own `inv`, as the README runs it


def inv(args, cwd, env=None):
    """``inv -r <repo> ARGS`` from ``cwd``, with no INVOKE_* variable but the test's own."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    return subprocess.run([str(INV), "-r", str(ROOT), *args], cwd=cwd, capture_output=True, text=True,
                          env={**clean, **(env or {})})


def test_inv_list_shows_the_verbs(tmp_path):
    out = inv(["--list"], tmp_path).stdout
    assert "backup" in out and "restore" in out


def write_site(tmp_path, extra="") -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "f").write_text("hello")
    site = tmp_path / "site.yaml"
    site.write_text(
        f"orchestrator: {{state_dir: {tmp_path}/state, progress: plain}}\n"
        f"backup:\n  host: clihost\n  directories: [{data}]\n  staging_dir: {tmp_path}/staging\n"
        f"  min_free_space: 0\n  compression: {{level: 1, extreme: false}}\n"
        f"  store: {{path: {tmp_path}/store}}\n{extra}"
    )
    return site


def guarded(tmp_path) -> dict[str, str]:
    """Variables that keep a run whose site file is not read inside tmp_path (they lose to -f)."""
    return {"INVOKE_ORCHESTRATOR_STATE_DIR": f"{tmp_path}/state", "INVOKE_BACKUP_STAGING_DIR": f"{tmp_path}/staging",
            "INVOKE_BACKUP_STORE_PATH": f"{tmp_path}/store"}


def nothing_ran(tmp_path) -> bool:
    return not any((tmp_path / name).exists() for name in ("state", "staging", "store"))


def test_inv_backup_with_site_file_then_restore_list(tmp_path):
    write_site(tmp_path)
    done = inv(["-f", "site.yaml", "backup"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "backup: OK" in done.stdout and done.stderr == ""
    listing = inv(["-f", "site.yaml", "restore", "--list"], tmp_path)
    assert listing.returncode == 0 and "clihost  full" in listing.stdout


SITE_LINES = 8  # lines write_site writes before `extra`


@pytest.mark.parametrize("extra, env, message", [
    ("", {"INVOKE_BACKUP_CHUNK_SIZE": "lots"}, "backup.chunk_size: expected a size like 32M or 1G, got 'lots'"),
    ("", {"INVOKE_BACKUP_CHUNKSIZE": "64M"},
     "INVOKE_BACKUP_CHUNKSIZE: no such setting (did you mean INVOKE_BACKUP_CHUNK_SIZE for backup.chunk_size?)"),
    ("", {"INVOKE_BINHOST_SERVE_HTTP_PROT": "8080"},
     "INVOKE_BINHOST_SERVE_HTTP_PROT: no such setting (did you mean INVOKE_BINHOST_SERVE_HTTP_PORT for "
     "binhost.serve.http_port?)"),
    ("", {"INVOKE_BACKUP_DIRECTORIES": "/etc"},
     "INVOKE_BACKUP_DIRECTORIES: backup.directories is a list; set it in a config file"),
    ("bakup:\n  chunk_size: 64M\n", {}, "bakup: unknown section (did you mean backup?)"),
    ("  chunk_size: 16M: 32M\n", {}, f"site.yaml:{SITE_LINES + 1}: mapping values are not allowed here"),
    ("  exclude: [/tmp\n  keep_local_sets: 3\n", {},
     f"site.yaml:{SITE_LINES + 2}: expected ',' or ']', but got ':'"),
    ("  retension: 3\n", {}, "backup.retension: unknown setting (did you mean remote_retention?)"),
    ("  remote_retention: 3\n", {}, "site.yaml: backup.remote_retention: expected a mapping of settings, got int 3"),
    ("binhost:\n  serve: {http_port: 0}\n", {}, "binhost.serve.http_port: 0 is not a TCP port (1-65535)"),
    ("", {"INVOKE_FLEET_PARALEL": "4"},
     "INVOKE_FLEET_PARALEL: no such setting (did you mean INVOKE_FLEET_PARALLEL for fleet.parallel?)"),
    ("", {"INVOKE_FLEET_PARALLEL": "0"}, "fleet.parallel: must be at least 1, got 0"),
    ("fleet:\n  hosts: [{name: web1, host: 10.0.0.1, root: srv/img}]\n", {},
     "fleet.hosts[0].root: must be an absolute path, got 'srv/img'"),
    ("fleet:\n  hosts: [{name: web1, host: 10.0.0.1}]\nbinhost:\n  clients: [{host: web1}, {host: web2}]\n", {},
     "binhost.clients[1].host: no host 'web2' in fleet.hosts (known: web1)"),
])
def test_a_bad_site_file_or_variable_is_one_line_on_stderr_exit_2_and_nothing_runs(tmp_path, extra, env, message):
    write_site(tmp_path, extra)
    done = inv(["-f", "site.yaml", "backup"], tmp_path, env=env)
    assert (done.returncode, done.stderr, done.stdout) == (2, message + "\n", "")
    assert nothing_ran(tmp_path)


def test_an_out_of_range_compression_level_is_refused_before_xz_can_misread_it(tmp_path):
    """xz reads -42e as -2e; the level is refused for the codec it is given to."""
    site = write_site(tmp_path)
    site.write_text(site.read_text().replace("level: 1,", "level: 42,"))
    done = inv(["-f", "site.yaml", "backup"], tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "backup.compression.level: must be 0-9 for xz, got 42\n"
    assert nothing_ran(tmp_path)
    site.write_text(site.read_text().replace("level: 42,", "codec: zstd, level: 42,"))
    done = inv(["-f", "site.yaml", "backup"], tmp_path)
    assert (done.returncode, done.stderr) == (2, "backup.compression.level: must be 1-19 for zstd, got 42\n")
    assert nothing_ran(tmp_path)


def test_a_missing_site_file_is_refused_not_ignored(tmp_path):
    """invoke itself runs on with invoke.yaml alone (a real backup of /etc, exit 0)."""
    done = inv(["-f", "missing.yaml", "backup"], tmp_path, env=guarded(tmp_path))
    assert (done.returncode, done.stderr, done.stdout) == (2, "missing.yaml: config file not found\n", "")
    assert nothing_ran(tmp_path)
    done = inv(["backup"], tmp_path, env={**guarded(tmp_path), "INVOKE_RUNTIME_CONFIG": f"{tmp_path}/gone.yaml"})
    assert (done.returncode, done.stderr) == (2, f"{tmp_path}/gone.yaml: config file not found\n")
    assert nothing_ran(tmp_path)


def test_a_syntax_error_in_the_project_invoke_yaml_names_its_line(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "tasks.py").write_text((ROOT / "tasks.py").read_text())
    (project / "invoke.yaml").write_text("orchestrator:\n  state_dir: /nowhere\n\tprogress: plain\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    for args in (["backup"], ["--list"]):
        done = subprocess.run([str(INV), *args], cwd=project, capture_output=True, text=True,
                              env={**clean, **guarded(tmp_path)})
        assert (done.returncode, done.stdout) == (2, "")
        assert done.stderr == f"{project}/invoke.yaml:3: found character '\\t' that cannot start any token\n"
    assert nothing_ran(tmp_path)


def test_priority_is_site_file_over_variables_over_invoke_yaml(tmp_path):
    """What invoke really does (Config.merge): defaults, invoke.yaml, INVOKE_*, then the -f file."""
    site = write_site(tmp_path)
    site.write_text(site.read_text().replace("level: 1,", "level: 42,"))
    done = inv(["-f", "site.yaml", "backup"], tmp_path, env={"INVOKE_BACKUP_COMPRESSION_LEVEL": "1"})
    assert (done.returncode, done.stderr) == (2, "backup.compression.level: must be 0-9 for xz, got 42\n"), \
        "the site file beats the variable"
    site.write_text(site.read_text().replace(f"state_dir: {tmp_path}/state, ", "").replace("level: 42,", "level: 1,"))
    done = inv(["-f", "site.yaml", "restore", "--list"], tmp_path,
               env={"INVOKE_ORCHESTRATOR_STATE_DIR": f"{tmp_path}/from-env"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "from-env/reports/restore-list-latest.json").exists(), "the variable beats invoke.yaml"


def test_missing_directory_fails_the_run_with_exit_2_on_stderr(tmp_path):
    """The machine-dependent checks (preflight) fail a run that started: summary, error line, report."""
    site = write_site(tmp_path, extra="")
    text = site.read_text().replace("directories: [", f"directories: [{tmp_path}/nope, ")
    site.write_text(text)
    done = inv(["-f", "site.yaml", "backup"], tmp_path)
    assert done.returncode == 2
    assert done.stderr == f"error: backup.directories[0]: {tmp_path}/nope does not exist\n"
    assert done.stdout.startswith("backup: FAILED in ")
    assert not (tmp_path / "staging").exists() and not (tmp_path / "store").exists()


def test_inv_dry_prints_commands(tmp_path):
    write_site(tmp_path)
    done = inv(["--dry", "-f", "site.yaml", "backup"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[dry-run] tar --create" in done.stdout
    assert not (tmp_path / "store").exists()


def test_strict_config_reads_json_and_variables_strictly(tmp_path, monkeypatch):
    from invoke.config import Config
    from invoke.exceptions import Exit

    from orchestrator.config import StrictConfig, defaults

    bad = tmp_path / "site.json"
    bad.write_text('{"backup":\n  {"chunk_size": "1M"\n   "host": "x"}}\n')
    config = StrictConfig(runtime_path=str(bad), lazy=True)
    with pytest.raises(Exit) as caught:
        config.load_runtime()
    assert (caught.value.code, caught.value.message) == (2, f"{bad}:3: Expecting ',' delimiter")

    (tmp_path / "invoke.yaml").write_text("backup:\n  compression: {extreme: true}\n")
    monkeypatch.setenv("INVOKE_BACKUP_COMPRESSION_EXTREME", "false")
    extreme = {}
    for cls in (Config, StrictConfig):
        config = cls(project_location=str(tmp_path), lazy=True)
        config.load_collection(defaults())
        config.load_project()
        config.load_shell_env()
        extreme[cls.__name__] = load_section("backup", config["backup"]).compression.extreme
    assert extreme == {"Config": True, "StrictConfig": False}, \
        "invoke alone casts 'false' to True for a bool from a lower level"


def test_example_site_config_is_valid():
    import yaml

    raw = yaml.safe_load((ROOT / "examples" / "site.yaml").read_text())
    cfg = load_section("backup", raw["backup"])
    assert cfg.directories == ["/root", "/sbin", "/usr", "/var", "/opt", "/lib32", "/lib64", "/etc", "/bin", "/boot"]
    assert cfg.keep_local_sets == 7
    binhost = load_section("binhost", raw["binhost"])
    assert [c.mode for c in binhost.clients] == ["direct", "tunnel", "tarball"]
    fleet = load_section("fleet", raw["fleet"])
    binhost.check_hosts(fleet.names)
    assert [host.name for host in fleet.hosts if "web" in host.groups] == ["web1", "web2"]
    assert binhost.serve.web_group == "apache"


@pytest.mark.parametrize("store, message", [
    ({"type": "s3"}, "backup.store.bucket: required when backup.store.type is s3"),
    ({"type": "s3", "bucket": "Not a bucket!"}, "backup.store.bucket: 'Not a bucket!' is not a valid S3 bucket name"),
    ({"type": "s3", "bucket": "backups-b", "part_size": "1M"},
     "backup.store.part_size: S3 parts are at least 5M, got 1048576"),
    ({"type": "s3", "bucket": "backups-b", "retrieval_tier": "Expedited"},
     "backup.store.retrieval_tier: DEEP_ARCHIVE has no Expedited retrievals (Standard or Bulk)"),
    ({"type": "glacier", "vault": "bad vault!"}, "backup.store.vault: 'bad vault!' is not a valid Glacier vault name"),
    ({"type": "glacier", "part_size": "3M"}, "backup.store.part_size: 3145728 is not a power of two MiB (1M .. 4G)"),
    ({"type": "glacier", "part_size": "8G"}, "backup.store.part_size: 8589934592 is not a power of two MiB (1M .. 4G)"),
])
def test_store_settings_that_only_work_together(store, message):
    with pytest.raises(ConfigError) as err:
        load_section("backup", {"store": store})
    assert str(err.value) == message


def test_a_section_class_checks_itself_under_the_key_it_is_given():
    from orchestrator.config import StoreConfig, check_store

    bad = StoreConfig(type="s3")
    with pytest.raises(ConfigError, match=r"^backup\.store\.bucket: required"):
        bad.check("backup.store")
    with pytest.raises(ConfigError, match=r"^elsewhere\.bucket: required when elsewhere\.type is s3$"):
        bad.check("elsewhere")
    with pytest.raises(ConfigError, match=r"^backup\.store\.bucket: required"):
        check_store(bad)


@pytest.mark.parametrize("raw, message", [
    ({"clients": [{"mode": "direct"}]}, "binhost.clients[0].host: required setting is missing"),
    ({"clients": [{"host": "h", "mode": "ftp"}]},
     "binhost.clients[0].mode: 'ftp' is not one of 'direct', 'tunnel', 'tarball'"),
    ({"clients": [{"host": "a"}, {"host": "a"}]}, "binhost.clients[1].host: 'a' is listed twice"),
    ({"clients": [{"host": "../../etc"}]},
     "binhost.clients[0].host: '../../etc' is not the name of a fleet.hosts entry (letters, digits and . _ -)"),
    ({"clients": [{"host": "h", "env": ["PATH=/bin"]}]},
     "binhost.clients[0].env: expected a mapping, got list"),
    ({"clients": [{"name": "a", "host": "h"}]}, "binhost.clients[0].name: unknown setting"),
    ({"clients": [{"host": "h", "port": 22}]}, "binhost.clients[0].port: unknown setting"),
    ({"serve": {"rsync_port": 0}}, "binhost.serve.rsync_port: 0 is not a TCP port (1-65535)"),
    ({"serve": {"http_port": "70000"}}, "binhost.serve.http_port: 70000 is not a TCP port (1-65535)"),
    ({"clients": [{"host": "h", "tunnel_http_port": 65536}]},
     "binhost.clients[0].tunnel_http_port: 65536 is not a TCP port (1-65535)"),
    ({"serve": {"url_path": "binpkgs"}}, "binhost.serve.url_path: must start with /, got 'binpkgs'"),
    ({"signing": {"key": "ABCD", "gpg_home": "/k", "verify_home": "/k/"}},
     "binhost.signing.verify_home: must not be the signing keyring (gpg_home); it is made readable by everyone"),
    ({"quickpkg_jobs": -1}, "binhost.quickpkg_jobs: must not be negative, got -1"),
    ({"quickpkg_jobs": 2000}, "binhost.quickpkg_jobs: must be at most 1024, got 2000"),
    ({"timeout": 0}, "binhost.timeout: must be at least 1, got 0"),
])
def test_bad_binhost_settings_are_one_line(raw, message):
    with pytest.raises(ConfigError) as caught:
        load_section("binhost", raw)
    assert str(caught.value) == message
