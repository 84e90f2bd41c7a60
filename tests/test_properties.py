"""Property-based tests with hypothesis: the store round trip, config parsing and the JSONL importer."""

from __future__ import annotations

import atexit
import datetime
import json
import math
import os
import re
import shutil
import tempfile
import typing
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from chatty.cli import main
from chatty.config import Config, parse_config
from chatty.errors import ConfigError
from chatty.store import InvalidText, Store

# No example database, and hypothesis's other caches (Unicode tables, constants found in the code)
# go to a temporary folder: by default all of them are written to .hypothesis/ in the working folder.
# Every test here runs its examples on real SQLite or the real CLI, so each one is slow enough that
# a deadline would only measure the machine.
HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="chatty-hypothesis-")
set_hypothesis_home_dir(HYPOTHESIS_HOME)
atexit.register(shutil.rmtree, HYPOTHESIS_HOME, ignore_errors=True)
PROPERTY_SETTINGS = settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
CLI_SETTINGS = settings(PROPERTY_SETTINGS, max_examples=25)

# Control, line-break and bidi characters that must never reach a terminal raw through a message.
RAW_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

# Characters that break naive code: NUL, line breaks that str.splitlines splits at and JSON leaves raw
# (U+0085, U+2028, U+2029), escapes, bidi overrides, a byte order mark, quotes and the parts of an
# emoji sequence.
TRICKY_CHARACTERS = ["\x00", "\n", "\r", "\t", "\x85", "\u2028", "\u2029", "\x1b", "\u202e", "\ufeff", '"', "\\",
                     "\U0001F469", "\u200d"]
# Text as people paste it: any code point that UTF-8 can encode, with the tricky ones often.
any_text = st.text(st.characters(codec="utf-8") | st.sampled_from(TRICKY_CHARACTERS), max_size=200)
json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | any_text
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=12,
)


def same_json(first, second) -> bool:
    """Compare JSON values, counting NaN equal to NaN (it is not equal to itself in Python)."""
    return json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("properties") / "chatty.db"


# Store round trip


@PROPERTY_SETTINGS
@given(
    title=any_text,
    system_prompt=any_text,
    model=st.none() | any_text,
    params=st.dictionaries(any_text, json_values, max_size=5),
    contents=st.lists(any_text, min_size=1, max_size=4),
    final_text=any_text,
    status=st.sampled_from(["complete", "stopped", "interrupted", "error"]),
    tokens=st.integers(0, 2**31),
    speed=st.floats(min_value=0, allow_nan=False),
)
def test_store_round_trip(store_path, title, system_prompt, model, params, contents, final_text, status, tokens, speed):
    writer = Store(store_path)
    conversation = writer.create_conversation(title, system_prompt=system_prompt, model=model, params=params)
    message_ids = [writer.add_message(conversation.id, "user", content).id for content in contents]
    reply = writer.add_message(conversation.id, "assistant", "", status="interrupted", model=model)
    writer.update_message(reply.id, content=final_text, status=status, prompt_tokens=tokens, tokens_per_second=speed)
    writer.close()

    # A second store on the same file reads what the first one wrote, as the next run of chatty would.
    reader = Store(store_path)
    loaded = reader.get_conversation(conversation.id)
    messages = reader.messages(conversation.id)
    reader.close()

    assert loaded.title == title
    assert loaded.system_prompt == system_prompt
    assert loaded.model == model
    assert same_json(loaded.params, params)
    assert [message.id for message in messages] == [*message_ids, reply.id]
    assert [message.content for message in messages] == [*contents, final_text]
    assert messages[-1].status == status
    assert messages[-1].prompt_tokens == tokens
    assert messages[-1].tokens_per_second == speed


@st.composite
def text_with_lone_surrogate(draw) -> str:
    text = draw(any_text)
    position = draw(st.integers(0, len(text)))
    surrogate = chr(draw(st.integers(0xD800, 0xDFFF)))
    return text[:position] + surrogate + text[position:]


