"""The logs actor: stored chunks of each job's latest run, and live subscribers.

Every chunk of a run gets an index, counting from 0 in the order chunks arrive,
across the job's attempts. An index stays the same when older chunks are trimmed
for the size limit and when the server restarts, so a log stream can resume
after the last index a reader saw.

A subscriber gets a replay of what is stored and a channel of what follows;
the channel closes once the job reaches a terminal status, after its last
chunk, so a stream ends by itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import trio

from .actor import Actor
from .models import LogChunk, LogStream
from .store import put_log

JobKey = tuple[str, str]
# A chunk with its index in the run.
Indexed = tuple[int, LogChunk]


@dataclass(slots=True)
class JobLog:
    run_id: int = 0
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


# --- messages ---------------------------------------------------------------


@dataclass(slots=True)
class AppendChunks:
    key: JobKey
    chunks: list[LogChunk]


@dataclass(slots=True)
class ResetWorkflow:
    workflow_id: str
    job_ids: list[str]
    run_id: int


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
                log = self._logs.setdefault(key, JobLog())
                for chunk in chunks:
                    self.record(put_log(key[0], key[1], log.run_id, chunk.model_dump_json()))
                self._append(key, chunks)
            case ReadLog(key):
                log = self._logs.get(key)
                return [chunk for _, chunk in kept(log)] if log else []
            case Subscribe(key, after):
                return self._subscribe(key, after)
            case JobEnded(key, final):
                log = self._logs.setdefault(key, JobLog())
                if final:
                    log.ended = True
                    for sub in log.subscribers:
                        sub.close()
                    log.subscribers.clear()
            case ResetWorkflow(workflow_id, job_ids, run_id):
                for job_id in job_ids:
                    old = self._logs.pop((workflow_id, job_id), None)
                    # Open streams of a job not yet finished follow it into the new run.
                    fresh = JobLog(run_id=run_id)
                    if old is not None:
                        fresh.subscribers = old.subscribers
                    self._logs[(workflow_id, job_id)] = fresh
            case _:
                raise TypeError(f"logs cannot handle {message!r}")
        return None

    def restore(
        self,
        stored: dict[tuple[str, str, int], list[str]],
        job_runs: dict[JobKey, int],
        ended: list[JobKey],
    ) -> None:
        """Before the actor starts: the current runs' chunks, read back from the store."""
        for key, run_id in job_runs.items():
            self._logs[key] = JobLog(run_id=run_id)
        for (workflow_id, job_id, run_id), chunks in stored.items():
            if job_runs.get((workflow_id, job_id)) == run_id:
                parsed = [LogChunk.model_validate_json(c) for c in chunks]
                self._append((workflow_id, job_id), parsed)
        for key in ended:
            self._logs[key].ended = True

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
        """Past the per-job limit keep the tail; `kept` says what was dropped."""
        count = 0
        while count < len(log.chunks) - 1 and log.bytes > self._max_bytes:
            size = len(log.chunks[count].data)
            log.bytes -= size
            log.dropped_bytes += size
            count += 1
        # One slice for the lot: a log of many small chunks is not shifted once per chunk.
        del log.chunks[:count]
        log.first_index += count

    def _subscribe(self, key: JobKey, after: int) -> Subscription:
        log = self._logs.setdefault(key, JobLog())
        send, receive = trio.open_memory_channel[Indexed](math.inf)
        if log.ended:
            send.close()
        else:
            log.subscribers.append(send)
        return Subscription(replay=kept(log, after), live=receive)
