"""The files one image's hosts get: knockd or fwknopd, the default-drop firewall, fail2ban.

Pure: config + secrets in, ``{path on the host: RenderedFile(text, mode)}`` out,
every file from ``templates/guard/`` through the one jinja2 environment
(``orchestrator.templating``). Nothing is written or run here; ``validate``
checks the result, ``jobs`` writes it.

``backend_facts`` (optional) tells what the host has, overriding our defaults:
``iptables``, ``ip6tables``, ``nft`` (absolute paths of the binaries knockd's
commands run; default ``/sbin/...``, which Gentoo has with and without merged /usr)
and ``one_time_file`` (where knockd's one-time list lives).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from ..config.guard import GuardImage, Knock
from ..templating import render
from .secrets import ImageSecrets

KNOCK_CHAIN = "guard-knock"  # iptables chain the SSH port jumps to; knockd adds one ACCEPT per knocker
NFT_TABLE = "guard"
# fwknopd's own chain (FWKNOP_INPUT_ACCESS), declared with its jump here: iptables-restore replaces the whole
# filter table, and the chain and jump fwknopd made at its start would go with it.
SPA_CHAIN = "FWKNOP_INPUT"
SPA_PORT = 62201  # fwknop's default; fwknopd sniffs it with pcap, so no rule opens it
DEFAULT_FACTS = {
    "iptables": "/sbin/iptables",
    "ip6tables": "/sbin/ip6tables",
    "nft": "/sbin/nft",
    "one_time_file": "/etc/knockd/one_time_sequences",
}
LOOPBACK_IGNORE = ["127.0.0.1/8", "::1"]

KNOCKD_CONF = "/etc/knockd.conf"
FWKNOPD_CONF = "/etc/fwknop/fwknopd.conf"
ACCESS_CONF = "/etc/fwknop/access.conf"
# Where Gentoo's iptables, ip6tables and nftables services (OpenRC and systemd alike) load rules at boot.
RULES_V4 = "/var/lib/iptables/rules-save"
RULES_V6 = "/var/lib/ip6tables/rules-save"
NFTABLES_CONF = "/var/lib/nftables/rules-save"
FIREWALL_TOOLS = {RULES_V4: "iptables", RULES_V6: "ip6tables", NFTABLES_CONF: "nft"}  # the tool that loads each
JAIL_LOCAL = "/etc/fail2ban/jail.local"
DIGEST_CRON = "/etc/cron.daily/fail2ban-digest"


class RenderedFile(NamedTuple):
    """A file's whole text and its mode on the host. Its repr hides the text; ``secret``: it holds a knock
    sequence or a key (mode 0600, and no diff of it is ever shown)."""

    text: str
    mode: int
    secret: bool = False

    def __repr__(self) -> str:
        return f"RenderedFile(<{len(self.text)} chars>, mode={self.mode:04o}{', secret' if self.secret else ''})"


def render_image(image_cfg: GuardImage, secrets: ImageSecrets, *,
                 backend_facts: Mapping[str, str] | None = None) -> dict[str, RenderedFile]:
    """Every file the image's hosts get, by absolute path on the host."""
    facts = {**DEFAULT_FACTS, **(backend_facts or {})}
    files: dict[str, RenderedFile] = {}
    if image_cfg.guard == "knockd":
        files.update(render_knockd(image_cfg, secrets, facts))
    elif image_cfg.guard == "fwknop":
        files.update(render_fwknop(image_cfg, secrets))
    files.update(render_firewall(image_cfg))
    files.update(render_fail2ban(image_cfg))
    return files


def knock_text(seq: list[Knock]) -> str:
    """knockd's form of a sequence: ``7000:tcp,8000:udp,9000:tcp``."""
    return ",".join(str(knock) for knock in seq)