@PROPERTY_SETTINGS
@given(bad=text_with_lone_surrogate(), field=st.sampled_from(["content", "title", "system_prompt"]))
def test_store_rejects_lone_surrogates(store_path, bad, field):
    store = Store(store_path)
    kept = store.create_conversation("kept", system_prompt="be brief")
    store.add_message(kept.id, "user", "hello")
    conversations_before = len(store.list_conversations())

    with pytest.raises(InvalidText) as raised:
        if field == "content":
            store.add_message(kept.id, "user", bad)
        elif field == "title":
            store.create_conversation(bad)
        else:
            store.update_conversation(kept.id, system_prompt=bad)

    message = str(raised.value)
    surrogate = re.search("[\ud800-\udfff]", bad)[0]
    assert f"U+{ord(surrogate):04X}" in message
    assert "lone surrogate" in message
    assert "\n" not in message
    assert len(store.list_conversations()) == conversations_before
    assert [m.content for m in store.messages(kept.id)] == ["hello"]
    assert store.get_conversation(kept.id).system_prompt == "be brief"
    store.close()


# Config parsing

SECTION_FIELDS = {name: typing.get_type_hints(section) for name, section in typing.get_type_hints(Config).items()}
SECTION_NAMES = list(SECTION_FIELDS)
KEY_NAMES = sorted({key for hints in SECTION_FIELDS.values() for key in hints})

toml_keys = st.sampled_from(KEY_NAMES) | st.text(max_size=12)
toml_scalars = (
    st.booleans()
    | st.integers()  # beyond 64 bits too, which TOML forbids and tomllib accepts
    | st.integers(-5, 5000)
    | st.floats()
    | any_text
    | st.sampled_from(["llama", "torch", "auto", "float16", "ctrl+s", "f5", "enter", "textual-dark"])
    | st.dates()
)
toml_values = st.recursive(
    toml_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(toml_keys, children, max_size=3),
    max_leaves=6,
)


def toml_string(text: str) -> str:
    """Write a TOML basic string: quote, backslash and control characters other than tab escaped."""
    out = []
    for character in text:
        if character in '"\\':
            out.append("\\" + character)
        elif (ord(character) < 0x20 and character != "\t") or ord(character) == 0x7F:
            out.append(f"\\u{ord(character):04X}")
        else:
            out.append(character)
    return '"' + "".join(out) + '"'


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(value)  # repr spells nan, inf and exponents as TOML does
    if isinstance(value, (int, datetime.date)):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return "{" + ", ".join(f"{toml_string(key)} = {toml_value(item)}" for key, item in value.items()) + "}"


@st.composite
def toml_documents(draw) -> tuple[str, dict]:
    """Return TOML text and the {section: {key: value}} it contains, mostly with chatty's own section and key names."""
    sections = draw(st.dictionaries(
        st.sampled_from(SECTION_NAMES) | st.text(max_size=10),
        st.dictionaries(toml_keys, toml_values, max_size=4),
        max_size=3,
    ))
    lines = []
    for section, table in sections.items():
        lines.append(f"[{toml_string(section)}]")
        lines += [f"{toml_string(key)} = {toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n", sections


def assert_one_line(error: ConfigError) -> None:
    message = str(error)
    assert message
    assert RAW_CONTROL.search(message) is None, repr(message)
    assert len(message) < 500, message


@PROPERTY_SETTINGS
@given(st.text(max_size=300))
def test_config_arbitrary_text(text):
    try:
        config = parse_config(text)
    except ConfigError as error:
        assert_one_line(error)
        return
    assert isinstance(config, Config)


@settings(PROPERTY_SETTINGS, max_examples=200)
@given(toml_documents())
def test_config_arbitrary_documents(document):
    text, sections = document
    try:
        config = parse_config(text)
    except ConfigError as error:
        assert_one_line(error)
        return

    # Accepted: every value given is in the config, with the declared type, and every number is finite.
    for section, table in sections.items():
        for key, value in table.items():
            loaded = getattr(getattr(config, section), key)
            expected_type = SECTION_FIELDS[section][key]
            if expected_type is float:
                assert isinstance(loaded, float)
                assert math.isfinite(loaded)
                assert loaded == value
            else:
                assert type(loaded) is type(value)
                assert loaded == value


@PROPERTY_SETTINGS
@given(
    section=st.sampled_from(["generation", "finetune"]),
    value=st.sampled_from(["nan", "inf", "-inf", "+inf", "1" + "0" * 400, str(2**63), str(-(2**63) - 1)]),
)
def test_config_rejects_unrepresentable_numbers(section, value):
    key = {"generation": "temperature", "finetune": "learning_rate"}[section]
    with pytest.raises(ConfigError) as raised:
        parse_config(f"[{section}]\n{key} = {value}\n")
    assert f"'{section}.{key}'" in str(raised.value)
    assert_one_line(raised.value)


def test_config_deep_nesting_is_invalid_toml():
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_config("x = " + "[" * 5000 + "]" * 5000)


# The JSONL importer

messages_strategy = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": any_text}),
    min_size=1,
    max_size=5,
)
conversations_strategy = st.lists(messages_strategy, min_size=1, max_size=4)


