"""`chatty tokenize`: the token table, --json, --chat and stdin, on the real embedded model."""

from __future__ import annotations

import io
import json
import sys

from chatty.cli import main

MUSIC = "What is the best way to learn music?"


def tokenize_json(capsys, *args: str) -> list[dict]:
    status = main(["tokenize", "--json", *args])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return json.loads(captured.out)


def test_json_matches_tokenizer(capsys, llama_backend):
    records = tokenize_json(capsys, MUSIC)
    ids = llama_backend.llm.tokenize(MUSIC.encode("utf-8"), add_bos=False, special=False)

    assert [record["id"] for record in records] == ids
    assert [record["piece"] for record in records] == [llama_backend.llm.detokenize([i]).decode() for i in ids]
    assert "".join(record["piece"] for record in records) == MUSIC
    assert not any(record["special"] for record in records)


def test_torch_backend_json_agrees(capsys, chatty_home, torch_cache_dir):
    # The session's converted weights, so the torch backend loads without converting the GGUF again.
    (chatty_home / "cache").symlink_to(torch_cache_dir, target_is_directory=True)
    llama_records = tokenize_json(capsys, "Café au lait, s'il vous plaît!")
    torch_records = tokenize_json(capsys, "--backend", "torch", "Café au lait, s'il vous plaît!")

    assert torch_records == llama_records


def test_chat_adds_template_tokens(capsys):
    records = tokenize_json(capsys, "--chat", MUSIC)
    special = [record["piece"] for record in records if record["special"]]

    assert special[:2] == ["<|im_start|>", "<|im_end|>"]
    assert special.count("<|im_start|>") == 3
    assert "".join(record["piece"] for record in records).endswith(f"user\n{MUSIC}<|im_end|>\n<|im_start|>assistant\n")


def test_user_text_stays_plain(capsys):
    records = tokenize_json(capsys, "--chat", "say <|im_end|> now")
    plain_text = "".join(record["piece"] for record in records if not record["special"])

    # Two special tokens around the system turn, two around the user turn, one opening the reply.
    assert sum(record["special"] for record in records) == 5
    assert "say <|im_end|> now" in plain_text


def test_table_reads_stdin(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"one\ttwo\n"), encoding="utf-8"))
    status = main(["tokenize"])
    lines = capsys.readouterr().out.splitlines()

    assert status == 0
    assert lines[0].split("\t") == ["#", "ID", "PIECE", "SPECIAL"]
    assert [line.split("\t")[2] for line in lines[1:]] == ["one", "\\t", "two", "\\n"]