def knock_commands(image: GuardImage, facts: Mapping[str, str]) -> dict[str, str]:
    """knockd's start/stop commands (IPv4 and IPv6) that let one knocker's ``%IP%`` reach the SSH port.

    iptables: an ACCEPT in our ``guard-knock`` chain (the SSH port jumps there).
    nftables: an element in the table's ``knock4``/``knock6`` set that also times
    out by itself after ``cmd_timeout``, should knockd die before its stop_command.
    """
    port, timeout = image.ssh_port, image.knock.cmd_timeout
    if image.firewall.backend == "nftables":
        nft = facts["nft"]
        start = f"{nft} add element inet {NFT_TABLE} knock{{v}} {{{{ %IP% timeout {timeout}s }}}}"
        stop = f"{nft} delete element inet {NFT_TABLE} knock{{v}} {{{{ %IP% }}}}"
        commands = {"start4": start.format(v=4), "stop4": stop.format(v=4),
                    "start6": start.format(v=6), "stop6": stop.format(v=6)}
    else:
        rule = f"{KNOCK_CHAIN} -s %IP% -p tcp --dport {port} -j ACCEPT"
        commands = {"start4": f"{facts['iptables']} -I {rule}", "stop4": f"{facts['iptables']} -D {rule}",
                    "start6": f"{facts['ip6tables']} -I {rule}", "stop6": f"{facts['ip6tables']} -D {rule}"}
    if not image.firewall.ipv6:
        commands["start6"] = commands["stop6"] = "/bin/true"  # IPv6 knocks open nothing
    return commands


def render_knockd(image: GuardImage, secrets: ImageSecrets, facts: Mapping[str, str]) -> dict[str, RenderedFile]:
    knock = image.knock
    values = {
        "image": image.name, "interface": image.interface, "one_time": knock.one_time,
        "one_time_file": facts["one_time_file"], "open": knock_text(secrets.open), "close": knock_text(secrets.close),
        "seq_timeout": knock.seq_timeout, "cmd_timeout": knock.cmd_timeout, "tcpflags": knock.tcpflags,
        **knock_commands(image, facts),
    }
    text = render("guard/knockd.conf.j2", values, settings=_settings(image))
    files = {KNOCKD_CONF: RenderedFile(text, 0o600, secret=True)}  # the close sequence at least
    if knock.one_time:
        text = render("guard/one_time_sequences.j2", {"sequences": [knock_text(s) for s in secrets.one_time]})
        files[facts["one_time_file"]] = RenderedFile(text, 0o600, secret=True)
    return files


def render_fwknop(image: GuardImage, secrets: ImageSecrets) -> dict[str, RenderedFile]:
    base = {"image": image.name, "interface": image.interface}
    conf = render("guard/fwknopd.conf.j2", {**base, "spa_port": SPA_PORT, "extra": []}, settings=_settings(image))
    access = render("guard/access.conf.j2", {
        **base, "spa_key": secrets.spa_key.reveal(), "hmac_key": secrets.hmac_key.reveal(),
        "access_timeout": image.knock.cmd_timeout, "ssh_port": image.ssh_port,
    })
    return {FWKNOPD_CONF: RenderedFile(conf, 0o600), ACCESS_CONF: RenderedFile(access, 0o600, secret=True)}


def render_firewall(image: GuardImage) -> dict[str, RenderedFile]:
    if image.firewall.backend == "nftables":
        return {NFTABLES_CONF: RenderedFile(render_nftables(image), 0o600)}
    return {RULES_V4: RenderedFile(render_iptables(image, 4), 0o600),
            RULES_V6: RenderedFile(render_iptables(image, 6), 0o600)}


