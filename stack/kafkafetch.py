"""Fetch Kafka records in a child process, so that consuming and processing share two cores.

A Python Kafka client spends most of a consumer's time decoding record batches, holding the
GIL; a stage that then validates and writes what it read takes turns with it on one core.
:class:`ProcessFetcher` runs the adapter's consumer (no group: it only reads) in
``python -m stack.kafkafetch`` and streams what each poll returned to the parent through a
pipe, a few polls ahead, while the parent processes earlier ones. The parent keeps everything that
matters for correctness — where to start, what is durable, which offsets to commit — so
the child holds no state worth saving: it is stopped, not asked to stop.

Protocol, parent → child on stdin: one JSON line with the Kafka settings and bootstrap
servers (the child connects while the parent is still deciding where to start), then one
JSON line with the start offsets. Child → parent on an inherited pipe: frames of a 4-byte
little-endian length and a pickle, ``("batches", [PartitionBatch, ...], peak_rss_mb)`` per
poll (empty lists too, so that the parent notices time passing) or ``("error", text)``.

The child exits when the pipe breaks (the parent is gone or closed it) and ignores
terminal signals (its own session): the parent decides when to stop.
:class:`InlineFetcher` is the same interface on a consumer in the calling process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pickle
import queue
import select
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import IO, TYPE_CHECKING, Any, Protocol, cast

from stack.gctune import freeze_startup_heap, throughput_gc
from stack.kafka import Consumer, KafkaClient, PartitionBatch, TopicPartition
from stack.kafkasecurity import revealed
from stack.memory import peak_rss_mb
from stack.resilience import Outage

if TYPE_CHECKING:
    from stack.settings import KafkaSettings

log = logging.getLogger("vigil.kafkafetch")
_HEADER = struct.Struct("<I")
_PIPE_BYTES = 1 << 20  # fewer, larger reads (Linux's default cap for unprivileged users)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class FetchError(RuntimeError):
    """The fetch process failed or vanished; the message says how."""


class Fetcher(Protocol):
    def start(self, positions: Mapping[TopicPartition, int]) -> None: ...
    def poll(self) -> list[PartitionBatch]: ...
    def peak_rss_mb(self) -> float: ...
    def close(self) -> None: ...


class InlineFetcher:
    """The consumer in this process: one poll at a time, nothing overlaps."""

    def __init__(self, client: KafkaClient, max_records: int, poll_timeout_s: float) -> None:
        self._consumer: Consumer = client.consumer(None)
        self._max = max_records
        self._timeout = poll_timeout_s

    def start(self, positions: Mapping[TopicPartition, int]) -> None:
        self._consumer.assign(list(positions), positions)

    def poll(self) -> list[PartitionBatch]:
        return self._consumer.poll_columns(self._max, self._timeout)

    def peak_rss_mb(self) -> float:
        return 0.0  # counted in the caller's own peak

    def close(self) -> None:
        self._consumer.close()


class ProcessFetcher:
    """The consumer in a child process, a few polls ahead of the caller.

    Args:
        client: the Kafka client settings and bootstrap servers to read with.
        max_records: records per poll (and so per frame).
        poll_timeout_s: how long the child's poll waits for data; the parent hears from
            the child at least this often.
        read_ahead: polls received and not yet taken, at most (bounds memory).
        stall_timeout_s: give up when the child has sent nothing for this long.
    """

    def __init__(
        self,
        client: KafkaClient,
        max_records: int,
        poll_timeout_s: float,
        *,
        read_ahead: int = 4,
        stall_timeout_s: float = 60.0,
    ) -> None:
        self._stall = stall_timeout_s
        self._peak_child = 0.0
        read_fd, write_fd = os.pipe()
        with contextlib.suppress(OSError):  # a smaller pipe only means less read-ahead
            fcntl.fcntl(write_fd, _F_SETPIPE_SZ, _PIPE_BYTES)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "stack.kafkafetch", str(write_fd)],
                stdin=subprocess.PIPE,
                pass_fds=(write_fd,),
                env=_child_env(),
                start_new_session=True,  # Ctrl-C reaches the parent, which stops the child
            )
        finally:
            os.close(write_fd)
        self._pipe = read_fd
        self._closing = False
        self._frames: queue.Queue[bytearray | BaseException] = queue.Queue(maxsize=read_ahead)
        self._reader = threading.Thread(target=self._read_frames, name="kafka-fetch", daemon=True)
        self._send(
            {
                # Secrets in clear over the pipe only: model_dump masks SecretStr.
                "kafka": client.settings.model_dump(mode="json")
                | {"security": revealed(client.settings.security)},
                "bootstrap": client.bootstrap,
                "max_records": max_records,
                "poll_timeout_s": poll_timeout_s,
            }
        )

    def _send(self, message: dict[str, Any]) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(message).encode() + b"\n")
            stdin.flush()
        except BrokenPipeError:
            raise self._died() from None

    def start(self, positions: Mapping[TopicPartition, int]) -> None:
        self._send({"positions": [[tp.topic, tp.partition, off] for tp, off in positions.items()]})
        self._reader.start()

    def poll(self) -> list[PartitionBatch]:
        try:
            item = self._frames.get(timeout=self._stall)
        except queue.Empty:
            raise FetchError(
                f"the Kafka fetch process sent nothing for {self._stall:.0f} s"
            ) from None
        if isinstance(item, BaseException):
            self._frames.put(item)  # every later poll fails the same way
            raise item
        frame = pickle.loads(item)
        if frame[0] == "error":
            raise FetchError(f"the Kafka fetch process failed: {frame[1]}")
        _kind, batches, peak = frame
        self._peak_child = max(self._peak_child, peak)
        return batches  # type: ignore[no-any-return]

    # The reader thread only moves bytes (the GIL is free while it waits on the pipe), so
    # the child can run several polls ahead while this process works on earlier ones.
    def _read_frames(self) -> None:
        try:
            while not self._closing:
                (n,) = _HEADER.unpack(self._read(_HEADER.size))
                frame = self._read(n)
                while not self._closing:
                    try:
                        self._frames.put(frame, timeout=0.2)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:
            if not self._closing:
                self._frames.put(exc)

    def _read(self, n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            ready, _, _ = select.select([self._pipe], [], [], 0.5)
            if self._closing:
                raise FetchError("closed")
            if not ready:
                continue  # poll() notices a stall: this thread only has to stay responsive
            k = os.readv(self._pipe, [view[got:]])
            if not k:
                raise self._died()
            got += k
        return buf  # pickle reads a bytearray as it is: no copy of the frame

    def _died(self) -> FetchError:
        code = self._proc.wait(timeout=10)
        return FetchError(f"the Kafka fetch process exited with code {code} (see its stderr)")

    def peak_rss_mb(self) -> float:
        return self._peak_child

    def close(self) -> None:
        self._closing = True
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        if self._proc.poll() is None:
            self._proc.terminate()  # nothing to save in the child: see the module docstring
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._reader.is_alive():
            self._reader.join(timeout=5)
        os.close(self._pipe)


def _child_env() -> dict[str, str]:
    """This environment, with the folder that holds ``stack`` first on the import path.

    So the child finds this very code however the parent found it (installed, or run from
    a checkout with a relative ``PYTHONPATH``, from another working directory).
    """
    root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}"}


class RestartingFetcher:
    """A :class:`Fetcher` started again from the caller's positions whenever it fails (the
    fetch process died, the broker went away) and ``retry_on`` accepts the error: the
    caller owns the positions, so a new fetcher loses and repeats nothing."""

    def __init__(
        self,
        make: Callable[[], Fetcher],
        outage: Outage,
        retry_on: Callable[[BaseException], bool],
    ) -> None:
        self._make = make
        self._retry_on = retry_on
        self._current: Fetcher | None = make()  # started early: a child connects meanwhile
        self._started = False
        self.outage = outage
        self._peak = 0.0

    def restart(self, position: dict[TopicPartition, int]) -> None:
        """Read ``position``'s partitions from there on: the fetcher made early starts
        with them; a running one is replaced (what it read ahead is dropped)."""
        if self._started:
            self.close()
        self._started = bool(position)
        if position:
            if self._current is None:
                self._current = self._make()
            self._current.start(dict(position))

    def poll(self, position: dict[TopicPartition, int]) -> list[PartitionBatch]:
        return self.outage.call(lambda: self._poll(position), retry_on=self._retry_on)

    def _poll(self, position: dict[TopicPartition, int]) -> list[PartitionBatch]:
        if self._current is None:
            self._current = self._make()
            self._current.start(dict(position))
        try:
            return self._current.poll()
        except Exception:
            self.close()
            raise

    def peak_rss_mb(self) -> float:
        return max(self._peak, self._current.peak_rss_mb() if self._current else 0.0)

    def close(self) -> None:
        if self._current is not None:
            self._peak = max(self._peak, self._current.peak_rss_mb())
            try:
                self._current.close()
            except Exception as exc:  # closing a dead fetcher: nothing left to save
                log.debug("closing a failed fetcher: %s", exc)
            self._current = None


# ------------------------------------------------------------------------------ child
def _attributes(data: dict[str, Any]) -> SimpleNamespace:
    return SimpleNamespace(
        **{k: _attributes(v) if isinstance(v, dict) else v for k, v in data.items()}
    )


def _write_frame(out: IO[bytes], frame: object) -> None:
    data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_HEADER.pack(len(data)))
    out.write(data)


def _child(argv: Sequence[str]) -> int:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.fdopen(int(argv[0]), "wb", buffering=0)
    try:
        job = json.loads(sys.stdin.readline())
        # The parent validated these settings; plain attributes spare this process the
        # import of pydantic and of the whole settings model (a third of its startup).
        settings = cast("KafkaSettings", _attributes(job["kafka"]))
        client = KafkaClient(settings, job["bootstrap"])
        consumer = client.consumer(None)
        line = sys.stdin.readline()
        if not line:
            return 0  # the parent changed its mind before starting us
        positions = {TopicPartition(t, int(p)): int(o) for t, p, o in json.loads(line)["positions"]}
        consumer.assign(list(positions), positions)
        freeze_startup_heap()
        with throughput_gc():  # a poll's records are garbage by the next poll
            while True:
                batches = consumer.poll_columns(job["max_records"], job["poll_timeout_s"])
                _write_frame(out, ("batches", batches, peak_rss_mb()))
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the parent is gone or has what it wanted
    except Exception as exc:
        with contextlib.suppress(OSError):
            _write_frame(out, ("error", f"{exc!r}\n{traceback.format_exc()}"))
        return 1


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
