"""Pre-backup hooks, e.g. a database dump into a directory that is then backed up."""

from __future__ import annotations

import shlex

from ..config import HookConfig
from ..errors import CommandError, OrchestratorError
from ..progress import Progress
from ..run import Target


def run_hooks(hooks: list[HookConfig], target: Target, progress: Progress) -> None:
    """Run each hook in order; the first failure fails the set, with the hook's own output."""
    for hook in hooks:
        progress.say(f"hook {hook.name}: {shlex.join(hook.argv)}")
        try:
            result = target.run(hook.argv, check=False, cwd=hook.cwd, timeout=hook.timeout)
        except CommandError as exc:
            raise OrchestratorError(f"pre-backup hook {hook.name!r} failed: {exc}") from None
        if not result.ok:
            tail = " | ".join(result.output.splitlines()[-5:]) or "no output"
            raise OrchestratorError(f"pre-backup hook {hook.name!r} exited {result.returncode}: {tail}")
