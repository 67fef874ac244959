"""``inv build-kernel``: each image's kernel built in the build system, checked for EC2, published.

Per image, in one build session (the binhost's chroot or prefix):

1. the sources' facts (``kernel-info``) and the fingerprint: a set already built from the
   same sources, config and settings makes the image a no-op that says so;
2. the sources installed and selected (``kernel-sources``: overlay, emerge, eselect kernel);
3. the config (``kernel-config``: base or full config, fragments, olddefconfig), and the EC2
   check of it, which stops an enforced image before hours of compiling;
4. the build (``kernel-build``: make, genkernel, or the distribution kernel emerge built)
   and the initramfs (``kernel-initramfs``: dracut, never host-only), and the EC2 check of
   what the initramfs holds;
5. the artifacts, published whole (``artifacts.publish``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..config import BinhostConfig, ImageConfig, KernelConfig
from ..errors import ConfigError, OrchestratorError
from ..job import JobRun
from . import artifacts, ec2check
from .inputs import Inputs, fingerprint, read_inputs, unmet
from .session import KernelSession, open_build_session

INPUT_DIR = "input"


@dataclass
class Plan:
    """One image's paths inside the build system, and what it is built from."""

    image: ImageConfig
    key: str  # kernel.images[i], for messages
    inputs: Inputs
    work: str  # <work_dir>/<image>, as the scripts see it
    keep_builds: int = 3  # kernel.keep_builds
    build: str = ""  # <work>/build/<the tree's path>: one build directory per source tree

    def inside(self, *parts: str) -> str:
        return "/".join([self.work, *parts])


def build_kernels(run: JobRun, image_name: str | None = None) -> None:
    kcfg: KernelConfig = run.section("kernel")
    bcfg: BinhostConfig = run.section("binhost")
    chosen = _chosen(kcfg, image_name)
    inputs = {image.name: read_inputs(kcfg, image, i) for i, image in chosen}
    out = output_root(run, kcfg)
    with open_build_session(run, bcfg, log_dir=out / "kernels" / "logs", timeout=kcfg.timeout) as session:
        for i, image in chosen:
            plan = Plan(image, f"kernel.images[{i}]", inputs[image.name],
                        session.inside(f"{kcfg.work_dir.rstrip('/')}/{image.name}"), kcfg.keep_builds)
            session.log_dir = out / "kernels" / "logs" / image.name
            _build_image(run, session, plan, artifacts.image_dir(out, image.name))


def output_root(run: JobRun, kcfg: KernelConfig) -> Path:
    return kcfg.output_dir or run.general.state_dir


def _chosen(kcfg: KernelConfig, image_name: str | None) -> list[tuple[int, ImageConfig]]:
    if not kcfg.images:
        raise ConfigError("kernel.images: no images configured (see README: inv build-kernel)")
    if image_name is None:
        return list(enumerate(kcfg.images))
    image = kcfg.image(image_name)
    return [(kcfg.images.index(image), image)]


def _build_image(run: JobRun, session: KernelSession, plan: Plan, directory: Path) -> None:
    _remove_leftovers(run, session, plan, directory)
    sources = _sources_facts(session, plan)
    built = artifacts.find_built(directory, fingerprint(plan.image, sources, plan.inputs))
    if built:
        _noop(run, plan, *built)
        return
    _copy_inputs(run, session, plan)
    srcdir, sources = _install_sources(run, session, plan, sources)
    release, config_text, listing = _compile(run, session, plan, srcdir)
    findings = _findings(plan, config_text, listing)
    _enforce(run, plan, findings)
    _publish(run, session, plan, directory, release, fingerprint(plan.image, sources, plan.inputs), sources,
             findings)


def _remove_leftovers(run: JobRun, session: KernelSession, plan: Plan, directory: Path) -> None:
    if not session.dry and directory.is_dir():
        for name in artifacts.remove_leftovers(directory):
            run.progress.say(f"{plan.image.name}: removed {directory / name}, left by a killed run")


def _compile(run: JobRun, session: KernelSession, plan: Plan, srcdir: str) -> tuple[str, str | None, str | None]:
    """Config (checked at once), build, initramfs: the release, the final config, the initramfs listing."""
    plan.build = plan.inside("build", _tree_slug(srcdir))
    config_text = _configure(run, session, plan, srcdir)
    _enforce(run, plan, _config_findings(plan, config_text))
    release = _step(run, session, "kernel-build", *_build_args(plan, srcdir))["release"]
    if plan.image.builder == "portage" and not session.dry:
        config_text = _read_inside(session, plan.inside("stage", "boot", "config"))
    return release, config_text, _initramfs(run, session, plan, release, config_text)


