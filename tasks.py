"""invoke entry point: ``inv --list`` shows the verbs; the logic lives in ``orchestrator``."""

import sys

from invoke import Collection, task
from invoke.exceptions import Exit

from orchestrator import config
from orchestrator.backup import jobs as backup_jobs
from orchestrator.binhost import jobs as binhost_jobs
from orchestrator.fleet import check as fleet_check_job
from orchestrator.job import execute, run_task
from orchestrator.kernel import ami as kernel_ami
from orchestrator.kernel import build as kernel_build
from orchestrator.kernel import deploy_jobs
from orchestrator.logs import query as logs_query
from orchestrator.logs import setup as logs_setup
from orchestrator.security import access
from orchestrator.security import audit_jobs
from orchestrator.security import harden as guard_harden
from orchestrator.security import jobs as guard_jobs

# invoke reads invoke.yaml, the -f file and INVOKE_* after importing this file: read them strictly
# (a syntax error is "file:line: problem" and exit 2, not a traceback).
config.adopt()


@task
def backup(c):
    """Back up every configured directory: tar | split | xz | gpg -> store, with catalog and retention."""
    run_task(c, "backup", backup_jobs.backup)


@task(
    iterable=["dir"],
    help={
        "list": "list the sets in the catalog and exit",
        "set": "set id to restore (default: the newest complete set)",
        "target": "empty or new directory to restore into",
        "dir": "restore only this backed-up directory (repeatable), e.g. --dir /etc",
        "wait": "poll cold storage until the data is readable, instead of exiting 75 (not ready yet)",
        "tier": "retrieval tier for cold storage: Expedited, Standard or Bulk (default: backup.store.retrieval_tier)",
    },
)
def restore(c, target=None, set=None, dir=None, list=False, wait=False, tier=None):
    """Restore a set and its incremental chain into a directory, verifying every part first.

    Data in Glacier or DEEP_ARCHIVE is requested first: the run exits 75 with an
    estimate until it is readable (rerun then), or polls with --wait.
    """
    if list or not (target or set or dir):
        run_task(c, "restore-list", backup_jobs.list_sets, locked=False)
        return
    run_task(c, "restore", lambda run: backup_jobs.restore(run, target, set, dir or None, wait, tier))


@task(help={
    "set": "set id to drill (default: the newest complete set)",
    "sample": "restore only the directories of N random parts (for cold storage; default: everything)",
    "tier": "retrieval tier for cold storage (default: Bulk with --sample, else backup.store.retrieval_tier)",
    "wait": "poll cold storage until the data is readable, instead of exiting 75 (not ready yet)",
    "seed": "random seed for --sample (to repeat a drill)",
})
def verify(c, set=None, sample=0, tier=None, wait=False, seed=None):
    """Restore drill: restore a set from the store into scratch space and compare every file with the backup's index."""
    run_task(c, "verify", lambda run: backup_jobs.verify(run, set, int(sample), tier, wait,
                                                         int(seed) if seed is not None else None))


@task(help={"force": "also delete sets younger than the storage class's minimum duration (pays the early-deletion charge)"})
def prune(c, force=False):
    """Delete sets from the store by backup.remote_retention (count and age); `inv --dry prune` only lists."""
    run_task(c, "prune", lambda run: backup_jobs.prune(run, force))


@task(help={"wait": "poll cold storage until the manifests are readable, instead of exiting 75"})
def rebuild(c, wait=False):
    """Rebuild the backup catalog from the store alone (every set's manifest), e.g. on a fresh machine."""
    run_task(c, "catalog-rebuild", lambda run: backup_jobs.rebuild(run, wait))


@task
def reconcile(c):
    """Compare the store's inventory (vault job or S3 listing) with the catalog: missing, unknown, mismatched."""
    run_task(c, "catalog-reconcile", backup_jobs.reconcile_store)


