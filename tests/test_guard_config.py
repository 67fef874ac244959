"""Section ``guard`` and the guard secrets: one-line errors naming the key, CSPRNG sequences that obey every
rule, a 0600 secrets file that is stable across runs, the one-time list's refill, redaction."""

from __future__ import annotations

import json
import pickle
import stat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.config import check_config, load_section
from orchestrator.config.guard import Knock
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.security.render import RenderedFile, render_image
from orchestrator.security.secrets import (
    KNOCK_HIGH,
    KNOCK_LOW,
    ImageSecrets,
    Secret,
    consume_one_time,
    load_or_create,
)


def image(**settings_) -> object:
    return load_section("guard", {"images": [{"name": "web", **settings_}]}).images[0]


# (settings of images[0], the key the one error line must start with, a word the reason must contain)
BAD = [
    ({"knock": {"open": ["70000", 7001]}}, "guard.images[0].knock.open[0]", "out of range"),
    ({"knock": {"open": ["7000:sctp", 7001]}}, "guard.images[0].knock.open[0]", "not a knock"),
    ({"knock": {"open": ["7000"]}}, "guard.images[0].knock.open", "one knock"),
    ({"knock": {"open": [22, 7001]}}, "guard.images[0].knock.open[0]", "SSH port"),
    ({"ssh_port": 2222, "knock": {"close": [7001, "2222:tcp"]}}, "guard.images[0].knock.close[1]", "SSH port"),
    ({"tcp_ports": [80], "knock": {"open": [7001, 80]}}, "guard.images[0].knock.open[1]", "serves"),
    ({"udp_ports": [53], "knock": {"close": ["53:udp", 7001]}}, "guard.images[0].knock.close[0]", "serves"),
    ({"knock": {"open": [7001, 7002], "close": ["7001:tcp", "7002"]}}, "guard.images[0].knock.close", "same"),
    ({"knock": {"tcpflags": "sin"}}, "guard.images[0].knock.tcpflags", "fin,syn"),
    ({"knock": {"tcpflags": "syn\n[evil]"}}, "guard.images[0].knock.tcpflags", "newline"),
    ({"knock": {"seq_timeout": 0}}, "guard.images[0].knock.seq_timeout", "at least 1"),
    ({"knock": {"one_time_count": 2}}, "guard.images[0].knock.one_time_count", "at least 4"),
    ({"tcp_ports": [0]}, "guard.images[0].tcp_ports[0]", "1-65535"),
    ({"udp_ports": [65536]}, "guard.images[0].udp_ports[0]", "1-65535"),
    ({"tcp_ports": ["http"]}, "guard.images[0].tcp_ports[0]", "integer"),
    ({"tcp_ports": [80, 80]}, "guard.images[0].tcp_ports[1]", "twice"),
    ({"tcp_ports": [22]}, "guard.images[0].tcp_ports[0]", "SSH port"),
    ({"ssh_port": 70000}, "guard.images[0].ssh_port", "1-65535"),
    ({"interface": "eth0\n[sshd]"}, "guard.images[0].interface", "newline"),
    ({"interface": "eth 0"}, "guard.images[0].interface", "interface name"),
    ({"hosts": ["web1\r"]}, "guard.images[0].hosts[0]", "carriage return"),
    ({"hosts": ["web1 web2"]}, "guard.images[0].hosts[0]", "host name or @group"),
    ({"guard": "portknock"}, "guard.images[0].guard", "is not one of"),
    ({"guard": "fwknop", "firewall": {"backend": "nftables"}}, "guard.images[0].firewall.backend", "iptables"),
    ({"firewall": {"backend": "pf"}}, "guard.images[0].firewall.backend", "is not one of"),
    ({"fail2ban": {"bantime": "1h\n[recidive]"}}, "guard.images[0].fail2ban.bantime", "newline"),
    ({"fail2ban": {"bantime": "forever"}}, "guard.images[0].fail2ban.bantime", "duration"),
    ({"fail2ban": {"findtime": "10m\x00"}}, "guard.images[0].fail2ban.findtime", "control character"),
    ({"fail2ban": {"maxretry": 0}}, "guard.images[0].fail2ban.maxretry", "at least 1"),
    ({"fail2ban": {"logpath": "/var/log/[x].log"}}, "guard.images[0].fail2ban.logpath", "'['"),
    ({"fail2ban": {"logpath": "/var/log/a b.log"}}, "guard.images[0].fail2ban.logpath", "absolute path"),
    ({"fail2ban": {"logpath": "var/log/auth.log"}}, "guard.images[0].fail2ban.logpath", "absolute path"),
    ({"fail2ban": {"ignoreip": ["10.0.0.1/8"]}}, "guard.images[0].fail2ban.ignoreip[0]", "host bits"),
    ({"fail2ban": {"ignoreip": ["10.0.0.0/8\n[sshd]"]}}, "guard.images[0].fail2ban.ignoreip[0]", "network"),
    ({"fail2ban": {"destemail": "root@x\nbantime = 1"}}, "guard.images[0].fail2ban.destemail", "newline"),
    ({"fail2ban": {"sender": "%(action_mwl)s@x"}}, "guard.images[0].fail2ban.sender", "mail address"),
    ({"fail2ban": {"mail": "always"}}, "guard.images[0].fail2ban.mail", "is not one of"),
    ({"fail2ban": {"backend": "pyinotify"}}, "guard.images[0].fail2ban.backend", "is not one of"),
    ({"name": "web[1]"}, "guard.images[0].name", "'['"),
    ({"knock": {"bogus": 1}}, "guard.images[0].knock.bogus", "unknown setting"),
]


