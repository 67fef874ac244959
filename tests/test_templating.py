"""orchestrator.templating: the one jinja2 environment every template in templates/ goes through, and the
value checks every rendered file gets (a control character is refused with one line naming its setting)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.portage_conf import RepoEntry
from orchestrator.templating import TEMPLATES, environment, render

REPO = Path(__file__).resolve().parents[1]
BINREPOS = dict(path="/etc/portage/binrepos.conf/x.conf", client="web1", binhost_uri="http://h/binpkgs")


def test_only_templating_imports_jinja2():
    importers = []
    for path in (REPO / "orchestrator").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(name.split(".")[0] == "jinja2" for name in names):
                importers.append(path.relative_to(REPO).as_posix())
    assert importers == ["orchestrator/templating.py"]


def test_every_template_compiles_in_the_one_environment():
    names = sorted(p.relative_to(TEMPLATES).as_posix() for p in TEMPLATES.rglob("*.j2"))  # guard/ is a folder
    assert names and sorted(environment().list_templates()) == names
    for name in names:
        environment().get_template(name)


def test_block_tags_leave_no_blank_lines_and_the_final_newline_stays():
    text = render("binrepos.conf.j2", {**BINREPOS, "verify_signature": True})
    assert text.endswith("verify-signature = true\n")
    assert "fetches them from here.\n[gentoo-ec2-orchestrator]\n" in text, "the if/endif lines left nothing"


def test_nothing_is_html_escaped():
    text = render("apache-binhost.conf.j2", {"url_path": "/b&<>", "pkgdir": "/srv/a&b"})
    assert 'Alias "/b&<>" "/srv/a&b"' in text


def test_a_missing_value_is_one_line_naming_the_template():
    with pytest.raises(OrchestratorError) as info:
        render("binrepos.conf.j2", BINREPOS)
    assert str(info.value) == f"{TEMPLATES / 'binrepos.conf.j2'}: 'verify_signature' is undefined"


def test_the_ini_filter_escapes_percent_for_portages_interpolation():
    text = render("binrepos.conf.j2", {**BINREPOS, "binhost_uri": "http://h/100%25", "verify_signature": False})
    assert "sync-uri = http://h/100%%25\n" in text


@pytest.mark.parametrize("bad, what", [("web1\n[evil]", "a newline"), ("web1\r", "a carriage return"),
                                       ("web\x001", "a NUL"), ("web\x1b[31m", "a control character ('\\x1b')")])
def test_a_value_with_a_control_character_is_refused_naming_its_setting(bad, what):
    with pytest.raises(ConfigError) as info:
        render("binrepos.conf.j2", {**BINREPOS, "client": bad, "verify_signature": True},
               settings={"client": "binhost.clients[0].host"})
    assert str(info.value) == f"binhost.clients[0].host: {bad!r} contains {what}; refused in a generated file"


def test_values_inside_lists_and_dataclasses_are_checked_too():
    entries = [RepoEntry("gentoo", "/var/db/repos/gentoo", "rsync://h/gentoo"),
               RepoEntry("lab", "/var/db/repos/lab\x00", "rsync://h/lab")]
    with pytest.raises(ConfigError) as info:
        render("repos.conf.j2", dict(path="/p", client="c", main_repo="gentoo", repos=entries),
               settings={"repos": "binhost.repos"})
    assert str(info.value).startswith("binhost.repos[1].location: '/var/db/repos/lab\\x00' contains a NUL")


def test_an_unnamed_value_is_named_as_itself():
    with pytest.raises(ConfigError, match=r"^path: '/a\\nb' contains a newline"):
        render("binrepos.conf.j2", {**BINREPOS, "path": "/a\nb", "verify_signature": True})
