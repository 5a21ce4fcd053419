"""One thread owns the model; requests wait in a bounded queue in front of it.

The Generator is single-threaded and an edge device has one accelerator, so requests run one
at a time, first come first served. ``capacity`` counts the running request plus those
waiting; past it :meth:`ModelWorker.admit` says no and the app answers 429 at once, so a burst
never piles up threads, memory or latency. A job streams its events (``("piece", text)``,
``("done", GenerationResult)``, ``("error", exception)``) onto the caller's asyncio queue; a
cancelled job (client gone, server stopping) closes its Stream between two tokens.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

from ..runtime.generator import GenerationConfig


@dataclass(eq=False)  # hashed by identity: jobs live in a set
class Job:
    ids: list[int]  # the prompt, already rendered and tokenized
    config: GenerationConfig
    cancelled: threading.Event = field(default_factory=threading.Event)


class ModelWorker:
    def __init__(self, model: Any, max_queue: int = 8, lock: Any = None,
                 on_error: Callable[[BaseException], None] | None = None):
        self.model = model
        self.capacity = max_queue + 1  # the running request + the waiting ones
        self._lock = lock or nullcontext()  # shared with other users of the model (the agent's endpoint)
        self._on_error = on_error  # telemetry: count a failed request by its error type
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="edgeslm-serve")
        self._count = threading.Lock()
        self._admitted = 0
        self._jobs: set[Job] = set()
        self.served = 0
        self.rejected = 0

    @property
    def busy(self) -> int:
        """Requests running or waiting now."""
        return self._admitted

    def admit(self) -> bool:
        """Reserve a place in the queue; False (and counted) when it is full."""
        with self._count:
            if self._admitted >= self.capacity:
                self.rejected += 1
                return False
            self._admitted += 1
            return True

    def release(self) -> None:
        with self._count:
            self._admitted -= 1

    def submit(self, job: Job, loop: asyncio.AbstractEventLoop, out: asyncio.Queue) -> None:
        """Run ``job`` after those already queued (needs a place from :meth:`admit`)."""
        self._jobs.add(job)

        def emit(item) -> None:
            try:
                loop.call_soon_threadsafe(out.put_nowait, item)
            except RuntimeError:  # the event loop is gone (server stopped): nobody listens
                job.cancelled.set()

        self._executor.submit(self._run, job, emit)

    def cancel_all(self) -> None:
        for job in list(self._jobs):
            job.cancelled.set()

    def close(self) -> None:
        self.cancel_all()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _run(self, job: Job, emit: Callable[[Any], None]) -> None:
        try:
            if job.cancelled.is_set():  # the client left while waiting
                return
            with self._lock:
                stream = self.model.generator.stream(job.ids, job.config)
                for piece in stream:
                    if job.cancelled.is_set():
                        stream.close()
                        break
                    emit(("piece", piece))
                emit(("done", stream.result))
                self.served += 1
        except Exception as exc:  # reported to the client as an error object, counted in telemetry
            if self._on_error is not None:
                self._on_error(exc)
            emit(("error", exc))
        finally:
            self._jobs.discard(job)
            self.release()