@pytest.mark.parametrize("settings_, key, why", BAD, ids=[f"{b[1]}:{b[2]}" for b in BAD])
def test_a_bad_value_is_one_line_naming_the_key(settings_, key, why):
    with pytest.raises(ConfigError) as caught:
        image(**settings_)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(key + ":"), message
    assert why in message, message


def test_a_bad_knock_is_refused_without_showing_it():
    with pytest.raises(ConfigError) as caught:
        image(knock={"open": ["61234:sctp", 7001]})
    assert "61234" not in str(caught.value) and "secret" in str(caught.value)


def test_hosts_must_name_fleet_hosts_or_groups():
    fleet = {"hosts": [{"name": "web1", "host": "127.0.0.1", "groups": ["web"]}]}
    good = {"fleet": fleet, "guard": {"images": [{"name": "web", "hosts": ["web1", "@web", "@all"]}]}}
    assert check_config(good)["guard"].images[0].hosts == ["web1", "@web", "@all"]
    for word, what in (("db1", "host"), ("@db", "group")):
        with pytest.raises(ConfigError, match=rf"^guard\.images\[0\]\.hosts\[0\]: no {what} '{word}' in fleet"):
            check_config({"fleet": fleet, "guard": {"images": [{"name": "web", "hosts": [word]}]}})


def test_two_images_with_one_name_are_refused():
    with pytest.raises(ConfigError, match=r"^guard\.images\[1\]\.name: 'web' is used twice"):
        load_section("guard", {"images": [{"name": "web"}, {"name": "web"}]})


# --- generated secrets --------------------------------------------------------------------------------------

ports = st.integers(1, 65535)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tcp=st.lists(ports, max_size=30, unique=True), udp=st.lists(ports, max_size=30, unique=True),
       ssh=st.integers(1, 65535), one_time=st.booleans())
def test_generated_sequences_obey_every_rule(tmp_path_factory, tcp, udp, ssh, one_time):
    tcp = [p for p in tcp if p != ssh]
    cfg = image(ssh_port=ssh, tcp_ports=tcp, udp_ports=udp, knock={"one_time": one_time, "one_time_count": 8})
    got = load_or_create(tmp_path_factory.mktemp("s") / "secrets.json", cfg)
    forbidden = {ssh, *tcp, *udp}
    assert len(got.open) == len(got.close) == 3 and got.open != got.close
    pair = [k.port for k in got.open + got.close]
    assert len(set(pair)) == 6, "open and close share no port and repeat none"
    for seq in [got.open, got.close, *got.one_time]:
        assert len({k.port for k in seq}) == len(seq) == 3
        for knock in seq:
            assert isinstance(knock, Knock) and knock.proto == "tcp"
            assert KNOCK_LOW <= knock.port <= KNOCK_HIGH and knock.port not in forbidden
    assert len(got.one_time) == (8 if one_time else 0)


def test_given_sequences_win_and_the_generated_one_avoids_them(tmp_path):
    cfg = image(knock={"open": [7001, "7002:udp", 7003]})
    got = load_or_create(tmp_path / "s.json", cfg)
    assert got.open == [Knock(7001, "tcp"), Knock(7002, "udp"), Knock(7003, "tcp")]
    assert not {7001, 7002, 7003} & {k.port for k in got.close}
    assert "open" not in json.loads((tmp_path / "s.json").read_text())["images"]["web"], "config's, not stored"


