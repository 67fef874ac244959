"""Configuration through invoke's own system, validated into typed objects with one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.config import BackupConfig, Size, defaults, load_section
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
])
def test_bad_settings_are_one_line_errors_naming_the_key(raw, message):
    with pytest.raises(ConfigError) as err:
        load_section("backup", raw)
    assert str(err.value) == message
    assert "\n" not in str(err.value)


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


def inv(args, cwd=ROOT, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, **kw)


def test_inv_list_shows_the_verbs():
    out = inv(["--list"]).stdout
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


def test_inv_backup_with_site_file_then_restore_list(tmp_path):
    site = write_site(tmp_path)
    done = inv(["-f", str(site), "backup"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "backup: OK" in done.stdout
    listing = inv(["-f", str(site), "restore", "--list"])
    assert listing.returncode == 0 and "clihost  full" in listing.stdout


def test_invoke_env_variable_overrides_a_setting(tmp_path):
    site = write_site(tmp_path)
    done = inv(["-f", str(site), "backup"], env={"INVOKE_BACKUP_CHUNK_SIZE": "lots"})
    assert done.returncode == 2
    assert "backup.chunk_size: expected a size like 32M or 1G, got 'lots'" in done.stdout


def test_missing_directory_fails_before_any_work_with_exit_2(tmp_path):
    site = write_site(tmp_path, extra="")
    text = site.read_text().replace("directories: [", f"directories: [{tmp_path}/nope, ")
    site.write_text(text)
    done = inv(["-f", str(site), "backup"])
    assert done.returncode == 2
    assert f"backup.directories[0]: {tmp_path}/nope does not exist" in done.stdout
    assert not (tmp_path / "staging").exists() and not (tmp_path / "store").exists()


def test_unknown_key_in_site_file_is_refused(tmp_path):
    site = write_site(tmp_path, extra="  retension: 3\n")
    done = inv(["-f", str(site), "backup"])
    assert done.returncode == 2 and "backup.retension: unknown setting" in done.stdout


def test_inv_dry_prints_commands(tmp_path):
    site = write_site(tmp_path)
    done = inv(["--dry", "-f", str(site), "backup"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[dry-run] tar --create" in done.stdout
    assert not (tmp_path / "store").exists()


def test_example_site_config_is_valid():
    from orchestrator.binhost.jobs import check_binhost

    import yaml

    raw = yaml.safe_load((ROOT / "examples" / "site.yaml").read_text())
    cfg = load_section("backup", raw["backup"])
    assert cfg.directories == ["/root", "/sbin", "/usr", "/var", "/opt", "/lib32", "/lib64", "/etc", "/bin", "/boot"]
    assert cfg.keep_local_sets == 7
    binhost = load_section("binhost", raw["binhost"])
    check_binhost(binhost)
    assert [c.mode for c in binhost.clients] == ["direct", "tunnel", "tarball"]
    assert binhost.serve.web_group == "apache"


@pytest.mark.parametrize("store, message", [
    ({"type": "s3"}, "backup.store.bucket: required when backup.store.type is s3"),
    ({"type": "s3", "bucket": "b", "part_size": "1M"}, "backup.store.part_size: S3 parts are at least 5M"),
    ({"type": "s3", "bucket": "b", "retrieval_tier": "Expedited"},
     "backup.store.retrieval_tier: DEEP_ARCHIVE has no Expedited retrievals"),
    ({"type": "glacier", "vault": "bad vault!"}, "backup.store.vault: 'bad vault!' is not a valid Glacier vault name"),
    ({"type": "glacier", "part_size": "3M"}, "backup.store.part_size: 3145728 is not a power of two MiB"),
    ({"type": "glacier", "part_size": "8G"}, "backup.store.part_size: 8589934592 is not a power of two MiB"),
])
def test_store_settings_that_only_work_together(store, message):
    from orchestrator.backup.stores import open_store

    with pytest.raises(ConfigError) as err:
        open_store(load_section("backup", {"store": store}).store)
    assert str(err.value).startswith(message)


@pytest.mark.parametrize("raw, message", [
    ({"clients": [{"name": "a"}]}, "binhost.clients[0].host: required setting is missing"),
    ({"clients": [{"name": "a", "host": "h", "mode": "ftp"}]},
     "binhost.clients[0].mode: 'ftp' is not one of 'direct', 'tunnel', 'tarball'"),
    ({"clients": [{"name": "a", "host": "h"}, {"name": "a", "host": "i"}]}, "binhost.clients[1].name: 'a' is used twice"),
    ({"clients": [{"name": "a", "host": "h", "env": ["PATH=/bin"]}]}, "binhost.clients[0].env: expected a mapping"),
    ({"serve": {"rsync_port": 0}}, "binhost.serve.rsync_port: 0 is not a TCP port"),
    ({"serve": {"url_path": "binpkgs"}}, "binhost.serve.url_path: must start with /"),
    ({"signing": {"key": "ABCD", "gpg_home": "/k", "verify_home": "/k/"}},
     "binhost.signing.verify_home: must not be the signing keyring"),
    ({"quickpkg_jobs": -1}, "binhost.quickpkg_jobs: must not be negative"),
])
def test_bad_binhost_settings_are_one_line(raw, message):
    from orchestrator.binhost.jobs import check_binhost

    with pytest.raises(ConfigError) as caught:
        check_binhost(load_section("binhost", raw))
    assert message in str(caught.value) and "\n" not in str(caught.value)
