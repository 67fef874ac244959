"""``inv harden`` as a child process, for the tests that kill it at a crash point.

Usage: python harden_child.py CONFIG.json HOST... (the whole config; the kill tests set ``GEO_TEST_CRASH_AT``).
"""

from __future__ import annotations

import json
import sys

from orchestrator.job import execute
from orchestrator.security import harden


def main(config_path: str, hosts: list[str]) -> int:
    config = json.loads(open(config_path).read())
    return execute(config, "harden", lambda run: harden.harden(run, hosts))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