def _sources_facts(session: KernelSession, plan: Plan) -> dict:
    """What the fingerprint says about the sources: a path's version, or the package version emerge would install."""
    source = plan.image.source
    if source.kind == "path":
        srcdir = session.inside(source.path)
        info = session.probe("kernel-info", "--path", srcdir)
        if not info["exists"]:
            raise ConfigError(f"{plan.key}.source.path: {source.path} has no kernel Makefile in the build system")
        return {"kind": "path", "srcdir": srcdir, "version": info["version"]}
    info = session.probe("kernel-info", "--package", source.package)
    return {"kind": "package", "package": source.package, "cpv": info["best_visible"] or info["installed"]}


def _install_sources(run: JobRun, session: KernelSession, plan: Plan, sources: dict) -> tuple[str, dict]:
    """The tree to build, and the sources' facts with the version emerge really installed."""
    image, source = plan.image, plan.image.source
    if source.kind == "path":
        return session.inside(source.path), sources
    args = ["--package", source.package]
    args += ["--repository", source.repository] if source.repository else []
    if image.builder == "portage":
        args.append("--config-d")
        for name in image.fragments:
            args += ["--fragment", plan.inside(INPUT_DIR, name)]
        args.append("--rebuild")
    else:
        args += ["--select"]
    result = _step(run, session, "kernel-sources", *args)
    if result["srcdir"] is None and not session.dry:
        raise OrchestratorError(f"{plan.key}.source.package: {result['cpv'] or source.package} installed no "
                                "/usr/src/linux-* tree")
    srcdir = result["srcdir"] or session.inside(f"/usr/src/linux-<the version {source.package} installs>")
    return srcdir, {**sources, "cpv": result["cpv"] or sources["cpv"]}


def _copy_inputs(run: JobRun, session: KernelSession, plan: Plan) -> None:
    """The image's config files into ``<work>/input/`` in the build system, replacing what was there."""
    dest = session.host_path(plan.inside(INPUT_DIR))
    files = plan.inputs.files()
    if session.dry:
        if files:
            run.echo(f"[dry-run] would copy {', '.join(f.name for f in files)} into {dest}")
        return
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for config_file in files:
        (dest / config_file.name).write_text(config_file.text)


def _configure(run: JobRun, session: KernelSession, plan: Plan, srcdir: str) -> str | None:
    """The final .config (None for a distribution kernel, whose config exists only after its build)."""
    image = plan.image
    if image.builder == "portage":
        return None
    args = ["--srcdir", srcdir, "--builddir", plan.build]
    args += ["--config", plan.inside(INPUT_DIR, image.config)] if image.config else ["--base", image.base]
    for name in image.fragments:
        args += ["--fragment", plan.inside(INPUT_DIR, name)]
    result = _step(run, session, "kernel-config", *args)
    if session.dry:
        return None
    final = _read_inside(session, result["config"])
    for line in unmet(plan.inputs.fragments, final):
        run.report.warnings.append(f"{image.name}: {line}")
    return final


def _build_args(plan: Plan, srcdir: str) -> list[str]:
    image = plan.image
    args = ["--builder", image.builder, "--srcdir", srcdir, "--stage", plan.inside("stage")]
    if image.builder != "portage":
        args += ["--builddir", plan.build, "--jobs", str(image.jobs or os.cpu_count() or 1)]
    if image.initramfs == "genkernel":
        args.append("--initramfs")
    return args


def _initramfs(run: JobRun, session: KernelSession, plan: Plan, release: str, config_text: str | None) -> str | None:
    """dracut's initramfs (or genkernel's, already made) and its listing; None when the image has none."""
    image = plan.image
    if image.initramfs == "none":
        return None
    args = ["--stage", plan.inside("stage"), "--release", release]
    if image.initramfs == "genkernel":
        args.append("--list-only")
    else:
        drivers = ec2check.module_drivers(config_text, image.drivers) if config_text is not None \
            else [*ec2check.FORCED_DRIVERS, *image.drivers]
        for driver in drivers:
            args += ["--driver", driver]
    _step(run, session, "kernel-initramfs", *args)
    return None if session.dry else _read_inside(session, plan.inside("stage", "initramfs.list"))


def _config_findings(plan: Plan, config_text: str | None) -> list[ec2check.Finding]:
    if config_text is None:
        return []
    image = plan.image
    return ec2check.check_config(config_text, root_fs=image.root_fs, hypervisors=image.hypervisors,
                                 initramfs=image.initramfs != "none")


def _findings(plan: Plan, config_text: str | None, listing: str | None) -> list[ec2check.Finding]:
    if config_text is None:
        return []
    image = plan.image
    return _config_findings(plan, config_text) + ec2check.check_initramfs(
        config_text, listing, root_fs=image.root_fs, hypervisors=image.hypervisors)


def _enforce(run: JobRun, plan: Plan, findings: list[ec2check.Finding], done: str = "nothing was published") -> None:
    """An enforced image with a fatal finding fails now, one line per missing piece."""
    fatal = [f for f in findings if f.fatal]
    if fatal and plan.image.ec2_check == "enforce":
        run.report.summary[f"{plan.image.name} ec2 check"] = _check_line(plan, findings)
        lines = "\n".join(f"  missing: {f.line()}" for f in fatal)
        raise OrchestratorError(f"EC2 check failed for image {plan.image.name}: {len(fatal)} piece"
                                f"{'s' if len(fatal) > 1 else ''} an EC2 boot cannot do without "
                                f"({done}):\n{lines}")


