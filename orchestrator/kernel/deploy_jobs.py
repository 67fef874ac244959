"""The task bodies of ``inv deploy-kernel``, ``inv rollback-kernel`` and ``inv bootcfg``: hosts from ``fleet``, in parallel."""

from __future__ import annotations

from contextlib import contextmanager

from ..errors import ConfigError
from ..fleet.hosts import connect, select_hosts
from ..fleet.runner import run_on_hosts
from ..run import LocalTarget
from . import deploy
from .install import find_set
from .rollback import rollback_host


def _image(run, image: str | None) -> str:
    kcfg = run.section("kernel")
    if image:
        return kcfg.image(image).name
    if len(kcfg.images) != 1:
        names = ", ".join(i.name for i in kcfg.images) or "none configured"
        raise ConfigError(f"--image: name one of kernel.images ({names})")
    return kcfg.images[0].name


def _ec2_access(run) -> deploy.Ec2Access:
    from ..ec2 import ec2_client

    cfg = run.section("ec2")
    settings = cfg.settings()
    return deploy.Ec2Access(lambda region: ec2_client(settings, region=region),
                            snapshot_wait_timeout=cfg.snapshot_wait_timeout, poll_seconds=cfg.poll_seconds)


def deploy_kernels(run, names, *, image=None, version="", reboot=False, no_snapshot=False) -> None:
    """Deploy the chosen set to every named host at once (``fleet.parallel``); exit per ``deploy.summarize``."""
    kcfg = run.section("kernel")
    aset = find_set(kcfg.output_dir or run.general.state_dir, _image(run, image), version)
    hosts = select_hosts(run.section("fleet"), names)
    if not hosts:
        raise ConfigError("HOST: name at least one host (or @group) from fleet.hosts")
    snapshot = kcfg.deploy.snapshot and not no_snapshot
    ec2 = _ec2_access(run) if snapshot or reboot else None
    outcomes: dict[str, deploy.Outcome] = {}

    def job(host, target):
        spec = deploy.HostSpec(host.name, host.root, host.instance_id, host.region)

        @contextmanager
        def reconnect():
            with connect(run, host) as fresh:
                yield fresh

        outcomes[host.name] = deploy.deploy_host(run, target, spec, aset, kcfg.deploy, reboot=reboot,
                                                 snapshot=snapshot, ec2=ec2, reconnect=reconnect,
                                                 before_reboot=lambda t: _for_the_boot(run, host, t))
        return outcomes[host.name].status

    results = run_on_hosts(run, hosts, job, what=f"deploy kernel {aset.release}")
    run.report.summary["kernel"] = aset.release
    deploy.summarize(run, outcomes, results.failed)


def _for_the_boot(run, host, target) -> None:
    """The host's guard image's audit ``-e 2`` file (or its removal), which only this boot may load."""
    from ..security.access import image_of
    from ..security.audit_rules import schedule_next_boot

    image = image_of(run, host)
    if image is not None:
        for line in schedule_next_boot(target, image, root=host.root):
            run.echo(f"{host.name}: {line}")


def rollback_kernel(run, name: str) -> None:
    hosts = select_hosts(run.section("fleet"), [name])
    if len(hosts) != 1:
        raise ConfigError(f"HOST: {name!r} names {len(hosts)} hosts; rollback-kernel takes one")
    staging = run.section("kernel").deploy.staging_dir
    results = run_on_hosts(run, hosts, lambda host, target: rollback_host(run, target, host.root, staging, host.name),
                           what="roll back the kernel")
    results.raise_if_failed("roll back the kernel")
    for result in results.succeeded.values():
        run.report.summary["rollback"] = result
        run.echo(f"{result['host']}: default is {result['default']} again; restored "
                 f"{len(result['restored'])} files; removed {result['kernel_removed'] or 'nothing (running)'}")


def bootcfg(run, host: str | None, root: str | None, to: str) -> None:
    """``--to`` on one host's boot files, or on a local directory (``--root``: an image in a chroot)."""
    from ..bootcfg.apply import apply_bootcfg

    if bool(host) == bool(root):
        raise ConfigError("bootcfg: give either HOST or --root DIR")
    if root:
        changed = apply_bootcfg(run, LocalTarget(dry=run.dry, echo=run.echo), deploy.HostSpec("local", root), to)
    else:
        hosts = select_hosts(run.section("fleet"), [host])
        results = run_on_hosts(run, hosts, lambda h, target: apply_bootcfg(run, target, h, to), what="bootcfg")
        results.raise_if_failed("rewrite the boot config")
        changed = [p for paths in results.succeeded.values() for p in paths]
    run.report.summary["changed"] = changed
    run.echo(("would change: " if run.dry else "changed: ") + (", ".join(changed) or "nothing"))
