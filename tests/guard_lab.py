"""One guard image, rendered for real (guard-render's ``render_image``) into a scratch directory, for
tests that run the daemons on it in a network namespace: the files are the ones a host would get."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import load_section
from orchestrator.config.guard import GuardImage
from orchestrator.security import render
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