@task(name="all", default=True, iterable=["skip"],
      help={"skip": "leave out a stage (repeatable): " + ", ".join(binhost_jobs.STAGES)})
def binhost_all(c, skip=None):
    """Build and publish binaries in the build chroot: sync, world, package, [prune,] index, publish, owner, configs.

    prune runs only with binhost.prune: true (`inv binhost.prune` runs it once).
    """
    unknown = sorted(set(skip or []) - set(binhost_jobs.STAGES))
    run_task(c, "binhost", lambda run: binhost_jobs.build(run, unknown_skips=unknown, skip=skip or ()))


def _stage_task(stage: str, doc: str):
    @task(name=stage)
    def stage_task(c):
        run_task(c, f"binhost-{stage}", lambda run: binhost_jobs.build(run, [stage]))

    stage_task.__doc__ = doc
    return stage_task


@task(name="serve")
def binhost_serve(c):
    """Serve the trees over rsync and PKGDIR over HTTP from this box until Ctrl-C (for sites with no web server)."""
    run_task(c, "binhost-serve", binhost_jobs.serve, locked=False)


@task(name="clients", iterable=["only"], help={
    "only": "update only this instance (repeatable; a name from binhost.clients)",
    "mode": "direct, tunnel or tarball for this run (default: each instance's own binhost.clients[].mode)",
})
def binhost_clients(c, only=None, mode=None):
    """Point instances at the binhost and run emerge --sync and emerge -uDNGK @world on them over SSH."""
    run_task(c, "binhost-clients", lambda run: binhost_jobs.update_clients(run, only or None, mode))


binhost = Collection("binhost")
binhost.add_task(binhost_all)
for _stage, _doc in binhost_jobs.STAGE_DOCS.items():
    binhost.add_task(_stage_task(_stage, _doc))
binhost.add_task(binhost_serve)
binhost.add_task(binhost_clients)

@task(name="build-kernel", help={"image": "build only this image (a name from kernel.images; default: every image)"})
def build_kernel(c, image=None):
    """Build each image's kernel in the build chroot, check it for EC2, publish kernel, initramfs and modules.

    A second build of the same sources, config and settings is a no-op that says so.
    """
    run_task(c, "build-kernel", lambda run: kernel_build.build_kernels(run, image))


@task(name="deploy-kernel", positional=["host"], help={
    "host": "host names or @groups from fleet.hosts, comma-separated (web1,web2 or @web)", "image": "the image (default: the only one)",
    "version": "a release built by build-kernel (default: latest)", "reboot": "reboot, check, then promote",
    "no_snapshot": "skip the EBS snapshot of the root volume", "dry": "print every command, diff and AWS call"})
def deploy_kernel(c, host=None, image=None, version="", reboot=False, no_snapshot=False, dry=False):
    """Install a built kernel on hosts and arm it for one boot; with --reboot, prove it booted and make it the default.

    Exit 0: every host proven on the new kernel; 75: installed and armed, not proven booted; 1: a host failed.
    """
    c.config.run.dry = dry or c.config.run.dry
    run_task(c, "deploy-kernel", lambda run: deploy_jobs.deploy_kernels(
        run, [h for h in (host or "").split(",") if h], image=image, version=version, reboot=reboot, no_snapshot=no_snapshot))


@task(name="rollback-kernel", help={"host": "one host from fleet.hosts", "dry": "print, change nothing"})
def rollback_kernel(c, host, dry=False):
    """Put the previous kernel's boot config back and remove the deployed kernel (unless it is running)."""
    c.config.run.dry = dry or c.config.run.dry
    run_task(c, "rollback-kernel", lambda run: deploy_jobs.rollback_kernel(run, host))


@task(name="bootcfg", help={"host": "one host from fleet.hosts", "root": "a local directory instead (an image)",
                            "to": "uuid, xvd or nvme", "dry": "print the diffs, change nothing"})
