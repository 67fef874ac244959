"""Named crash points between durable steps, for the tests that kill a real run at each one.

A test sets ``GEO_TEST_CRASH_AT=<point>[@<n>]`` in a child's environment; the
n-th time (default 1) that child passes ``crash_point(<point>)`` it sends
SIGKILL to its own process group, as ``kill -9`` of a cron job or a Jenkins
abort would: the tool, tar, the codecs and gpg all die at once, with no cleanup.
Unset (always, outside the tests) a crash point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "GEO_TEST_CRASH_AT"

BACKUP_POINTS = (
    "tar-running",       # tar is streaming, some chunks are with the compressors
    "part-written",      # a part file is complete in inflight/, not yet in the catalog
    "part-recorded",     # the catalog lists the part, it is not stored yet
    "vault-part-sent",   # a Glacier multipart upload has some of its parts (the upload id is journalled)
    "part-uploaded",     # the store holds the part, the catalog does not know yet
    "part-stored",       # the catalog says stored
    "dir-indexed",       # a directory's file index is in the catalog, the directory is not done
    "manifest-stored",   # the store holds the manifest, the catalog does not know yet
    "manifest-recorded",  # the catalog knows the manifest, the set is still inflight
    "snapshot-promoted",  # tar snapshots moved from <set>.partial to <set>
    "set-committed",     # the catalog says complete, the files are still in inflight/
    "moved-to-complete",  # the set's files are in complete/, the catalog still says inflight there
    "local-pruned",      # local retention removed a set's staging copy
    "catalog-copy-stored",  # the store holds the new catalog copy, the catalog does not know yet
    "catalog-copy-recorded",  # the catalog points at the new copy, the old one is still stored
    "remote-expiring",   # remote retention marked a set and deleted some of its archives
    "report",            # everything is done but the run report
)

RESTORE_POINTS = (
    "restore-unpacking",  # tar -x has taken some of the chain into the hidden work directory
)

KERNEL_POINTS = (
    "kernel-artifact-written",    # a file of the new set is in its hidden directory, the set is not complete
    "kernel-artifacts-complete",  # the hidden set is complete (SHA256SUMS written), not yet in place
    "kernel-artifacts-swapped",   # the new set has the release's name, the old one is under the hidden name
    "kernel-published",           # the set and `latest` are in place
)

KERNEL_DEPLOY_POINTS = (
    "deploy-uploaded",           # the verified set is in the host's staging dir, nothing installed
    "deploy-modules-installed",  # lib/modules/<new> in place, no boot file yet
    "deploy-boot-installed",     # /boot holds the new kernel's files, no boot config changed
    "deploy-bootcfg-written",    # boot config (renames, new entry, old default pinned) written, not armed
    "deploy-armed",              # the one-shot is armed, the host's state file not yet written
)

GUARD_POINTS = (
    "deadman-saved",      # the host's current rules are saved in the job dir, nothing armed or changed
    "deadman-armed",      # the revert runs on the host (pid file written), the new rules are not applied
    "deadman-applied",    # the new rules are live, not confirmed: the armed revert brings the old ones back
    "deadman-confirmed",  # a new connection cancelled the revert (decision "confirmed"), not yet reported
)

HARDEN_POINTS = (
    "deadman-prepared",  # inv harden: new daemon configs in place and restarted under the armed revert, no new rules
    "harden-kept",       # the new rules are confirmed over a new connection, not yet saved for boot
)

_counts: dict[str, int] = {}
_lock = threading.Lock()


def crash_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point != name:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        reached = _counts[name] == int(nth or 1)
    if reached:
        os.killpg(os.getpgrp(), signal.SIGKILL)
