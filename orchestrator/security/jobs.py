"""``inv guard.render``: every image's guard files rendered, validated, and written as the host's tree.

``guard.output_dir/<image>/`` holds the files as they go on the host
(``etc/knockd.conf``, ``var/lib/iptables/rules-save``, audit's ``etc/audit/rules.d/*``, rsyslog's snippet
and password file, ...), with their modes; the
directory is 0700 since some files hold secrets. A new tree replaces the old one
whole (a file the image no longer gets does not linger). Under ``--dry``
everything is rendered and validated (validation changes nothing on this box: it
works in throwaway namespaces and scratch copies) but nothing is written, not
even new secrets; the summary names each file and its mode, never its content.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..config.guard import GuardConfig, GuardImage
from ..errors import ConfigError
from ..job import JobRun
from ..run.files import atomic_write
from ..logs import syslog_files
from .audit_rules import render_audit
from .audit_validate import validate_audit
from .render import RenderedFile, render_image
from .secrets import load_or_create
from .validate import validate_image


def output_root(run: JobRun) -> Path:
    guard: GuardConfig = run.section("guard")
    return guard.output_dir or run.general.state_dir / "guard" / "rendered"


def render_images(run: JobRun, image_name: str | None = None) -> None:
    """Render and validate every image (or ``image_name``), then write each tree; one summary line per image."""
    guard: GuardConfig = run.section("guard")
    if not guard.images:
        raise ConfigError("guard.images: no images configured")
    images = [guard.image(image_name)] if image_name else list(guard.images)
    for image in images:
        render_one(run, image, f"guard.images[{guard.index(image.name)}]")
    run.report.summary["images"] = len(images)
    run.report.summary["output"] = str(output_root(run))


def render_one(run: JobRun, image: GuardImage, key: str) -> dict[str, RenderedFile]:
    secrets = load_or_create(run, image)
    for warning in secrets.warnings:
        run.report.warnings.append(warning)
    files = render_image(image, secrets)
    passed = validate_image(image, secrets, files, key=key)
    audit = render_audit(image)
    if audit:
        validate_audit(image, audit, key)
        passed.append("audit")
    syslog = syslog_files(run, image, key)
    passed += ["syslog"] if syslog else []
    files = {**files, **audit, **syslog}
    target = output_root(run) / image.name
    if run.dry:
        for path, rendered in sorted(files.items()):
            run.echo(f"would write {target}{path} (mode {rendered.mode:04o}, {len(rendered.text)} bytes)")
    else:
        write_tree(target, files)
    run.echo(f"{image.name}: {len(files)} files, guard {image.guard}, firewall {image.firewall.backend}, "
             f"validated: {', '.join(passed)}" + ("" if run.dry else f" -> {target}"))
    run.report.summary[f"image {image.name}"] = (
        f"{len(files)} files ({image.guard}, {image.firewall.backend}), {len(passed)} checks passed")
    run.report.summary.setdefault("files", {})[image.name] = {p: f"{f.mode:04o}" for p, f in sorted(files.items())}
    return files


def write_tree(target: Path, files: dict[str, RenderedFile]) -> None:
    """Write ``files`` under a fresh ``<target>.new``, then swap it in for ``target`` (old tree removed)."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(target.parent, 0o700)
    fresh, old = target.with_name(target.name + ".new"), target.with_name(target.name + ".old")
    for leftover in (fresh, old):  # a run killed mid-swap left one of these behind
        shutil.rmtree(leftover, ignore_errors=True)
    fresh.mkdir(mode=0o700)
    for path, rendered in files.items():
        dest = fresh / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dest, rendered.text, mode=rendered.mode)
    if target.exists():
        os.replace(target, old)
    os.replace(fresh, target)
    shutil.rmtree(old, ignore_errors=True)


__all__ = ["output_root", "render_images", "render_one", "write_tree"]