def bootcfg(c, host=None, root=None, to="", dry=False):
    """Rewrite device names in fstab and the boot loader config (validated, atomic, previous kept)."""
    c.config.run.dry = dry or c.config.run.dry
    run_task(c, "bootcfg", lambda run: deploy_jobs.bootcfg(run, host, root, to))


@task(auto_shortflags=False, help={
    "name": "the image's name (unique in this account and region)",
    "snapshot": "register from this existing snapshot (snap-...)",
    "host": "snapshot this fleet host's root volume first, then register from it",
    "root_device": "the image's root device name (default: the host's own, else /dev/xvda)",
    "boot_mode": "legacy-bios, uefi or uefi-preferred (default: ec2.boot_mode)",
    "arch": "x86_64, arm64 or i386 (default: the host's own, else x86_64)",
    "ena": "ENA networking (default on; --no-ena for instance types without it)",
    "description": "the image's description",
    "dry": "check everything, print each EC2 call that would change something, make none (same as inv --dry ami)",
})
def ami(c, name, snapshot="", host="", root_device="", boot_mode="", arch="", ena=True, description="", dry=False):
    """Register an EBS-backed HVM image from a snapshot, or from a fleet host's root volume (snapshotted first)."""
    if dry:
        c.config.run.dry = True
    options = kernel_ami.AmiOptions(name, snapshot, host, root_device, boot_mode, arch, ena, description)
    run_task(c, "ami", lambda run: kernel_ami.make_ami(run, options))


@task(name="check", iterable=["host"], help={
    "hosts": "hosts to check, comma-separated: names from fleet.hosts or @group (default: every host)",
    "host": "a host name or @group (repeatable), as an alternative to --hosts",
})
def fleet_check(c, hosts="", host=None):
    """Connect to every chosen host at once and print what it is: kernel, OS, boot loader, root device, EC2 id.

    invoke has no optional positional arguments: choose hosts with --hosts web1,@web (or --host, repeated).
    """
    words = hosts.replace(",", " ").split() + list(host or [])
    run_task(c, "fleet-check", lambda run: fleet_check_job.check(run, words), locked=False)


ALLOW_IP = "fwknop: the address to let in (default: this box's source address towards the host; behind NAT, the public one)"


@task(name="knock", auto_shortflags=False, help={"host": "one host from fleet.hosts", "close": "send the close sequence instead (knockd)",
                          "allow_ip": ALLOW_IP})
def knock(c, host, close=False, allow_ip=None):
    """Open the host's guard for this box: its image's knock sequence (knockd) or one SPA packet (fwknop)."""
    run_task(c, "knock", access.knock_job(host, close, allow_ip), locked=False)


@task(name="ssh", auto_shortflags=False, help={"host": "one host from fleet.hosts", "forward_agent": "forward your ssh-agent (off by default)",
                        "allow_ip": ALLOW_IP})
def ssh(c, host, forward_agent=False, allow_ip=None):
    """Knock, wait for sshd's banner, then run the system ssh: `inv ssh web1` or `inv ssh web1 -- uptime`.

    Our lines go to stderr, so stdout is the remote command's alone; the exit code is ssh's.
    """
    box: dict = {}
    command = access.remote_command(sys.argv)
    code = execute(c.config, "ssh", lambda run: access.prepare_ssh(run, host, command, forward_agent, box, allow_ip),
                   locked=False, out=sys.stderr, err=sys.stderr)
    if code:
        raise Exit(code=code)
    if box.get("argv"):
        access.exec_ssh(box["argv"])


@task(name="render", help={"image": "render only this image (a name from guard.images; default: every image)",
                           "dry": "render and validate, write nothing (not even new secrets)"})
