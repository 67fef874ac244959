"""Our one retry layer: a read whose answer arrived wrong is fetched again, after a backoff.

Two layers retry a read, never more, and neither runs inside another of ours:

* botocore (``backup.store.max_attempts``, standard mode, its own exponential
  backoff) retries a request that got no usable answer: throttling (503
  SlowDown, ThrottlingException), 5xx, broken connections.  When it gives up,
  the error is final.
* :func:`verified_read` retries a read whose answer arrived and is wrong: a
  body cut off mid-stream (botocore never re-sends a request whose response it
  has already returned), a length other than the range's, or bytes that do not
  match a hash: the tree hash or checksum AWS sent with them, the sha256 stored
  with the object, the catalog's leaf hashes.  Whoever finds that raises
  :class:`CorruptRangeError`; nothing else is caught here, so access denied, not
  ready (an archived object, a retrieval job still running), a missing archive
  or botocore's last error fail at once, after exactly botocore's attempts.

Every verified read goes through exactly one :func:`verified_read`:
``download.download_verified`` wraps each range of a part (it knows the leaves),
and ``Store.read_range`` with ``end=-1`` / ``Store.get`` wrap whole small
archives (manifests, catalog copies), which have no caller-side check.  A
store's single read (``Store._read_once``) checks what the answer itself
carries, raises :class:`CorruptRangeError`, and never loops.

Uploads get no layer of ours: botocore retries their requests (s3transfer adds
no retries for uploads), and a store that finds an upload arrived damaged
removes what it can and fails with one line; the part stays staged for a rerun.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from ..errors import OrchestratorError

T = TypeVar("T")


class CorruptRangeError(OrchestratorError):
    """A read's answer arrived but is wrong (short, cut off, failing a hash); fetching it again may help."""

    def __init__(self, what: str, reason: str):
        super().__init__(f"{what}: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Backoff:
    """``attempts`` reads in all; before re-read n, ``first * 2**(n-1)`` seconds, at most ``cap``, jittered.

    The jitter scales each delay by a random factor in [1/2, 1), so parallel
    range downloads that failed together do not come back in lockstep, while
    each delay still exceeds the one before.  Tests inject ``sleep``.
    """

    attempts: int = 3
    first: float = 1.0
    cap: float = 8.0
    sleep: Callable[[float], None] = time.sleep
    jitter: Callable[[], float] = random.random

    def __post_init__(self):
        if self.attempts < 1:
            raise ValueError("Backoff.attempts must be at least 1")

    def delay(self, retry: int) -> float:
        """Seconds to wait before re-read number ``retry`` (1 for the first re-read)."""
        return min(self.cap, self.first * 2 ** (retry - 1)) * (0.5 + self.jitter() / 2)


def verified_read(read: Callable[[], T], what: str, backoff: Backoff) -> T:
    """``read()``, again after a backoff each time it raises :class:`CorruptRangeError`.

    After ``backoff.attempts`` bad answers: one line, ``<what>: <last reason>;
    failed verification N times``, as a plain :class:`OrchestratorError`, which no
    caller retries again.
    """
    for attempt in range(1, backoff.attempts + 1):
        try:
            return read()
        except CorruptRangeError as exc:
            reason = exc.reason
        if attempt < backoff.attempts:
            backoff.sleep(backoff.delay(attempt))
    raise OrchestratorError(f"{what}: {reason}; failed verification {backoff.attempts} times")
