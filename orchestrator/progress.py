"""Progress: tqdm bars on a terminal, plain timestamped lines in cron and Jenkins.

Where each kind of line goes, so that ``inv backup >/dev/null`` in cron mails
only what needs a human: plain progress lines on stdout; warnings on stderr;
tqdm bars on stderr (they are drawn on the terminal, never kept in a log).
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

PLAIN_INTERVAL_S = 10.0


class Progress:
    """Say things and count things, in a way that suits where output goes.

    ``mode`` is ``bar`` (tqdm), ``plain`` (one line per event and periodic
    totals), ``quiet`` (only warnings and errors) or ``auto`` (bars when
    stderr, where they are drawn, is a terminal).  Messages and plain lines go
    to stdout, bars and warnings to stderr; ``stream`` sends both to one place.
    """

    def __init__(self, mode: str = "auto", stream=None):
        self.out = stream if stream is not None else sys.stdout
        self.err = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if self.err.isatty() else "plain"
        self.mode = mode
        self._bars: list = []

    def say(self, message: str) -> None:
        if self.mode == "quiet":
            return
        self._emit(message, self.out)

    def warn(self, message: str) -> None:
        self._emit(f"WARNING: {message}", self.err)

    def _emit(self, message: str, stream) -> None:
        if self.mode == "bar" and self._bars:
            tqdm.write(message, file=stream)
        else:
            stamp = time.strftime("%H:%M:%S")
            print(f"{stamp} {message}" if self.mode == "plain" else message, file=stream, flush=True)

    def counter(self, desc: str, total: int | None = None, unit: str = "B") -> "Counter":
        return Counter(self, desc, total, unit)


class Counter:
    def __init__(self, progress: Progress, desc: str, total: int | None, unit: str):
        self.progress = progress
        self.desc = desc
        self.total = total
        self.unit = unit
        self.n = 0
        self._last_plain = time.monotonic()
        self._bar = None
        if progress.mode == "bar":
            self._bar = tqdm(
                total=total, desc=desc, unit=unit, unit_scale=unit == "B", unit_divisor=1024,
                file=progress.err, leave=False, dynamic_ncols=True,
            )
            progress._bars.append(self._bar)

    def update(self, n: int, note: str | None = None) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            if note:
                self._bar.set_postfix_str(note, refresh=False)
        elif self.progress.mode == "plain" and time.monotonic() - self._last_plain >= PLAIN_INTERVAL_S:
            self._last_plain = time.monotonic()
            self.progress.say(f"{self.desc}: {self._amount()}" + (f" ({note})" if note else ""))

    def _amount(self) -> str:
        from .config import human_size

        done = human_size(self.n) if self.unit == "B" else f"{self.n} {self.unit}"
        if self.total:
            return f"{done} of {human_size(self.total) if self.unit == 'B' else self.total}"
        return done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self.progress._bars.remove(self._bar)
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
