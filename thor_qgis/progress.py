"""Progress that tells the truth about tile runs, and cancel inside a model forward.

:class:`TileProgress` counts tiles as they are *embedded* and as their tokens are *written* to the output
file: the fraction is ``(embedded + written) / (2 * tiles + 1)``, the last unit being the file's completion,
so 100 % is reported only once the output is complete. Its text reads "tile 37 of 64 · 12 s left", the
time left estimated from the rate measured so far in this run.

:func:`cancel_inside_forward` makes a cancel land inside a batch: while it is active, every torch module
of the model checks ``is_canceled`` before running (a forward pre-hook, installed once per module and
inert outside the context and in other threads), so a canceled run stops within one block of one batch
instead of waiting for the whole batch.
"""
from __future__ import annotations

import contextlib
import threading
import time
import weakref
from typing import Callable, Iterator, Optional

from .errors import ThorCanceled


def format_duration(seconds: float) -> str:
    """12 s, 4 min 10 s, 2 h 05 min."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


class TileProgress:
    """Counts embedded and written tiles; reports a fraction and a text (callbacks may be None)."""

    def __init__(self, total: int, progress: Optional[Callable[[float], None]] = None,
                 text: Optional[Callable[[str], None]] = None, clock: Callable[[], float] = time.monotonic):
        self.total = max(0, int(total))
        self._progress = progress or (lambda _f: None)
        self._text = text or (lambda _t: None)
        self._clock = clock
        self.embedded = 0
        self.written = 0
        self._t0: Optional[float] = None
        self._done_at_t0 = 0

    def start(self) -> None:
        """The clock for the estimate starts here (after the model is ready)."""
        self._t0 = self._clock()
        self._report()

    def seconds_left(self) -> Optional[float]:
        if self._t0 is None or self.embedded <= self._done_at_t0:
            return None
        rate = (self._clock() - self._t0) / (self.embedded - self._done_at_t0)
        return rate * (self.total - self.embedded)

    def text(self) -> str:
        t = f"tile {self.embedded} of {self.total}"
        left = self.seconds_left()
        if self.embedded < self.total and left is not None:
            t += f" · {format_duration(left)} left"
        elif self.embedded >= self.total and self.written < self.total:
            t += " · writing"
        return t

    def fraction(self) -> float:
        return (self.embedded + self.written) / (2 * self.total + 1) if self.total else 0.0

    def add_embedded(self, k: int) -> None:
        if k:
            self.embedded = min(self.total, self.embedded + int(k))
            self._report()

    def set_written(self, k: int) -> None:
        k = min(self.total, int(k))
        if k != self.written:
            self.written = k
            self._report()

    def finished(self) -> None:
        """The output is complete."""
        self.embedded = self.written = self.total
        self._progress(1.0)
        self._text(f"{self.total} tile(s) done")

    def _report(self) -> None:
        self._progress(self.fraction())
        self._text(self.text())


# --- cancel inside a forward -------------------------------------------------------------------

_state = threading.local()
_hooked: "weakref.WeakSet" = weakref.WeakSet()
_hook_lock = threading.Lock()


def _pre_hook(_module, _args):
    check = getattr(_state, "is_canceled", None)
    if check is not None and check():
        raise ThorCanceled("canceled")


def _install(module) -> None:
    with _hook_lock:
        for m in module.modules():
            if m not in _hooked:
                m.register_forward_pre_hook(_pre_hook)
                _hooked.add(m)


@contextlib.contextmanager
def cancel_inside_forward(embedder, is_canceled: Optional[Callable[[], bool]]) -> Iterator[None]:
    """While active (in this thread), the embedder's model checks ``is_canceled`` before each module runs
    and raises ThorCanceled. Models that expose no torch modules are left as they are."""
    modules = getattr(embedder, "torch_modules", None)
    if is_canceled is None or modules is None:
        yield
        return
    for m in modules():
        _install(m)
    previous = getattr(_state, "is_canceled", None)
    _state.is_canceled = is_canceled
    try:
        yield
    finally:
        _state.is_canceled = previous
