"""A test-only invoke collection: ``hold`` runs a long command on hosts through ``run_on_hosts``.

``python -m invoke -r tests -c fleet_tasks -f site.yaml hold`` is a real ``inv`` process, run and
interrupted by tests/test_fleet.py. On each host the command writes its pid and a child's pid under that
host's ``root`` (``leader.pid``, ``child.pid``), then waits.
"""

from invoke import Collection, task

from orchestrator import config
from orchestrator.fleet import run_on_hosts, select_hosts
from orchestrator.job import run_task

config.adopt()

HOLD = 'echo $$ > "$1.tmp" && mv "$1.tmp" "$1"; sleep 600 & echo $! > "$2.tmp" && mv "$2.tmp" "$2"; wait'


def hold_on(host, remote):
    root = host.root.rstrip("/")
    return remote.run(["sh", "-c", HOLD, "sh", f"{root}/leader.pid", f"{root}/child.pid"]).returncode


@task(iterable=["host"])
def hold(c, host=None):
    def body(run):
        results = run_on_hosts(run, select_hosts(run.section("fleet"), host or []), hold_on, what="hold")
        results.raise_if_failed("hold")

    run_task(c, "fleet-hold", body)


ns = Collection(hold)
ns.configure(config.defaults())
