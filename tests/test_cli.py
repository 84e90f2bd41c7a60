"""The command line: ask, list, models, help and version, in real processes where it matters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from chatty import __version__
from chatty.cli import main
from chatty.store import Store
from chatty.text import escape_controls, show_controls


def run_chatty(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "chatty.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_ask_prints_and_saves(chatty_home):
    result = run_chatty("ask", "--temperature", "0", "Name three colors.")
    assert result.returncode == 0, result.stderr
    assert "Red" in result.stdout
    store = Store(chatty_home / "chatty.db")
    conversations = store.list_conversations()
    messages = store.messages(conversations[0].id)
    store.close()
    assert len(conversations) == 1
    assert conversations[0].title == "Name three colors."
    assert messages[1].content.strip() == result.stdout.strip()


def test_ask_reads_stdin_and_continues(chatty_home):
    first = run_chatty("ask", "--temperature", "0", stdin="My name is Ada.\n")
    assert first.returncode == 0, first.stderr
    second = run_chatty("ask", "--continue", "1", "--temperature", "0", "--max-tokens", "20", "What is my name?")
    assert second.returncode == 0, second.stderr
    store = Store(chatty_home / "chatty.db")
    messages = store.messages(1)
    store.close()
    assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0].content == "My name is Ada."


def test_ask_unknown_conversation(capsys):
    status = main(["ask", "--continue", "42", "Hi"])
    err = capsys.readouterr().err
    assert status == 1
    assert "Conversation 42 not found" in err
    assert "Traceback" not in err


def test_ask_unknown_model(capsys):
    status = main(["ask", "--model", "no-such-model", "Hi"])
    err = capsys.readouterr().err
    assert status == 1
    assert "Model 'no-such-model' not found" in err


def test_ask_bad_temperature(capsys):
    status = main(["ask", "--temperature", "9", "Hi"])
    assert status == 1
    assert "--temperature 9.0 is out of range" in capsys.readouterr().err


def test_ask_with_gguf_path(capsys, embedded_model):
    status = main(["ask", "--model", str(embedded_model.path), "--temperature", "0", "--max-tokens", "8", "Hi"])
    assert status == 0
    assert capsys.readouterr().out.strip()


def test_both_backends_start_alike(chatty_home, torch_cache_dir):
    (chatty_home / "cache").symlink_to(torch_cache_dir, target_is_directory=True)
    replies = {}
    for backend in ("llama", "torch"):
        result = run_chatty("ask", "--backend", backend, "--temperature", "0", "Name three colors.")
        assert result.returncode == 0, result.stderr
        replies[backend] = result.stdout.split()
    assert replies["torch"][:4] == replies["llama"][:4]


def test_ask_with_missing_adapter(capsys):
    status = main(["ask", "--adapter", "nope", "Hi"])
    assert status == 1
    assert "Adapter 'nope' not found" in capsys.readouterr().err


def test_adapters_when_empty(capsys):
    assert main(["adapters"]) == 0
    assert "No adapters yet" in capsys.readouterr().out


def test_list_after_ask(capsys):
    assert main(["ask", "--temperature", "0", "--max-tokens", "5", "Hello [bold]there[/bold]"]) == 0
    capsys.readouterr()
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "Hello [bold]there[/bold]" in out


def test_list_when_empty(capsys):
    assert main(["list"]) == 0
    assert "No conversations yet" in capsys.readouterr().out


def test_models_lists_embedded(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out
    assert "llama" in out


def test_version():
    result = run_chatty("--version")
    assert result.stdout.strip() == f"chatty {__version__}"


def test_help_lists_commands():
    result = run_chatty("--help")
    assert result.returncode == 0
    for command in ("ask", "list", "models"):
        assert command in result.stdout


def test_escape_controls_for_terminals():
    assert escape_controls("a\x1b[31mred\x07\n\tb\x9b") == "a\\x1b[31mred\\x07\n\tb\\x9b"


def test_show_controls_for_tui():
    assert show_controls("\x1b[2J\r\n") == "␛[2J␍\n"


def test_ask_escapes_control_characters_on_a_terminal(chatty_home):
    """Under a pseudo-terminal, the reply to a prompt full of escapes contains no raw ESC byte."""
    import pty

    main_fd, child_fd = pty.openpty()
    question = "Repeat exactly: \x1b[2J\x1b]52;c;aGk=\x07 done"
    process = subprocess.Popen(
        [sys.executable, "-m", "chatty.cli", "ask", "--temperature", "0", "--max-tokens", "40", question],
        stdout=child_fd, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=os.environ.copy(),
    )
    os.close(child_fd)
    output = b""
    while True:
        try:
            chunk = os.read(main_fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    process.wait(timeout=120)
    os.close(main_fd)
    assert process.returncode == 0, process.stderr.read()
    assert b"\x1b" not in output
    assert b"\x07" not in output
    store = Store(chatty_home / "chatty.db")
    saved = store.messages(1)[1].content
    store.close()
    assert escape_controls(saved).replace("\n", "\r\n").strip() == output.decode().strip()


@pytest.mark.parametrize("module", ["chatty.cli", "chatty.config", "chatty.store", "chatty.backends", "chatty.chat",
                                    "chatty.runtime", "chatty.models.catalog", "chatty.models.adapters", "chatty.commands"])
def test_core_imports_stay_light(module):
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted(m for m in ('textual', 'torch', 'transformers', 'llama_cpp', 'peft') if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_help_imports_nothing_heavy():
    code = (
        "import json, sys\n"
        "from chatty.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(m for m in ('textual', 'torch', 'transformers', 'llama_cpp') if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_list_imports_no_model_libraries():
    code = (
        "import json, sys\n"
        "from chatty.cli import main\n"
        "main(['list'])\n"
        "print(json.dumps(sorted(m for m in ('textual', 'torch', 'transformers', 'llama_cpp') if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_list_limit_must_be_positive(capsys):
    with pytest.raises(SystemExit) as raised:
        main(["list", "--limit", "0"])
    assert raised.value.code == 2
    assert "0 is not a positive number" in capsys.readouterr().err


def test_system_with_continue_rejected(capsys):
    assert main(["ask", "--continue", "1", "--system", "be brief", "Hi"]) == 1
    assert "cannot be used with --continue" in capsys.readouterr().err


def test_failed_ask_leaves_no_conversation(chatty_home, capsys):
    (chatty_home / "config.toml").write_text("[model]\nn_ctx = 256\n", encoding="utf-8")
    assert main(["ask", "word " * 400]) == 1
    assert "too long" in capsys.readouterr().err
    store = Store(chatty_home / "chatty.db")
    assert store.list_conversations() == []
    store.close()


def test_export_to_folder_is_an_error(tmp_path, capsys):
    assert main(["export", "--output", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"Cannot write {tmp_path}" in err
    assert "unexpected" not in err


def test_models_names_skipped_files(chatty_home, capsys):
    models = chatty_home / "models"
    models.mkdir()
    (models / "broken.gguf").write_bytes(b"not a model at all" * 10)
    assert main(["models"]) == 0
    captured = capsys.readouterr()
    assert "smollm2-135m-instruct" in captured.out
    assert f"skipped {models / 'broken.gguf'}" in captured.err


def test_unusable_data_folder(tmp_path, monkeypatch, capsys):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x", encoding="utf-8")
    monkeypatch.setenv("CHATTY_HOME", str(not_a_folder))
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.count("is a file, not a folder") == 1
    assert "Traceback" not in err
