"""The benchmark scripts keep working: one quick run of each, asserting no timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_quick_benchmarks_write_both_reports(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--output-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads((tmp_path / "benchmarks.json").read_text(encoding="utf-8"))
    names = [record["name"] for record in payload["records"]]
    for prefix in ("llama.cpp:", "PyTorch", "TUI:", "Startup:", "Long history:", "Fine-tuning:", "Adapter switch"):
        assert any(name.startswith(prefix) for name in names), prefix
    for record in payload["records"]:
        assert set(record) >= {"name", "value", "unit", "target", "met"}
        assert record["value"] == record["value"], f"{record['name']} is NaN"
    markdown = (tmp_path / "benchmarks.md").read_text(encoding="utf-8")
    assert "## Machine" in markdown
    assert "| figure | value | spread | target | met |" in markdown
