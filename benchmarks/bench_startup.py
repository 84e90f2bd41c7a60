"""Startup: `chatty --help` and the TUI's first frame in a real pseudo-terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import tempfile
import time

from benchmarks.common import Record, median

HEAVY = ("torch", "transformers", "llama_cpp", "peft")


def help_seconds() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "chatty.cli", "--help"], check=True, capture_output=True)
    return time.perf_counter() - started


def first_frame_seconds(home: str) -> float:
    """Start `chatty` on a pseudo-terminal and time until the status line is on the screen."""
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["CHATTY_HOME"] = home
        os.environ["TERM"] = "xterm-256color"
        os.execv(sys.executable, [sys.executable, "-m", "chatty.cli"])
    started = time.perf_counter()
    output = b""
    try:
        while time.perf_counter() - started < 60:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                try:
                    output += os.read(fd, 65536)
                except OSError:
                    break
                if b"no adapter" in output or b"loading" in output:
                    return time.perf_counter() - started
        raise TimeoutError("chatty drew no status line within 60 s")
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)


def heavy_modules(code: str) -> list[str]:
    probe = code + f"\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    result = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(quick: bool, runs: int) -> list[Record]:
    help_times = [help_seconds() for _ in range(runs)]
    with tempfile.TemporaryDirectory(prefix="chatty-bench-home-") as home:
        frame_times = [first_frame_seconds(home) for _ in range(runs)]
    help_heavy = heavy_modules("from chatty.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    tui_heavy = heavy_modules(
        "from chatty.cli import Services\nfrom chatty.config import Config, resolve_paths\n"
        "from chatty.tui.app import ChattyApp\nChattyApp(Services(Config(), resolve_paths(Config())))"
    )
    return [
        Record("Startup: chatty --help", median(help_times), "s", help_times,
               note="heavy modules imported: " + (", ".join(help_heavy) or "none")),
        Record("Startup: TUI first frame (pseudo-terminal)", median(frame_times), "s", frame_times,
               note="importing the app imports: " + (", ".join(tui_heavy) or "none of torch, transformers, llama_cpp")
               + "; the model loads in a worker after the first frame"),
    ]
