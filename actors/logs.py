"""The logs actor: the stored chunks of the runs in memory, and live subscribers.

Logs are kept per (workflow, run number, job). The actor holds the logs of the
runs the workflow actors hold (unfinished runs and each workflow's latest
run); older runs' logs are read back from the store. A subscriber gets a
replay of what is stored and a channel of what follows; the channel closes
once the job reaches a terminal status, after its last chunk, so a stream
ends by itself.

Every chunk of a job's run gets an index, counting from 0 in the order chunks
arrive, across the job's attempts. An index stays the same when older chunks
are trimmed for the size limit and when the server restarts, so a log stream
can resume after the last index a reader saw.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import trio

from .actor import Actor
from .models import LogChunk, LogStream
from .store import put_log

JobKey = tuple[str, int, str]  # (workflow_id, run number, job_id)
# A chunk with its index in the run.
Indexed = tuple[int, LogChunk]


@dataclass(slots=True)
class JobLog:
    chunks: list[LogChunk] = field(default_factory=list)
    # The index of `chunks[0]`: how many chunks the size limit has trimmed.
    first_index: int = 0
    bytes: int = 0
    dropped_bytes: int = 0
    ended: bool = False
    subscribers: list[trio.MemorySendChannel[Indexed]] = field(default_factory=list)


def kept(log: JobLog, after: int = -1) -> list[Indexed]:
    """The stored chunks after index `after`, led by a notice if trimmed ones are missed.

    The notice carries the index of the last trimmed chunk, so a reader resuming
    after it does not see it twice.
    """
    chunks = [(log.first_index + i, c) for i, c in enumerate(log.chunks)]
    start = max(0, after + 1 - log.first_index)
    if not log.dropped_bytes or not log.chunks or after >= log.first_index - 1:
        return chunks[start:]
    notice = log.chunks[0].model_copy(
        update={
            "data": f"[workflow-graph: {log.dropped_bytes} earlier bytes of this log dropped"
            " (limit max_log_bytes_per_job)]\n",
            "stream": LogStream.stderr,
        }
    )
    return [(log.first_index - 1, notice), *chunks]


def trim(log: JobLog, max_bytes: int) -> None:
    """Past the per-job limit keep the tail; `kept` says what was dropped."""
    count = 0
    while count < len(log.chunks) - 1 and log.bytes > max_bytes:
        size = len(log.chunks[count].data)
        log.bytes -= size
        log.dropped_bytes += size
        count += 1
    # One slice for the lot: a log of many small chunks is not shifted once per chunk.
    del log.chunks[:count]
    log.first_index += count


def stored_log(chunks: list[LogChunk], max_bytes: int, after: int = -1) -> list[Indexed]:
    """A log read back from the store, kept as the actor would have kept it."""
    log = JobLog(chunks=chunks, bytes=sum(len(c.data) for c in chunks))
    trim(log, max_bytes)
    return kept(log, after)


# --- messages ---------------------------------------------------------------


@dataclass(slots=True)
class AppendChunks:
    key: JobKey
    chunks: list[LogChunk]


@dataclass(slots=True)
class OpenRun:
    """A run was created: its jobs' logs start empty, held here."""

    workflow_id: str
    number: int
    job_ids: list[str]


@dataclass(slots=True)
class Seed:
    """A job carried into a re-run starts with its earlier log, already ended."""

    key: JobKey
    chunks: list[LogChunk]


@dataclass(slots=True)
class Forget:
    """The run left memory (the store keeps its logs) or was pruned."""

    workflow_id: str
    numbers: list[int]


@dataclass(slots=True)
class JobEnded:
    """Final: the job is terminal. Not final: an attempt ended and a retry follows."""

    key: JobKey
    final: bool


@dataclass(slots=True)
class ReadLog:
    key: JobKey


@dataclass(slots=True)
class Subscribe:
    key: JobKey
    # Replay only the chunks after this index (a resumed stream); -1 replays all.
    after: int = -1


@dataclass(slots=True)
class Subscription:
    replay: list[Indexed]
    live: trio.MemoryReceiveChannel[Indexed]


class LogsActor(Actor):
    name = "logs"

    def __init__(self, max_bytes_per_job: int = 16 * 1024 * 1024) -> None:
        super().__init__()
        self._logs: dict[JobKey, JobLog] = {}
        self._max_bytes = max_bytes_per_job

    def handle(self, message):
        match message:
            case AppendChunks(key, chunks):
                for chunk in chunks:
                    self.record(put_log(key[0], key[1], key[2], chunk.model_dump_json()))
                self._append(key, chunks)
            case ReadLog(key):
                # None: not held here (an older run: read the store).
                log = self._logs.get(key)
                return [chunk for _, chunk in kept(log)] if log is not None else None
            case Subscribe(key, after):
                return self._subscribe(key, after)
            case JobEnded(key, final):
                log = self._logs.setdefault(key, JobLog())
                if final:
                    log.ended = True
                    for sub in log.subscribers:
                        sub.close()
                    log.subscribers.clear()
            case OpenRun(workflow_id, number, job_ids):
                for job_id in job_ids:
                    # Streams opened before the workflow's first run follow its jobs into it.
                    early = self._logs.pop((workflow_id, 0, job_id), None)
                    fresh = self._logs.setdefault((workflow_id, number, job_id), JobLog())
                    if early is not None:
                        fresh.subscribers.extend(early.subscribers)
            case Seed(key, chunks):
                self._append(key, chunks)
                self._logs[key].ended = True
            case Forget(workflow_id, numbers):
                drop = set(numbers)
                for key in [k for k in self._logs if k[0] == workflow_id and k[1] in drop]:
                    log = self._logs.pop(key)
                    for sub in log.subscribers:
                        sub.close()
            case _:
                raise TypeError(f"logs cannot handle {message!r}")
        return None

    def restore(self, stored: dict[JobKey, list[str]], ended: Iterable[JobKey]) -> None:
        """Before the actor starts: the held runs' chunks, read back from the store."""
        for key, chunks in stored.items():
            self._append(key, [LogChunk.model_validate_json(c) for c in chunks])
        for key in ended:
            self._logs.setdefault(key, JobLog()).ended = True

    def _append(self, key: JobKey, chunks: list[LogChunk]) -> None:
        log = self._logs.setdefault(key, JobLog())
        for chunk in chunks:
            indexed = (log.first_index + len(log.chunks), chunk)
            log.chunks.append(chunk)
            log.bytes += len(chunk.data)
            live = []
            for sub in log.subscribers:
                try:
                    sub.send_nowait(indexed)
                    live.append(sub)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the stream's reader went away
            log.subscribers = live
        self._trim(log)

    def _trim(self, log: JobLog) -> None:
        trim(log, self._max_bytes)

    def _subscribe(self, key: JobKey, after: int) -> Subscription | None:
        log = self._logs.get(key)
        if log is None:
            if key[1] != 0:
                return None  # not held here: an older run, read from the store
            log = self._logs[key] = JobLog()
        send, receive = trio.open_memory_channel[Indexed](math.inf)
        if log.ended:
            send.close()
        else:
            log.subscribers.append(send)
        return Subscription(replay=kept(log, after), live=receive)