def guard_render(c, image=None, dry=False):
    """Render each image's knockd/fwknop, firewall and fail2ban files, validate them, write guard.output_dir/<image>/.

    Validation runs the daemons' own checks on scratch copies and applies the firewall in a throwaway
    network namespace, never this machine's. Exit 2: a bad setting or a file a daemon refused.
    """
    c.config.run.dry = dry or c.config.run.dry
    run_task(c, "guard-render", lambda run: guard_jobs.render_images(run, image))


@task(iterable=["host"], auto_shortflags=False, help={
    "hosts": "hosts to harden, comma-separated: names from fleet.hosts, @group or @all",
    "host": "a host name or @group (repeatable), as an alternative to --hosts",
    "image": "every host of this guard.images entry instead",
    "dry": "render, validate and show each host's diffs and the dead-man steps; change nothing",
})
def harden(c, hosts="", host=None, image=None, dry=False):
    """Give hosts their image's guard (knockd/fwknopd, fail2ban, default-drop firewall), kept only once a new
    SSH connection got in through it; otherwise each host puts its old rules and files back by itself."""
    c.config.run.dry = dry or c.config.run.dry
    words = hosts.replace(",", " ").split() + list(host or [])
    run_task(c, "harden", lambda run: guard_harden.harden(run, words, image))


@task(name="audit-report", positional=["host"], auto_shortflags=False, help={
    "host": "one host from fleet.hosts, or 'local' with --file",
    "auid": "only this login uid (ausearch -ul); default: every one, each apart",
    "since": "from: 1h, 2d, 1w, an ISO time (UTC unless it has an offset), recent, today, boot, this-week, ...",
    "json": "also write the report as JSON to this file",
    "log": "a log file on the host instead of the logs auditd.conf names (ausearch -if)",
    "file": "a log file on this box (HOST: local)",
    "top": "entries per list (default 20)",
})
def audit_report(c, host, auid=None, since=None, json=None, log=None, file=None, top=20):
    """System calls, commands executed and files opened per login uid, from a host's audit log (ausearch --raw,
    streamed over SSH), like the seed's auditloginfo. A log on this box: `inv audit-report local --file LOG`."""
    run_task(c, "audit-report", lambda run: audit_jobs.audit_report(
        run, host, auid=None if auid is None else int(auid), since=since, json_path=json, log=log, file=file,
        top=int(top)), locked=False)


@task(name="setup", help={"dry": "probe the log server and say what would change; change nothing"})
def logs_setup_task(c, dry=False):
    """Create the Syslog database with rsyslog's schema and one INSERT-only user per image (idempotent)."""
    c.config.run.dry = dry or c.config.run.dry
    run_task(c, "logs-setup", logs_setup.setup)


@task(name="show", default=True, auto_shortflags=False, help={
    "host": "only rows from this host (FromHost, as the host's rsyslog names itself)",
    "since": "only rows received since: 30m, 1h, 2d, 1w, or a date/time like 2026-11-27T10:00",
    "grep": "only rows whose message matches this regular expression (MariaDB REGEXP)",
    "limit": "at most this many rows, the newest (default 50)",
    "json": "one JSON object per row instead of a table",
})
def logs_show(c, host="", since="", grep="", limit=50, json=False):
    """Show syslog rows from the log server's SystemEvents: `inv logs --host web1 --since 1h --grep sshd`."""
    filters = logs_query.Filters(host, since, grep, int(limit))
    run_task(c, "logs", lambda run: logs_query.show(run, filters, json), locked=False)


logs = Collection("logs")
logs.add_task(logs_show)
logs.add_task(logs_setup_task)

guard = Collection("guard")
guard.add_task(guard_render)

fleet = Collection("fleet")
fleet.add_task(fleet_check)

catalog = Collection("catalog")
catalog.add_task(rebuild)
catalog.add_task(reconcile)
ns = Collection(backup, restore, verify, prune, catalog, binhost, build_kernel, deploy_kernel, rollback_kernel,
                bootcfg, ami, fleet, guard, knock, ssh, harden, audit_report, logs)
ns.configure(config.defaults())