def _check_line(plan: Plan, findings: list[ec2check.Finding]) -> str:
    fatal = [f.piece.name for f in findings if f.fatal]
    warned = [f.piece.name for f in findings if not f.fatal]
    if fatal:
        how = "" if plan.image.ec2_check == "enforce" else f" (warn only: {plan.key}.ec2_check is warn)"
        return f"FAILED{how}: missing {', '.join(fatal)}" + (f"; warnings: {', '.join(warned)}" if warned else "")
    return "passed" + (f" with warnings: {', '.join(warned)}" if warned else "")


def _publish(run: JobRun, session: KernelSession, plan: Plan, directory: Path, release: str, fp: str,
             sources: dict, findings: list[ec2check.Finding]) -> None:
    image = plan.image
    if session.dry:
        run.echo(f"[dry-run] would publish kernel {release} for {image.name} to {directory}/{release}/")
        return
    for finding in findings:
        if not finding.fatal or image.ec2_check == "warn":
            run.report.warnings.append(f"{image.name}: EC2 check: missing {finding.line()}")
    build = {"image": image.name, "release": release, "fingerprint": fp, "built": artifacts.now_iso(),
             "sources": sources, "builder": image.builder, "initramfs": image.initramfs,
             "config_files": {f.name: f.sha256 for f in plan.inputs.files()},
             "ec2_check": ec2check.summary(findings)}
    stage = session.host_path(plan.inside("stage"))
    final = artifacts.publish(directory, release, stage, build, lambda dest: _pack_modules(run, stage, release, dest))
    _report(run, plan, release, final, findings, f"kernel {release} built: {final}")
    for old in artifacts.prune_sets(directory, plan.keep_builds):
        run.progress.say(f"{image.name}: removed the published set {old} (kernel.keep_builds is {plan.keep_builds})")
    _remove_old_build_dirs(run, session, plan)


def _remove_old_build_dirs(run: JobRun, session: KernelSession, plan: Plan) -> None:
    """Build directories of trees the image no longer builds from (an upgraded package): gigabytes each."""
    builds = session.host_path(plan.inside("build"))
    if not builds.is_dir():
        return
    current = PurePosixPath(plan.build).name
    for old in sorted(builds.iterdir()):
        if old.is_dir() and not old.is_symlink() and old.name != current:
            shutil.rmtree(old)
            run.progress.say(f"{plan.image.name}: removed the build directory of an older tree: {old.name}")


def _pack_modules(run: JobRun, stage: Path, release: str, dest: Path) -> None:
    """``tar --zstd`` of ``lib/modules/<release>`` (an empty directory for a kernel without modules)."""
    (stage / "lib" / "modules" / release).mkdir(parents=True, exist_ok=True)
    run.local().run(["tar", "--zstd", "--create", "--file", str(dest), "--owner=0", "--group=0", "--numeric-owner",
                     "--directory", str(stage), f"lib/modules/{release}"])


def _noop(run: JobRun, plan: Plan, directory: Path, build: dict) -> None:
    """Same fingerprint: nothing is built; the EC2 check runs again on the stored config and listing."""
    release = build["release"]
    run.progress.say(f"{plan.image.name}: nothing to do: kernel {release} for {plan.image.name} is built from "
                     "the same sources and config")
    listing_path = directory / "initramfs.list"
    listing = listing_path.read_text() if listing_path.exists() else None
    findings = _findings(plan, (directory / "config").read_text(), listing)
    _enforce(run, plan, findings, f"{directory} was built while {plan.key}.ec2_check was warn")
    _report(run, plan, release, directory, findings, f"nothing to do: kernel {release} for {plan.image.name} is "
                                                     "built from the same sources and config", noop=True)


def _report(run: JobRun, plan: Plan, release: str, directory: Path, findings, message: str, noop: bool = False):
    name = plan.image.name
    run.report.summary[name] = message
    run.report.summary[f"{name} ec2 check"] = _check_line(plan, findings)
    run.report.summary.setdefault("kernels", {})[name] = {
        "release": release, "directory": str(directory), "noop": noop, "ec2_check": ec2check.summary(findings)}


def _step(run: JobRun, session: KernelSession, name: str, *args: str) -> dict:
    run.progress.say(f"{name}: ...")
    return session.step(name, *args, echo=run.echo)


def _tree_slug(srcdir: str) -> str:
    """One build directory per source tree: kbuild's O= must not switch to another tree."""
    return f"{PurePosixPath(srcdir).name}-{hashlib.sha256(srcdir.encode()).hexdigest()[:8]}"


def _read_inside(session: KernelSession, inside: str) -> str:
    return session.host_path(inside).read_text(errors="replace")
