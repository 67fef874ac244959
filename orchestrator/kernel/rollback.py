"""``inv rollback-kernel HOST``: the previous kernel's boot config back, the failed kernel's files removed.

What deploy changed is in the host's state file (``<staging_dir>/state.json``):
each boot config file it replaced gets its ``.<name>.previous`` back (what
``Target.replace_file`` kept), so the previous default entry is the default again.
The deployed kernel's files (boot files, vmlinuz first, then its modules) are
removed only when it is not the running kernel; the previous kernel's files were
never touched by deploy. Nothing recorded: one line, nothing changed.
"""

from __future__ import annotations

from ..errors import OrchestratorError
from ..run import Target
from ..run.files import previous_path
from .deploy import DEFAULT_GRUB, HostSpec, gather, state_path, write_state
from .install import HostRoot, remove_kernel
from .prune import recorded


def rollback_host(run, target: Target, root: str, staging_dir: str, name: str) -> dict:
    """Put the previous boot config back and remove the deployed kernel when it is not running."""
    host = HostRoot(root)
    facts = gather(target, HostSpec(name, root), staging_dir)
    state = facts.state
    if not state or state.get("status") not in ("armed", "failed", "deployed"):
        raise OrchestratorError(f"{name}: nothing to roll back (no deploy recorded in "
                                f"{state_path(host, staging_dir)})")
    restored = [_restore(target, path) for path in _in_order(state.get("changed", []))]
    removed = []
    if facts.running != state["release"]:
        removed = remove_kernel(target, host, state["release"])
    else:
        run.report.warnings.append(f"{name}: {state['release']} is the running kernel: its files are kept; "
                                   f"the default is {state.get('old_entry')} again from the next boot")
    if not run.dry:  # the install record stays (keep_kernels needs it), less the kernel removed
        history = [r for r in recorded(state) if not (removed and r == state["release"])]
        write_state(target, host, staging_dir, {"installed": history})
    return {"host": name, "restored": [p for p in restored if p], "removed": removed,
            "default": state.get("old_entry", ""), "kernel_removed": state["release"] if removed else ""}


def _in_order(paths: list[str]) -> list[str]:
    """grubenv / the legacy default first (the old default at once), /etc/default/grub and the rest after."""
    def rank(path: str) -> int:
        return 0 if path.endswith(("grubenv", "/grub/default")) else 2 if path.endswith(DEFAULT_GRUB) else 1
    return sorted(paths, key=rank)


def _restore(target: Target, path: str) -> str | None:
    previous = target.read_file(previous_path(path))
    if previous is None:
        if path.endswith("/grub/default"):
            target.run(["rm", "-f", "--", path])
            return path
        return None
    return path if target.replace_file(path, previous, keep_previous=False) else None
