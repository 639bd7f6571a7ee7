"""Keep long-running processes alive: isolate poison records, wait out outages.

Two rules every consumer of the platform follows (``docs/operations.md``, reliability):

- **One record never stops a process.** A step that fails on a group of records is
  retried on halves of the group (:func:`isolate`) until the records it fails on are
  alone; those are dead-lettered with the reason, and the rest go on. A group of ``n``
  with ``k`` poison records costs about ``k · log2(n)`` extra attempts, and nothing
  when nothing fails.
- **An outage is waited out, never fatal.** A dependency that is away (PostgreSQL, the
  model service, the broker, the lake) is retried with doubling backoff
  (:class:`Outage`), the process keeps its place (partitions, offsets, the batch in
  hand) and reports the state (log lines and a gauge); a *bounded* run gives up after a
  bounded wait with an error that names the dependency (:class:`OutageError`), so a
  scheduler sees a failed task instead of one that never ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger("vigil.resilience")

T = TypeVar("T")


@dataclass
class Isolated(Generic[T]):
    """What :func:`isolate` made of a group: results of the parts that worked (with the
    positions they cover) and each position that failed alone, with its error."""

    done: list[tuple[list[int], T]] = field(default_factory=list)
    failed: list[tuple[int, BaseException]] = field(default_factory=list)
    attempts: int = 0

    @property
    def ok_positions(self) -> list[int]:
        return sorted(i for part, _ in self.done for i in part)


def isolate(
    positions: Sequence[int],
    attempt: Callable[[list[int]], T],
    *,
    poison: Callable[[BaseException], bool],
) -> Isolated[T]:
    """Run ``attempt`` on ``positions``; on an error ``poison`` accepts, bisect.

    Args:
        positions: the records' positions (``attempt`` gets a sorted sub-list).
        attempt: does the step for some records; it must have no effect when it raises
            (a transaction rolled back, a request refused).
        poison: whether an error is the records' fault (a 4xx, a data error). Any other
            error (an outage, a bug) is raised at once, untouched.

    Returns:
        The results of the parts that worked and the positions that failed alone.
    """
    out: Isolated[T] = Isolated()
    todo = [list(positions)]
    while todo:
        part = todo.pop()
        if not part:
            continue
        out.attempts += 1
        try:
            out.done.append((part, attempt(part)))
        except BaseException as exc:
            if not poison(exc):
                raise
            if len(part) == 1:
                out.failed.append((part[0], exc))
            else:
                mid = len(part) // 2
                todo += [part[mid:], part[:mid]]  # popped first half first: in order
    return out


class OutageError(RuntimeError):
    """A dependency stayed away longer than a bounded run may wait; names it and how long."""


@dataclass
class Outage:
    """Waits out one dependency's outages with doubling backoff.

    Args:
        what: the dependency, as logs and metrics name it (``postgres``, ``service``...).
        initial_s, max_s: the first wait and the cap of the doubling.
        max_wait_s: give up (:class:`OutageError`) once an outage has lasted this long;
            None waits for ever (a long-running process).
        stop: set when the process should stop; a wait returns early and re-raises.
        on_state: called with True when the dependency went away, False when it is back
            (for a gauge).
        on_retry: called with the error before each retry (for counters).
        keep_alive: called between retries (e.g. a consumer's poll that keeps its group
            membership while its partitions are paused).
    """

    what: str
    initial_s: float = 0.5
    max_s: float = 20.0
    max_wait_s: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    on_state: Callable[[bool], None] | None = None
    keep_alive: Callable[[], None] | None = None
    on_retry: Callable[[BaseException], None] | None = None
    outages: int = 0
    waited_s: float = 0.0

    def call(self, fn: Callable[[], T], *, retry_on: Callable[[BaseException], bool]) -> T:
        """``fn()``, retried while it fails with an error ``retry_on`` accepts.

        Raises:
            OutageError: a bounded wait ran out (the last error is its cause).
            The last error itself when the process was asked to stop meanwhile.
        """
        delay = self.initial_s
        started: float | None = None
        while True:
            try:
                result = fn()
            except BaseException as exc:
                if not retry_on(exc):
                    raise
                now = time.monotonic()
                if started is None:
                    started = now
                    self.outages += 1
                    if self.on_state is not None:
                        self.on_state(True)
                waited = now - started
                if self.max_wait_s is not None and waited >= self.max_wait_s:
                    raise OutageError(
                        f"{self.what} unavailable for {waited:.0f} s (a bounded run waits "
                        f"at most {self.max_wait_s:.0f} s): {type(exc).__name__}: "
                        f"{_first_line(exc)}"
                    ) from exc
                log.warning(
                    "%s unavailable (%s), retrying in %.1f s; waited %.0f s so far",
                    self.what, type(exc).__name__, delay, waited,
                )  # fmt: skip
                if self.on_retry is not None:
                    self.on_retry(exc)
                self._pause(delay)
                if self.stop.is_set():
                    raise
                delay = min(delay * 2, self.max_s)
                continue
            if started is not None:
                self.waited_s += time.monotonic() - started
                log.warning("%s is back after %.1f s", self.what, time.monotonic() - started)
                if self.on_state is not None:
                    self.on_state(False)
            return result

    def _pause(self, seconds: float) -> None:
        """Sleep ``seconds`` (less if stopped), calling ``keep_alive`` about every second."""
        end = time.monotonic() + seconds
        while not self.stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return
            if self.keep_alive is not None:
                try:
                    self.keep_alive()
                except Exception as exc:  # keeping alive is best effort
                    log.debug("keep-alive during a %s outage failed: %s", self.what, exc)
            self.stop.wait(min(left, 1.0))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""
