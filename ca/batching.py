"""Group commit for concurrent issuance in one process.

Each :func:`ca.issuance.issue` pays two durable commits (intent, then certificate). When several
threads ask at once, :class:`IssuanceQueue` hands whatever requests are waiting to one
:func:`ca.issuance.issue_many` call, so they share those commits. It never waits for company:
a request that arrives alone is issued at once, and requests arriving while a batch is being
issued form the next batch (the batch size follows the load by itself).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from ca.authority import Authority
from ca.errors import CAError
from ca.issuance import IssuanceRequest, IssuedCertificate, issue_many


@dataclass
class _Job:
    request: IssuanceRequest
    future: Future[IssuedCertificate]


class IssuanceQueue:
    """Issue requests from many threads in shared batches; one worker thread per process."""

    def __init__(self, auth: Authority, max_batch: int = 32, window_seconds: float = 0.0) -> None:
        self.auth = auth
        self.max_batch = max(1, max_batch)
        self.window = max(0.0, window_seconds)
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._pid = 0

    def issue(self, request: IssuanceRequest, timeout: float | None = 60.0) -> IssuedCertificate:
        """Issue one certificate; raises the request's CAError like :func:`issue` does."""
        self._ensure_worker()
        job = _Job(request, Future())
        self._jobs.put(job)
        return job.future.result(timeout=timeout)

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._worker is not None and self._pid == os.getpid() and self._worker.is_alive():
                return
            # After a fork the parent's thread does not exist here: start this process's own.
            self._jobs = queue.SimpleQueue()
            self._pid = os.getpid()
            self._worker = threading.Thread(target=self._run, name="hsmca-issuance", daemon=True)
            self._worker.start()

    def _run(self) -> None:
        jobs = self._jobs
        while True:
            batch = [jobs.get()]
            deadline = time.monotonic() + self.window
            while len(batch) < self.max_batch:
                try:
                    batch.append(jobs.get_nowait())
                except queue.Empty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        batch.append(jobs.get(timeout=remaining))
                    except queue.Empty:
                        break
            self._issue_batch(batch)

    def _issue_batch(self, batch: list[_Job]) -> None:
        try:
            results = issue_many(self.auth, [job.request for job in batch])
        except BaseException as exc:  # an outage fails the whole batch; each caller sees it
            for job in batch:
                job.future.set_exception(exc)
            return
        for job, result in zip(batch, results, strict=True):
            if isinstance(result, CAError):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
