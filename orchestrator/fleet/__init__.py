"""Hosts: the inventory (``fleet.hosts``), ``connect()``, and the runner that works on many hosts at once.

* ``hosts``: ``select_hosts`` (names and ``@group``\\ s from the command line) and ``connect``, the one
  place that builds a ``RemoteTarget`` from an inventory entry;
* ``runner``: ``run_on_hosts``, a job on many hosts in parallel with a limit, succeeded/failed per host,
  and on Ctrl-C or SIGTERM every connection closed and every remote command killed;
* ``facts`` and ``check``: what ``inv fleet.check`` learns about each host.
"""

from .hosts import connect, select_hosts
from .runner import HostResults, run_on_hosts

__all__ = ["HostResults", "connect", "run_on_hosts", "select_hosts"]