class Home:
    """A fresh data folder for the CLI, set through CHATTY_HOME for as long as the block runs."""

    def __enter__(self) -> Path:
        self._folder = tempfile.TemporaryDirectory(prefix="chatty-property-")
        self.path = Path(self._folder.name)
        self._environment = mock.patch.dict(os.environ, {"CHATTY_HOME": str(self.path)})
        self._environment.__enter__()
        return self.path

    def __exit__(self, *exc_info) -> None:
        self._environment.__exit__(*exc_info)
        self._folder.cleanup()


def write_jsonl(path: Path, conversations: list[list[dict]]) -> None:
    path.write_text("".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in conversations), encoding="utf-8")


def export_records(home: Path, capsys) -> list[list[dict]]:
    output = home / "export.jsonl"
    assert main(["export", "--output", str(output)]) == 0
    capsys.readouterr()
    return [json.loads(line)["messages"] for line in output.read_text(encoding="utf-8").split("\n") if line]


@CLI_SETTINGS
@given(conversations=conversations_strategy)
def test_import_export_round_trip(conversations, capsys):
    with Home() as home:
        source = home / "source.jsonl"
        write_jsonl(source, conversations)
        status = main(["import", str(source)])
        captured = capsys.readouterr()
        assert status == 0, captured.err
        assert f"Imported {len(conversations)} conversation" in captured.out

        exported = export_records(home, capsys)
        assert exported == conversations

    # Importing the export again gives the same file: nothing is added, lost or reordered.
    with Home() as home:
        again = home / "again.jsonl"
        write_jsonl(again, exported)
        assert main(["import", str(again)]) == 0
        capsys.readouterr()
        assert export_records(home, capsys) == conversations


BAD_LINES = [
    "{not json",
    "[1, 2, 3]",
    '"just a string"',
    "42",
    '{"conversation": []}',
    '{"messages": []}',
    '{"messages": "hello"}',
    '{"messages": [{"role": "robot", "content": "hi"}]}',
    '{"messages": [{"role": "user", "content": 7}]}',
    '{"messages": [{"role": "user"}]}',
    '{"messages": ["hi"]}',
    '{"messages": [{"role": "user", "content": "half \\ud800 a pair"}]}',
    "[" * 100_000,
]


@CLI_SETTINGS
@given(
    conversations=conversations_strategy,
    bad_line=st.sampled_from(BAD_LINES),
    position=st.integers(0, 4),
    blank_lines=st.lists(st.integers(0, 5), max_size=2),
)
def test_import_one_bad_line_imports_nothing(conversations, bad_line, position, blank_lines, capsys):
    lines = [json.dumps({"messages": m}, ensure_ascii=False) for m in conversations]
    position = min(position, len(lines))
    lines.insert(position, bad_line)
    # Blank lines are skipped, but they still count in the line number that the error names.
    for index in sorted(blank_lines, reverse=True):
        lines.insert(min(index, len(lines)), "")
    bad_line_number = lines.index(bad_line) + 1
    assume(lines.count(bad_line) == 1)

    with Home() as home:
        store = Store(home / "chatty.db")
        kept = store.create_conversation("Saved before")
        store.add_message(kept.id, "user", "keep me")
        store.close()

        source = home / "bad.jsonl"
        source.write_text("\n".join(lines) + "\n", encoding="utf-8")
        status = main(["import", str(source)])
        captured = capsys.readouterr()

        store = Store(home / "chatty.db")
        conversations_after = store.list_conversations()
        kept_messages = store.messages(kept.id)
        store.close()

    assert status == 1
    assert f"{source}:{bad_line_number}:" in captured.err
    assert captured.err.count("\n") == 1
    assert "Traceback" not in captured.err
    assert "unexpected" not in captured.err
    assert [c.id for c in conversations_after] == [kept.id]
    assert [m.content for m in kept_messages] == ["keep me"]


def test_import_windows_line_endings_and_bom(capsys):
    conversations = [[{"role": "user", "content": "first\u2028line"}], [{"role": "assistant", "content": "second"}]]
    lines = [json.dumps({"messages": m}, ensure_ascii=False) for m in conversations]
    with Home() as home:
        source = home / "windows.jsonl"
        source.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n")
        status = main(["import", str(source)])
        captured = capsys.readouterr()
        assert status == 0, captured.err
        assert export_records(home, capsys) == conversations
