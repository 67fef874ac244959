"""Getting archives out of cold storage: request once, remember the jobs, report or wait.

A Glacier vault or an S3 GLACIER/DEEP_ARCHIVE object is readable only hours
after a retrieval request.  Requests are recorded in the catalog, so a rerun of
``inv restore`` checks the same jobs instead of paying for new ones, and the
run ends with a distinct exit code (75) and an estimate until the data is there.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..errors import NotReadyError
from ..progress import Progress
from .catalog import Catalog
from .stores import Retrieval, Store


def readable_jobs(catalog: Catalog, store: Store, archive_ids: list[str], *, tier: str, days: int,
                  wait: bool, poll_seconds: float, progress: Progress,
                  sleep: Callable[[float], None] = time.sleep) -> dict[str, str | None]:
    """archive id -> job id (or None) for every archive, once all are readable.

    Without ``wait`` this raises NotReadyError while any is still pending.
    """
    ready: dict[str, str | None] = {}
    pending = _check(catalog, store, archive_ids, tier, days, ready)
    while pending:
        message = not_ready_message(catalog, store, pending, len(archive_ids), tier)
        if not wait:
            raise NotReadyError(message)
        progress.say(message + f"; checking again in {poll_seconds:.0f} s")
        sleep(poll_seconds)
        pending = _check(catalog, store, list(pending), tier, days, ready)
    return ready


def _check(catalog, store, archive_ids, tier, days, ready) -> dict[str, Retrieval]:
    pending = {}
    for archive_id in archive_ids:
        known = catalog.retrieval(store.name, archive_id)
        state = store.retrieval(archive_id, known["job_id"] if known else None)
        if state.state == "absent":
            state = store.request_retrieval(archive_id, tier, days)
            catalog.record_retrieval(store.name, archive_id, state.job_id, tier, state.eta_hours)
        if state.state == "ready":
            ready[archive_id] = state.job_id or (known["job_id"] if known else None)
        else:
            pending[archive_id] = state
    return pending


def not_ready_message(catalog: Catalog, store: Store, pending: dict[str, Retrieval], total: int, tier: str) -> str:
    remaining = [_hours_left(catalog.retrieval(store.name, aid), state) for aid, state in pending.items()]
    known = [h for h in remaining if h is not None]
    when = f"ready in about {_human_hours(max(known))}" if known else "ready time unknown"
    return (f"not ready yet: {len(pending)} of {total} archives are being retrieved from {store.name} "
            f"({tier} tier), {when}; run inv restore again then, or add --wait")


def _hours_left(record, state: Retrieval) -> float | None:
    eta = state.eta_hours if state.eta_hours is not None else (record["eta_hours"] if record else None)
    if eta is None:
        return None
    elapsed = (time.time() - record["requested"]) / 3600 if record else 0.0
    return max(eta - elapsed, 0.05)


def _human_hours(hours: float) -> str:
    return f"{hours * 60:.0f} minutes" if hours < 1 else f"{hours:.0f} hours"


def forget(catalog: Catalog, store: Store, archive_ids: list[str]) -> None:
    for archive_id in archive_ids:
        catalog.forget_retrieval(store.name, archive_id)