def test_keys_look_like_fwknop_key_gen(tmp_path):
    import base64

    got = load_or_create(tmp_path / "s.json", image(guard="fwknop"))
    assert len(base64.b64decode(got.spa_key.reveal(), validate=True)) == 32
    assert len(base64.b64decode(got.hmac_key.reveal(), validate=True)) == 64
    assert got.spa_key != load_or_create(tmp_path / "t.json", image(guard="fwknop")).spa_key


def test_secrets_file_is_0600_in_a_0700_dir_and_stable_across_runs(tmp_path):
    path = tmp_path / "guard" / "secrets.json"
    cfg = image(knock={"one_time": True, "one_time_count": 8}, guard="knockd")
    first = load_or_create(path, cfg)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    second = load_or_create(path, cfg)
    assert second == first, "the next run gets the same sequences and keys"
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before, "nothing changed, nothing rewritten"


def test_a_secrets_file_others_can_read_is_refused(tmp_path):
    path = tmp_path / "s.json"
    load_or_create(path, image())
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"mode 644 lets others read guard secrets; chmod 600"):
        load_or_create(path, image())


def test_a_stored_sequence_that_collides_with_a_new_served_port_is_replaced_with_a_warning(tmp_path):
    path = tmp_path / "s.json"
    old = load_or_create(path, image())
    assert not old.warnings
    served = old.open[1].port
    new = load_or_create(path, image(tcp_ports=[served]))
    assert served not in {k.port for k in new.open + new.close}
    assert new.close == old.close, "the close sequence was still valid and stays"
    assert len(new.warnings) == 1 and "open sequence is no longer valid" in new.warnings[0]
    assert str(served) not in new.warnings[0]


def test_dry_run_saves_nothing(tmp_path):
    class DryRun:
        dry = True

        def __init__(self, path):
            self.path = path

        def section(self, name):
            return load_section("guard", {"secrets_file": str(self.path)})

    path = tmp_path / "s.json"
    got = load_or_create(DryRun(path), image())
    assert len(got.open) == 3 and not path.exists()


def test_one_time_list_is_refilled_below_a_quarter_and_never_runs_out(tmp_path):
    path = tmp_path / "s.json"
    cfg = image(knock={"one_time": True, "one_time_count": 8})
    start = load_or_create(path, cfg).one_time
    taken = [consume_one_time(path, cfg) for _ in range(6)]
    assert [seq for seq, _ in taken] == start[:6], "handed out in file order"
    assert [left for _, left in taken] == [7, 6, 5, 4, 3, 2]
    kept = load_or_create(path, cfg)
    assert kept.one_time == start[6:] and not kept.warnings, "2 of 8 is a quarter: no refill yet"
    consume_one_time(path, cfg)
    with pytest.raises(OrchestratorError, match="only the last one-time sequence is left"):
        consume_one_time(path, cfg)
    refilled = load_or_create(path, cfg)
    assert len(refilled.one_time) == 8 and refilled.one_time[0] == start[7], "the unused one stays first"
    assert len(refilled.warnings) == 1 and "1 of 8 one-time sequences left; refilled to 8" in refilled.warnings[0]
    text = render_image(cfg, refilled)["/etc/knockd/one_time_sequences"].text
    assert text.splitlines() == [",".join(str(k) for k in seq) for seq in refilled.one_time]


def test_secrets_are_redacted_everywhere_but_reveal(tmp_path):
    got = load_or_create(tmp_path / "s.json", image(guard="fwknop", knock={"one_time": True}))
    key = got.spa_key.reveal()
    shown = [repr(got), str(got), repr(got.spa_key), str(got.hmac_key), f"{got.spa_key}", f"{got.spa_key!r}",
             "%s" % got.spa_key, repr([got.spa_key])]
    ports = {str(k.port) for seq in [got.open, got.close, *got.one_time] for k in seq}
    for text in shown:
        assert key not in text and got.hmac_key.reveal() not in text
        assert not any(port in text for port in ports), text
    with pytest.raises(TypeError):
        pickle.dumps(got.spa_key)
    files = render_image(image(guard="fwknop"), got)
    assert key not in repr(files) and key in files["/etc/fwknop/access.conf"].text


def test_config_repr_hides_given_sequences():
    cfg = image(knock={"open": [61001, 61002, 61003]})
    assert "61001" not in repr(cfg) and "61001" not in str(cfg)


def test_image_secrets_compare_without_warnings():
    a = ImageSecrets([Knock(7001)], [Knock(7002)], [], Secret("k"), Secret("h"), ["x"])
    assert a == ImageSecrets([Knock(7001)], [Knock(7002)], [], Secret("k"), Secret("h"))
    assert RenderedFile("secret text", 0o600).__repr__() == "RenderedFile(<11 chars>, mode=0600)"
