"""Copying text to the system clipboard through the platform's clipboard command.

A terminal application cannot tell whether the terminal honoured an OSC 52 clipboard request, so
chatty reports success only when a clipboard command exited with status 0.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 3


@dataclass(frozen=True)
class CopyResult:
    copied: bool
    method: str | None
    error: str | None = None


def clipboard_commands() -> list[list[str]]:
    """Return the clipboard commands to try on this system, in order."""
    commands = []
    if sys.platform == "darwin":
        commands.append(["pbcopy"])
    if sys.platform == "win32" or shutil.which("clip.exe"):
        commands.append(["clip.exe"])
    if os.environ.get("WAYLAND_DISPLAY"):
        commands.append(["wl-copy"])
    if os.environ.get("DISPLAY"):
        commands.append(["xclip", "-selection", "clipboard"])
        commands.append(["xsel", "--clipboard", "--input"])
    return [command for command in commands if shutil.which(command[0])]


def copy_text(text: str) -> CopyResult:
    """Copy text with the first clipboard command that works; `copied` is False when none does."""
    errors = []
    for command in clipboard_commands():
        try:
            # xclip stays in the background to serve the selection, so its output must not be a
            # pipe that run() would wait on.
            subprocess.run(command, input=text.encode("utf-8"), check=True, timeout=TIMEOUT_SECONDS,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as error:
            log.warning("clipboard command %s failed: %s", command[0], error)
            errors.append(f"{command[0]} failed")
            continue
        return CopyResult(True, command[0])
    if errors:
        return CopyResult(False, None, "; ".join(errors))
    return CopyResult(False, None, "no clipboard command found (install wl-clipboard, xclip or xsel)")
