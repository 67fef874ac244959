"""``logs`` and ``guard.images[].syslog`` settings: defaults, one-line refusals naming the key (exit 2), and the
rendered snippet checked by ``rsyslogd -N1`` (no database needed here)."""

from __future__ import annotations

import io
import stat

import pytest

from orchestrator.config import load_section
from orchestrator.errors import ConfigError
from orchestrator.job import execute
from orchestrator.logs import render as lr
from orchestrator.logs import syslog_files
from orchestrator.logs.passwords import password_for
from orchestrator.logs.query import Filters, select_sql, since_condition
from orchestrator.security.secrets import Secret

pytestmark = pytest.mark.timeout(120)


def image(name="web", **syslog):
    settings = {"enabled": True, "server": "10.0.0.5", **syslog}
    return load_section("guard", {"images": [{"name": name, "syslog": settings}]}).images[0]


def test_defaults():
    cfg = image("web.eu-1").syslog
    assert cfg.db_user("web.eu-1") == "syslog_web_eu_1"
    assert (cfg.port, cfg.queue_dir, cfg.queue_max_disk, cfg.queue_batch) == (3306, "/var/spool/rsyslog", 1024**3, 1)
    logs = load_section("logs", {})
    assert (logs.database, logs.host, logs.user_host, logs.admin_user) == ("Syslog", "", "%", "root")


@pytest.mark.parametrize("section, settings, key, why", [
    ("syslog", {"server": 'db"; pwd="x'}, "syslog.server", "double quote"),
    ("syslog", {"server": "db\nmodule(load=\"omprog\")"}, "syslog.server", "newline"),
    ("syslog", {"user": "sys`id`"}, "syslog.user", "backtick"),
    ("syslog", {"user": "a'b"}, "syslog.user", "quote"),
    ("syslog", {"password_file": "/etc/pw file"}, "syslog.password_file", "not an absolute path"),
    ("syslog", {"password_file": "/etc/$(id)"}, "syslog.password_file", "'$'"),
    ("syslog", {"queue_dir": "spool"}, "syslog.queue_dir", "not an absolute path"),
    ("syslog", {"queue_max_disk": "10K"}, "syslog.queue_max_disk", "less than 1M"),
    ("syslog", {"queue_batch": 0}, "syslog.queue_batch", "at least 1"),
    ("syslog", {"server": ""}, "syslog.server", "required"),
    ("syslog", {"severity": "loud"}, "syslog.severity", "not one of"),
    ("logs", {"database": "Sys`log"}, "logs.database", "backtick"),
    ("logs", {"database": "Sys-log"}, "logs.database", "not a database name"),
    ("logs", {"user_host": "10.0.%'"}, "logs.user_host", "quote"),
    ("logs", {"socket": "/run/my sql.sock"}, "logs.socket", "not an absolute path"),
    ("logs", {"host": "nosuch"}, "logs.host", "no host"),
])
def test_bad_values_are_one_line_naming_the_key(tmp_path, section, settings, key, why):
    config = {"orchestrator": {"state_dir": str(tmp_path / "state")}}
    if section == "syslog":
        config["guard"] = {"images": [{"name": "web", "syslog": {"enabled": True, "server": "db", **settings}}]}
        key = f"guard.images[0].{key}"
    else:
        config["logs"] = settings
    out = io.StringIO()
    code = execute(config, "logs", lambda run: None, out=out)
    lines = out.getvalue().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"{key}:") and why in lines[0]
    assert not (tmp_path / "state").exists()  # refused before anything was made


def test_rendered_files_pass_rsyslogd_and_hold_the_password_only_in_the_0600_file(tmp_path):
    cfg = image(queue_batch=4, severity="notice")
    password = password_for(tmp_path / "pw.json", "syslog_web")
    files = lr.render_syslog(cfg, load_section("logs", {}), password)
    snippet, secret = files[lr.SNIPPET], files[cfg.syslog.password_file]
    assert (snippet.mode, snippet.secret) == (0o644, False) and (secret.mode, secret.secret) == (0o600, True)
    assert password.reveal() not in snippet.text and secret.text == password.reveal()  # no newline: rsyslog refuses it
    assert 'pwd=`cat /etc/rsyslog-ommysql.pwd`' in snippet.text and 'queue.dequeueBatchSize="4"' in snippet.text
    assert "$syslogseverity <= 5" in snippet.text
    assert lr.validate_syslog(cfg, files) == ["structure", "rsyslogd -N1"]
    assert stat.S_IMODE((tmp_path / "pw.json").stat().st_mode) == 0o600
    assert password == password_for(tmp_path / "pw.json", "syslog_web")  # kept, not made anew


def test_a_snippet_without_a_queue_is_refused(tmp_path):
    cfg = image()
    files = lr.render_syslog(cfg, load_section("logs", {}), Secret("p" * 32))
    text = files[lr.SNIPPET].text.replace('queue.type="LinkedList"', "")
    with pytest.raises(ConfigError, match=r"lacks queue.type=\"LinkedList\"; without it messages are lost"):
        lr.validate_syslog(cfg, {**files, lr.SNIPPET: lr.RenderedFile(text, 0o644)})


def test_rsyslogd_refusal_is_one_line_without_the_password(tmp_path):
    cfg = image()
    password = Secret("Sekr3t-Sekr3t-Sekr3t")
    files = lr.render_syslog(cfg, load_section("logs", {}), password)
    text = files[lr.SNIPPET].text.replace('db="Syslog"', 'db="Syslog" tempalte="x"')
    with pytest.raises(ConfigError) as refused:
        lr.validate_syslog(cfg, {**files, lr.SNIPPET: lr.RenderedFile(text, 0o644)})
    message = str(refused.value)
    assert "\n" not in message and "tempalte" in message and password.reveal() not in message


def test_disabled_image_gets_no_files():
    cfg = load_section("guard", {"images": [{"name": "web"}]}).images[0]
    assert lr.render_syslog(cfg, load_section("logs", {}), Secret("x" * 32)) == {}


def test_syslog_files_for_a_dry_run_saves_no_password(tmp_path):
    class Run:
        dry = True
        general = load_section("orchestrator", {"state_dir": str(tmp_path)})

        def section(self, name):
            return load_section(name, {})

    assert set(syslog_files(Run(), image())) == {lr.SNIPPET, "/etc/rsyslog-ommysql.pwd"}
    assert not (tmp_path / "logs").exists()


def test_query_values_are_hex_literals_only():
    logs = load_section("logs", {})
    sql = select_sql(logs, Filters(host="web1", grep="it's \"x\"; DROP TABLE SystemEvents; --", limit=5))
    assert "DROP" not in sql and "it's" not in sql and "LIMIT 5" in sql
    assert since_condition("2h") == "ReceivedAt >= NOW() - INTERVAL 7200 SECOND"
    assert since_condition("2026-11-27T10:00") == "ReceivedAt >= '2026-11-27 10:00:00'"
    for bad, flag in (("yesterday'", "--since"),):
        with pytest.raises(ConfigError, match=flag):
            since_condition(bad)
    with pytest.raises(ConfigError, match="--limit"):
        select_sql(logs, Filters(limit=0))
