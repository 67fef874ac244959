"""A run of ``apply_with_deadman`` as a child process, for the tests that kill it at a crash point.

Usage: python deadman_child.py SPEC.json (host, port, key, known_hosts, rules, backend, window, state_dir,
local_state). Prints the outcome's status and message; the kill tests set ``GEO_TEST_CRASH_AT``.
"""

from __future__ import annotations

import json
import sys

from orchestrator.job import execute
from orchestrator.run import RemoteTarget
from orchestrator.security.deadman import apply_with_deadman


def main(spec_path: str) -> int:
    spec = json.loads(open(spec_path).read())

    def target() -> RemoteTarget:
        return RemoteTarget(spec["host"], port=spec["port"], key_filename=spec["key"],
                            known_hosts=spec["known_hosts"], connect_timeout=2, command_timeout=60)

    def body(run) -> None:
        with target() as old:
            outcome = apply_with_deadman(run, old, new_rules=spec["rules"], backend=spec["backend"],
                                         window_s=spec["window"], reconnect=target, state_dir=spec["state_dir"])
        print(f"{outcome.status}: {outcome.message}")

    config = {"orchestrator": {"state_dir": spec["local_state"], "progress": "plain"}}
    return execute(config, "deadman-child", body)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
