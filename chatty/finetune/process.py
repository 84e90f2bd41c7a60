"""Training in a child process, so the caller's event loop stays free and a cancel is immediate.

The child reports events through a queue. The parent reads them with a timeout and watches the
child, so a crash, an out-of-memory kill or an exception always reaches the caller as a Failed
event instead of a hang.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import shutil
import signal
import traceback
from collections.abc import Iterator

from chatty.finetune.job import Cancelled, Failed, Finished, TrainingJob
from chatty.models.adapters import STAGING_PREFIX, remove_stale_staging

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
# How long a child has to exit after the parent has read its last event.
EXIT_GRACE_SECONDS = 30


def _child_main(job: TrainingJob, events, log_file: str | None, debug: bool) -> None:
    """Entry point of the training process: run train() and report its outcome."""
    _quiet_output(log_file)
    if log_file:
        from pathlib import Path

        from chatty.logs import setup_logging

        setup_logging(Path(log_file), debug)
        logging.captureWarnings(True)
    # The parent handles Ctrl+C; the child stops when the parent terminates it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from chatty.finetune.trainer import train

    try:
        finished = train(job, events.put)
    except Cancelled:
        return
    except MemoryError:
        events.put(Failed("Training ran out of memory. Lower batch_size or max_seq_length, or turn on gradient_checkpointing."))
        return
    except Exception as error:  # every failure goes to the parent, which shows it
        message = str(error) or type(error).__name__
        if type(error).__name__ == "OutOfMemoryError":
            message = f"The GPU ran out of memory ({message}). Lower batch_size or max_seq_length, or turn on gradient_checkpointing."
        log.exception("training %s failed", job.name)
        events.put(Failed(message, traceback.format_exc()))
        return
    events.put(finished)


def _quiet_output(log_file: str | None) -> None:
    """Point the child's stdout and stderr at the log file, or nowhere.

    The parent may be a TUI that owns the terminal; libraries print warnings and progress bars
    straight to file descriptors 1 and 2, which would land on its screen.
    """
    import sys

    target = None
    if log_file:
        try:
            os.makedirs(os.path.dirname(log_file), exist_ok=True)
            target = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError:
            target = None
    if target is None:
        target = os.open(os.devnull, os.O_WRONLY)
    os.dup2(target, 1)
    os.dup2(target, 2)
    os.close(target)
    sys.stdout = open(1, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)


class TrainingProcess:
    """A training run in a spawned process. Iterate it for events; the last is Finished or Failed."""

    def __init__(self, job: TrainingJob, log_file=None, debug: bool = False):
        self.job = job
        remove_stale_staging(job.adapters_dir)
        # spawn, not fork: the parent may run threads (Textual, llama.cpp) that fork would copy mid-state.
        context = multiprocessing.get_context("spawn")
        self._cancelled = False
        # The queue's lock starts multiprocessing's resource tracker, which gets sys.stderr's file
        # descriptor. Under Textual, sys.stderr is a capture object without a usable one, so a real
        # file stands in, and nothing the tracker prints can land on the screen.
        with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):
            self._events = context.Queue()
            self._process = context.Process(
                target=_child_main,
                args=(job, self._events, str(log_file) if log_file else None, debug),
                name=f"chatty-train-{job.name}",
                daemon=True,
            )
            self._process.start()
        log.info("training %s started in process %d on %d conversations", job.name, self._process.pid, len(job.conversations))

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def cancel(self) -> None:
        """Stop training at once: the child is terminated and its staging folder removed."""
        self._cancelled = True
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self._remove_staging()
        log.info("training %s cancelled", self.job.name)

    def __iter__(self) -> Iterator[object]:
        while True:
            try:
                event = self._events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if self._cancelled:
                    return
                if not self._process.is_alive():
                    yield self._exit_failure()
                    return
                continue
            yield event
            if isinstance(event, (Finished, Failed)):
                self._process.join(timeout=EXIT_GRACE_SECONDS)
                if isinstance(event, Failed):
                    self._remove_staging()
                return

    def _exit_failure(self) -> Failed:
        code = self._process.exitcode
        self._remove_staging()
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            hint = " The system may have run out of memory." if -code == signal.SIGKILL else ""
            message = f"The training process was killed by {name}.{hint}"
        else:
            message = f"The training process exited with status {code} before it finished."
        log.error("training %s: %s", self.job.name, message)
        return Failed(message)

    def _remove_staging(self) -> None:
        pid = self._process.pid
        if not self.job.adapters_dir.is_dir():
            return
        for folder in self.job.adapters_dir.glob(f"{STAGING_PREFIX}{self.job.name}-{pid}-*"):
            shutil.rmtree(folder, ignore_errors=True)
