"""The README's two commands, and CI running the same test command."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def shell_blocks() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", readme, flags=re.DOTALL)]


def test_readme_has_two_commands():
    blocks = shell_blocks()
    assert len(blocks) == 2
    assert blocks[0].endswith(".venv/bin/chatty")
    assert blocks[1].endswith(".venv/bin/pytest")


def test_ci_runs_readme_test_command():
    test_command = shell_blocks()[1]
    ci_lines = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command in ci_lines
