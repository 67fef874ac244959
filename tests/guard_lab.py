"""One guard image, rendered for real (guard-render's ``render_image``) into a scratch directory, for
tests that run the daemons on it in a network namespace: the files are the ones a host would get."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import sshd as sshd_module
from sshd import SshServer, sshd_config

from orchestrator.config import load_section
from orchestrator.config.guard import GuardImage
from orchestrator.errors import OrchestratorError
from orchestrator.security import render
from orchestrator.security.access import wait_for_banner
from orchestrator.security.render import render_image
from orchestrator.security.secrets import ImageSecrets, load_or_create


@dataclass
class Rendered:
    image: GuardImage
    secrets: ImageSecrets
    secrets_file: Path
    root: Path  # host paths live under it: root / "etc/knockd.conf"

    def path(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")

    @property
    def knockd_conf(self) -> Path:
        return self.path(render.KNOCKD_CONF)


def image_config(tmp: Path, **image) -> GuardImage:
    raw = {"images": [{"name": "web", "hosts": [], **image}], "secrets_file": str(tmp / "secrets.json")}
    return load_section("guard", raw).images[0]


def rendered(tmp: Path, **image) -> Rendered:
    """Render image ``web`` (settings ``image``) under ``tmp/root``; the one-time list stays in that tree."""
    cfg = image_config(tmp, **image)
    secrets_file = tmp / "secrets.json"
    secrets = load_or_create(secrets_file, cfg)
    root = tmp / "root"
    facts = {"one_time_file": str(root / "etc/knockd/one_time_sequences")}
    for host_path, file in render_image(cfg, secrets, backend_facts=facts).items():
        path = Path(host_path) if host_path.startswith(str(root)) else root / host_path.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(file.text)
        path.chmod(file.mode)
    return Rendered(cfg, secrets, secrets_file, root)


def sshd_in(ns, tmp: Path, address: str, port: int = 22) -> SshServer:
    """A real sshd listening on ``address:port`` inside namespace ``ns`` until the namespace goes (the
    ``tests/sshd.py`` config; ready when it greets from inside the namespace)."""
    tmp.mkdir(parents=True, exist_ok=True)
    for name in ("host_ed25519", "client_ed25519"):
        sshd_module._keygen(tmp / name)
    (tmp / "authorized_keys").write_text((tmp / "client_ed25519.pub").read_text())
    config = sshd_config(tmp, port).replace(f"ListenAddress {sshd_module.LOOPBACK}", f"ListenAddress {address}")
    (tmp / "sshd_config").write_text(config)
    host_key = " ".join((tmp / "host_ed25519.pub").read_text().split()[:2])
    shown = address if port == 22 else f"[{address}]:{port}"
    (tmp / "known_hosts").write_text(f"{shown} {host_key}\n")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    log = tmp / "sshd.log"
    argv = [*sshd_module._without_own_bashrc(tmp), sshd_module.SSHD, "-D", "-e", "-f", str(tmp / "sshd_config")]
    ns.running(argv, what=f"sshd on {address}:{port} in {ns.name}", log=log, timeout=10,
               ready=lambda: _greets(ns, address, port))
    return SshServer(address, port, "root", str(tmp / "client_ed25519"), str(tmp / "known_hosts"), str(log))


def _greets(ns, address: str, port: int) -> bool:
    try:
        return ns.call(wait_for_banner, address, port, timeout=0.1).startswith("SSH-")
    except OrchestratorError:
        return False