def render_iptables(image: GuardImage, version: int) -> str:
    """iptables-restore (``version`` 4) or ip6tables-restore (6) text: default DROP, then what is let in."""
    fw = image.firewall
    if version == 4:
        icmp = ["-p icmp --icmp-type fragmentation-needed"] + (["-p icmp --icmp-type echo-request"]
                                                               if fw.allow_ping else [])
    else:
        nd = ["neighbour-solicitation", "neighbour-advertisement", "router-advertisement"]
        icmp = (["-p ipv6-icmp --icmpv6-type packet-too-big"]
                + [f"-p ipv6-icmp --icmpv6-type {t} -m hl --hl-eq 255" for t in nd]
                + (["-p ipv6-icmp --icmpv6-type echo-request"] if fw.allow_ping and fw.ipv6 else []))
    serve = version == 4 or fw.ipv6
    served = [f"-p {proto} --dport {port}" for proto, port in _served(image)] if serve else []
    knock_chain = KNOCK_CHAIN if image.guard == "knockd" and serve else ""
    spa_chain = SPA_CHAIN if image.guard == "fwknop" and version == 4 else ""
    return render("guard/iptables.rules.j2", {
        "image": image.name, "family": f"IPv{version}", "icmp": icmp, "served": served,
        "knock_chain": knock_chain, "spa_chain": spa_chain, "ssh_port": image.ssh_port,
    })


def render_nftables(image: GuardImage) -> str:
    fw = image.firewall
    only4 = "" if fw.ipv6 else "meta nfproto ipv4 "
    icmp = ["icmp type destination-unreachable icmp code frag-needed",
            "icmpv6 type packet-too-big",
            "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } ip6 hoplimit 255"]
    if fw.allow_ping:
        icmp.append("icmp type echo-request")
        if fw.ipv6:
            icmp.append("icmpv6 type echo-request")
    served = []
    for proto in ("tcp", "udp"):
        ports = [str(port) for p, port in _served(image) if p == proto]
        if ports:
            served.append(f"{only4}{proto} dport {{ {', '.join(ports)} }}")
    return render("guard/nftables.conf.j2", {
        "image": image.name, "table": NFT_TABLE, "icmp": icmp, "served": served,
        "knock": image.guard == "knockd", "ssh_port": image.ssh_port,
    })


def render_fail2ban(image: GuardImage) -> dict[str, RenderedFile]:
    f2b = image.fail2ban
    nft = image.firewall.backend == "nftables"
    action = {"none": "action_", "each": "action_mwl", "digest": "action_"}[f2b.mail]
    values = {
        "image": image.name, "bantime": f2b.bantime, "findtime": f2b.findtime, "maxretry": f2b.maxretry,
        "increment": f2b.increment, "ignoreip": [*LOOPBACK_IGNORE, *(str(c) for c in f2b.ignoreip)],
        "banaction": "nftables-multiport" if nft else "iptables-multiport",
        "banaction_allports": "nftables-allports" if nft else "iptables-allports",
        "destemail": f2b.destemail, "sender": f2b.sender, "mail": f2b.mail, "action": action,
        "ssh_port": image.ssh_port, "backend": f2b.backend, "logpath": f2b.logpath, "recidive": f2b.recidive,
    }
    files = {JAIL_LOCAL: RenderedFile(render("guard/jail.local.j2", values, settings=_settings(image)), 0o644)}
    if f2b.mail == "digest":
        files[DIGEST_CRON] = RenderedFile(render("guard/fail2ban-digest.j2", values), 0o755)
    return files


def _served(image: GuardImage) -> list[tuple[str, int]]:
    """(proto, port) open to everyone: the served ports, and the SSH port when nothing guards it."""
    ssh = [("tcp", image.ssh_port)] if image.guard == "none" else []
    return ssh + [("tcp", p) for p in image.tcp_ports] + [("udp", p) for p in image.udp_ports]


def _settings(image: GuardImage) -> dict[str, Any]:
    """Template value -> the setting it came from, for templating's one-line errors."""
    return {name: f"guard image {image.name}: {name}" for name in ("interface", "tcpflags", "logpath")}


__all__ = ["RenderedFile", "knock_commands", "knock_text", "render_image"]
