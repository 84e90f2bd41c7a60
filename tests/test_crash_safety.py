"""Crash safety: SIGKILL while replies stream or adapters train, and several processes on one data folder.

Every test runs chatty in real child processes on the embedded model and reads the SQLite file
and the adapters folder directly, so nothing in the test's own process can hide what a kill left.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from chatty.models.adapters import (
    GGUF_FILE,
    METADATA_FILE,
    PEFT_CONFIG,
    PEFT_WEIGHTS,
    STAGING_PREFIX,
    AdapterCatalog,
    read_adapter,
)
from chatty.store import Store

CHATTY = [sys.executable, "-m", "chatty.cli"]
# Every child process of the running test, each the leader of its own process group.
_children: list[subprocess.Popen] = []


def start_child(command: list[str], **options) -> subprocess.Popen:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, **options)
    _children.append(process)
    return process


@pytest.fixture(autouse=True)
def kill_leftover_children():
    """Kill the process groups that a failed test left running, so they do not slow the next tests."""
    yield
    for process in _children:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    _children.clear()


class ChildRun:
    """A chatty command in its own process group, its stdout and stderr read with arrival times."""

    def __init__(self, arguments: list[str]):
        environment = {**os.environ, "PYTHONIOENCODING": "utf-8"}
        self.started = time.monotonic()
        self.process = start_child(CHATTY + arguments, stdin=subprocess.DEVNULL, env=environment)
        self.stdout_chunks: list[tuple[float, bytes]] = []
        self.stderr_chunks: list[bytes] = []
        self.first_output = threading.Event()
        self.killed_at: float | None = None
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, False), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe, is_stdout: bool) -> None:
        while chunk := os.read(pipe.fileno(), 65536):
            if is_stdout:
                self.stdout_chunks.append((time.monotonic(), chunk))
                self.first_output.set()
            else:
                self.stderr_chunks.append(chunk)

    @property
    def stdout(self) -> bytes:
        return b"".join(chunk for _, chunk in list(self.stdout_chunks))

    @property
    def stderr(self) -> bytes:
        return b"".join(list(self.stderr_chunks))

    @property
    def first_output_at(self) -> float:
        return self.stdout_chunks[0][0]

    def stdout_before(self, moment: float) -> bytes:
        return b"".join(chunk for arrived, chunk in list(self.stdout_chunks) if arrived <= moment)

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_until(self, condition, timeout: float) -> bool:
        """Poll `condition` every millisecond: True once it holds, False if the process exits first.

        Fails the test when neither happens within `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            if not self.running():
                return False
            time.sleep(0.001)
        command = " ".join(self.process.args[3:])
        raise AssertionError(f"waited {timeout} s for the moment to kill `{command}`; stderr: {self.stderr[-2000:]!r}")

    def kill(self) -> None:
        """Send SIGKILL to the whole process group, unless the command already exited."""
        if self.running():
            self.killed_at = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.finish()

    def finish(self, timeout: float = 600) -> int:
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        return code


def read_table(db: Path, table: str) -> dict[int, dict]:
    """Return every row of a table by id, read through a connection of the test's own."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.row_factory = sqlite3.Row
        return {row["id"]: dict(row) for row in connection.execute(f"SELECT * FROM {table} ORDER BY id")}


def check_database_intact(db: Path) -> None:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
        # Raises sqlite3.DatabaseError when the full-text index disagrees with the messages table.
        connection.execute("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")


# SIGKILL while replies stream

KILL_LOOP_SEED = 20240611
KILL_ROUNDS = 50
# Each round's kind, drawn at random: (name, share of rounds, max_tokens, kill window in seconds).
# "start" kills count from the process start and mostly land before the model is loaded. The
# others count from the first printed text: "short" replies mostly end inside their window, even
# on a busy machine, and "long" ones are mostly cut mid-stream, after several one-second saves.
ROUND_KINDS = [("start", 0.25, 1000, None), ("short", 0.2, 12, 2.0), ("long", 0.55, 1000, 4.0)]
# A kill may lose the last save interval (one second) of streamed text, and the allowance adds a
# second for scheduling delays. It counts back from the last printed text rather than from the kill.
# The reply saves only when a piece arrives, so a stalled generation saves nothing until its next piece.
LOSS_ALLOWANCE_SECONDS = 2.0
NEW_STORY = "Write a very long story about a dragon who learns to sing. Round {}."
CONTINUE_STORY = "Continue the story with many more details. Round {}."


def ask_arguments(question: str, max_tokens: int, seed: int, conversation_id: int | None) -> list[str]:
    arguments = ["ask", "--max-tokens", str(max_tokens), "--temperature", "0.8", "--seed", str(seed)]
    if conversation_id is not None:
        arguments += ["--continue", str(conversation_id)]
    return arguments + [question]


def check_kill_round(run: ChildRun, question: str, conversation_id: int | None, before: dict, after: dict,
                     conversations_before: dict) -> str:
    """Check what one killed `chatty ask` left in the database and return which case it was."""
    changed = [message_id for message_id, row in before.items() if after.get(message_id) != row]
    assert changed == [], f"messages saved by earlier, finished processes changed or vanished: {changed}"
    assert run.process.returncode in (0, -signal.SIGKILL), run.stderr[-2000:]

    new_rows = [after[message_id] for message_id in sorted(set(after) - set(before))]
    roles = [row["role"] for row in new_rows]
    assert roles in ([], ["user"], ["user", "assistant"]), new_rows
    if run.process.returncode == 0:
        assert roles == ["user", "assistant"]
    if not new_rows:
        return "killed before saving"

    user = new_rows[0]
    assert user["content"] == question
    assert user["status"] == "complete"
    if conversation_id is not None:
        assert user["conversation_id"] == conversation_id
    else:
        assert user["conversation_id"] not in conversations_before
    if len(new_rows) == 1:
        return "killed before the reply row"

    reply = new_rows[1]
    assert reply["conversation_id"] == user["conversation_id"]
    saved = reply["content"].encode("utf-8")
    printed = run.stdout
    # The reply prints each piece before saving it, so the saved text is always a prefix of the printed one.
    assert printed.startswith(saved), (saved, printed)
    if reply["status"] == "complete":
        assert printed in (saved, saved + b"\n")
        return "complete"

    assert reply["status"] == "interrupted"
    assert run.killed_at is not None
    # Output still in the pipe at the kill is read later, so the kill time caps the last output time.
    last_output_at = min(run.stdout_chunks[-1][0], run.killed_at) if run.stdout_chunks else run.killed_at
    printed_long_before = run.stdout_before(last_output_at - LOSS_ALLOWANCE_SECONDS)
    assert saved.startswith(printed_long_before), (
        f"text printed more than {LOSS_ALLOWANCE_SECONDS} s before the last printed text was not saved: "
        f"{printed_long_before!r} vs {saved!r}"
    )
    return "cut with text" if saved else "cut before any text"


def test_sigkill_during_replies_loses_nothing(chatty_home):
    db = chatty_home / "chatty.db"
    rng = random.Random(KILL_LOOP_SEED)

    # One full reply measures the start-up time, which bounds the "start" kill window.
    calibration = ChildRun(ask_arguments(NEW_STORY.format(0), 40, seed=0, conversation_id=None))
    assert calibration.finish() == 0, calibration.stderr
    startup_seconds = min(5.0, calibration.first_output_at - calibration.started)

    before = read_table(db, "messages")
    outcomes = Counter()
    for round_number in range(1, KILL_ROUNDS + 1):
        conversations = read_table(db, "conversations")
        # Every third round starts a conversation and the others continue the newest one, which keeps
        # the prompts short.
        conversation_id = None if round_number % 3 == 0 else max(conversations)
        template = NEW_STORY if conversation_id is None else CONTINUE_STORY
        question = template.format(round_number)
        seed = rng.randrange(2**31)
        kind, _, max_tokens, window = rng.choices(ROUND_KINDS, weights=[share for _, share, _, _ in ROUND_KINDS])[0]
        delay = rng.uniform(0, window if window is not None else startup_seconds * 1.2)

        run = ChildRun(ask_arguments(question, max_tokens, seed, conversation_id))
        if kind == "start":
            anchor = run.started
        else:
            run.wait_until(run.first_output.is_set, timeout=120)
            anchor = run.first_output_at if run.stdout_chunks else time.monotonic()
        run.wait_until(lambda: time.monotonic() >= anchor + delay, timeout=delay + 120)
        run.kill()

        after = read_table(db, "messages")
        plan = f"round {round_number} ({kind}): seed {seed}, kill {delay:.2f} s after {'start' if kind == 'start' else 'first output'}"
        try:
            outcomes[check_kill_round(run, question, conversation_id, before, after, conversations)] += 1
        except AssertionError as error:
            raise AssertionError(f"{plan}: {error}") from error
        before = after
        if round_number % 10 == 0:
            check_database_intact(db)

    check_database_intact(db)
    # The kill times must have covered each phase, or the loop tested less than it claims.
    assert outcomes["killed before saving"] >= 1, outcomes
    assert outcomes["cut with text"] >= 3, outcomes
    assert outcomes["complete"] >= 1, outcomes

    # chatty still works on the data folder, and the new reply changes no older message.
    final = ChildRun(ask_arguments("One more short story, please.", 20, seed=1, conversation_id=max(read_table(db, "conversations"))))
    assert final.finish() == 0, final.stderr
    after = read_table(db, "messages")
    assert {message_id: after[message_id] for message_id in before} == before
    assert [row["status"] for row in after.values()][-1] == "complete"


# Several processes writing to one data folder


def test_two_ask_processes_share_data_folder(chatty_home):
    db = chatty_home / "chatty.db"
    # One llama.cpp thread each, so the two processes do not slow each other down on a small machine.
    (chatty_home / "config.toml").write_text("[model]\nthreads = 1\n", encoding="utf-8")

    # Both start on a folder without a database, so both create and migrate it at once.
    questions = ["Tell me a story about a fox.", "Tell me a story about an owl."]
    runs = [ChildRun(["ask", "--max-tokens", "40", "--seed", "1", question]) for question in questions]
    for run in runs:
        assert run.finish(timeout=180) == 0, run.stderr
        assert run.stderr == b""
    conversations = read_table(db, "conversations")
    messages = list(read_table(db, "messages").values())
    assert len(conversations) == 2
    assert len(messages) == 4
    for question, run in zip(questions, runs):
        user = next(row for row in messages if row["content"] == question)
        reply = next(row for row in messages if row["conversation_id"] == user["conversation_id"] and row["role"] == "assistant")
        assert reply["status"] == "complete"
        assert reply["content"].encode("utf-8") + b"\n" == run.stdout

    # Both continue the same conversation at once: all four new messages are kept.
    first = min(conversations)
    questions = ["What happened next to the fox?", "And what did the fox eat?"]
    runs = [ChildRun(["ask", "--continue", str(first), "--max-tokens", "40", "--seed", "2", question]) for question in questions]
    for run in runs:
        assert run.finish(timeout=180) == 0, run.stderr
        assert run.stderr == b""
    new_messages = [row for row in read_table(db, "messages").values() if row["id"] > max(m["id"] for m in messages)]
    assert sorted(row["content"] for row in new_messages if row["role"] == "user") == sorted(questions)
    assert [row["status"] for row in new_messages] == ["complete"] * 4
    assert {row["conversation_id"] for row in new_messages} == {first}
    replies = sorted(row["content"].encode("utf-8") + b"\n" for row in new_messages if row["role"] == "assistant")
    assert replies == sorted(run.stdout for run in runs)

    # A "database is locked" error would show on stderr, checked above, and as an ERROR record here.
    log_text = (chatty_home / "logs" / "chatty.log").read_text(encoding="utf-8")
    assert " ERROR " not in log_text
    check_database_intact(db)


WRITER_PROCESSES = 4
WRITES_PER_PROCESS = 300
# Each writer imports chatty, reports that it is ready and waits for the start file. Then it saves
# messages the way a streaming reply does, with an insert and then an update. Every tenth message,
# it reads its conversation back as a screen would.
WRITER_SCRIPT = """
import sys, time
from pathlib import Path
from chatty.store import Store

db, start_file, name, count = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
start_file.with_name(name + ".ready").touch()
while not start_file.exists():
    time.sleep(0.001)
store = Store(db)
conversation = store.create_conversation(title=name)
for index in range(count):
    message = store.add_message(conversation.id, "assistant", "", status="interrupted")
    store.update_message(message.id, content=f"{name} {index}", status="complete")
    if index % 10 == 0:
        store.messages(conversation.id)
store.close()
"""


def test_store_writer_processes_lose_nothing(chatty_home, tmp_path):
    db = chatty_home / "chatty.db"
    start_file = tmp_path / "start"
    names = [f"writer{number}" for number in range(WRITER_PROCESSES)]
    writers = [
        start_child([sys.executable, "-c", WRITER_SCRIPT, str(db), str(start_file), name, str(WRITES_PER_PROCESS)])
        for name in names
    ]
    # Start them together once all have imported chatty, so they all open the new database at once.
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"{name}.ready").exists() for name in names):
        assert time.monotonic() < deadline, "the writer processes did not start"
        time.sleep(0.01)
    start_file.touch()
    for writer in writers:
        stdout, stderr = writer.communicate(timeout=300)
        assert writer.returncode == 0, stderr.decode(errors="replace")
        assert stderr == b""

    conversations = {row["title"]: row["id"] for row in read_table(db, "conversations").values()}
    assert sorted(conversations) == names
    messages = read_table(db, "messages").values()
    for name in names:
        saved = [(row["content"], row["status"]) for row in messages if row["conversation_id"] == conversations[name]]
        assert saved == [(f"{name} {index}", "complete") for index in range(WRITES_PER_PROCESS)]
    check_database_intact(db)


OPENING_ROUNDS = 30
# In every round, each opener process opens the same new data folder at the same moment, as happens
# when two chatty programs start together for the first time. Start files line up the rounds.
OPENER_SCRIPT = """
import sys, time
from pathlib import Path
from chatty.store import Store

folder, name, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for number in range(rounds):
    (folder / f"{name}.ready{number}").touch()
    while not (folder / f"start{number}").exists():
        time.sleep(0.0005)
    store = Store(folder / str(number) / "chatty.db")
    store.add_message(store.create_conversation(title=name).id, "user", name)
    store.close()
"""


def test_processes_create_database_at_once(tmp_path):
    names = [f"opener{number}" for number in range(WRITER_PROCESSES)]
    openers = [
        start_child([sys.executable, "-c", OPENER_SCRIPT, str(tmp_path), name, str(OPENING_ROUNDS)])
        for name in names
    ]
    for number in range(OPENING_ROUNDS):
        deadline = time.monotonic() + 120
        # An opener that failed never gets ready; its error is reported below.
        while not all((tmp_path / f"{name}.ready{number}").exists() for name in names):
            if any(opener.poll() is not None for opener in openers):
                break
            assert time.monotonic() < deadline, f"the openers did not reach round {number}"
            time.sleep(0.001)
        (tmp_path / f"start{number}").touch()
    for opener in openers:
        stdout, stderr = opener.communicate(timeout=120)
        assert opener.returncode == 0, stderr.decode(errors="replace")[-3000:]
        assert stderr == b""

    for number in range(OPENING_ROUNDS):
        db = tmp_path / str(number) / "chatty.db"
        assert sorted(row["title"] for row in read_table(db, "conversations").values()) == names
        check_database_intact(db)


# SIGKILL while an adapter trains and is written

# One optimizer step on short examples. Rank 64 on every projection makes the adapter files large
# enough that writing them takes time (about 1.3 s measured on 2 CPU cores), so the kills land inside it.
TRAINING_ARGUMENTS = ["--all", "--epochs", "1", "--max-seq-length", "48", "--batch-size", "4", "--rank", "64"]


def staging_folders(adapters_dir: Path) -> list[Path]:
    if not adapters_dir.is_dir():
        return []
    return sorted(path for path in adapters_dir.iterdir() if path.name.startswith(STAGING_PREFIX))


def folder_names(adapters_dir: Path) -> set[str]:
    return {path.name for path in adapters_dir.iterdir()} if adapters_dir.is_dir() else set()


def new_folder_contains(adapters_dir: Path, known: set[str], predicate) -> bool:
    """Whether a folder that appeared in the adapters folder, staged or not, has a file whose name matches."""
    for folder in adapters_dir.iterdir() if adapters_dir.is_dir() else []:
        if folder.name in known:
            continue
        # A staging folder can be renamed between listing the adapters folder and listing it.
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            if any(predicate(name) for name in os.listdir(folder)):
                return True
    return False


def check_visible_adapters_complete(adapters_dir: Path) -> list[str]:
    """Check that every adapter folder chatty can see has all its files, and return their names."""
    import gguf

    visible = sorted(path for path in adapters_dir.iterdir() if not path.name.startswith(".")) if adapters_dir.is_dir() else []
    for folder in visible:
        for file_name in (PEFT_CONFIG, PEFT_WEIGHTS, GGUF_FILE, METADATA_FILE):
            assert (folder / file_name).is_file(), f"{folder} lacks {file_name}"
        adapter = read_adapter(folder)
        assert adapter.metadata["gguf"]["written"] is True
        assert adapter.metadata["losses"]["train"]
        assert len(gguf.GGUFReader(folder / GGUF_FILE).tensors) > 0
    return [folder.name for folder in visible]


def check_catalog_lists(adapters_dir: Path, expected: list[str]) -> None:
    """Check that the adapter catalog lists exactly `expected`, skips nothing and leaves no dead run's staging folder."""
    catalog = AdapterCatalog(adapters_dir)
    assert [adapter.name for adapter in catalog.adapters()] == expected
    assert catalog.skipped == []
    assert staging_folders(adapters_dir) == []


def database_snapshot(db: Path) -> tuple[dict, dict]:
    return read_table(db, "conversations"), read_table(db, "messages")


def add_training_conversations(db: Path) -> None:
    store = Store(db)
    for topic in ("rain", "owls", "maps"):
        conversation = store.create_conversation(f"About {topic}")
        store.add_message(conversation.id, "user", f"Tell me about {topic}.")
        store.add_message(conversation.id, "assistant", f"{topic.capitalize()} are lovely. Bye!")
    unfinished = store.create_conversation("Cut short")
    store.add_message(unfinished.id, "user", "Tell me about tea.")
    store.add_message(unfinished.id, "assistant", "Tea is", status="interrupted")
    store.close()


def test_sigkill_during_training_leaves_no_partial_adapter(chatty_home, torch_cache_dir, tmp_path):
    db = chatty_home / "chatty.db"
    adapters_dir = chatty_home / "adapters"
    add_training_conversations(db)
    snapshot = database_snapshot(db)
    # Share the session's converted model, so at most the first run here converts the GGUF.
    torch_cache_dir.mkdir(parents=True, exist_ok=True)
    (chatty_home / "cache").symlink_to(torch_cache_dir, target_is_directory=True)

    def printed(text: bytes):
        return lambda run, known: text in run.stderr

    def written(predicate):
        return lambda run, known: new_folder_contains(adapters_dir, known, predicate)

    start_delay = random.Random(KILL_LOOP_SEED).uniform(0.1, 1.5)
    moments = [
        # Reading the conversations or importing torch.
        ("starting", lambda run, known: time.monotonic() - run.started >= start_delay),
        # The dataset line is printed once the examples are built, right before the optimizer steps.
        ("training", printed(b"validation conversations")),
        # The adapter's folder appears, then PEFT's files, then the GGUF conversion reads them.
        ("writing PEFT files", lambda run, known: bool(folder_names(adapters_dir) - known)),
        ("converting to GGUF", written(lambda name: name == PEFT_WEIGHTS)),
        ("writing the GGUF", written(lambda name: name.endswith(".tmp") or name == GGUF_FILE)),
    ]
    hits = []
    leftovers = {}
    kept_leftovers = []
    for moment, condition in moments:
        name = moment.replace(" ", "-")
        known = folder_names(adapters_dir)
        run = ChildRun(["finetune", "--name", name, *TRAINING_ARGUMENTS])
        reached = run.wait_until(lambda: condition(run, known), timeout=480)
        run.kill()
        assert run.process.returncode in (0, -signal.SIGKILL), f"{moment}: {run.stderr[-3000:]!r}"
        if reached and run.process.returncode == -signal.SIGKILL:
            hits.append(moment)

        # A kill leaves the adapter whole or absent, and the conversations as they were.
        visible = check_visible_adapters_complete(adapters_dir)
        assert database_snapshot(db) == snapshot, moment
        check_database_intact(db)
        leftovers[moment] = [folder.name for folder in staging_folders(adapters_dir)]
        if moment == moments[-1][0]:
            # Keep the last run's leftover, to check below that the next training run removes it.
            kept_leftovers += [shutil.copytree(folder, tmp_path / folder.name) for folder in staging_folders(adapters_dir)]
        # The catalog's scan removes the staging folder of the killed run.
        check_catalog_lists(adapters_dir, visible)

    # Each moment was reached while the run was alive, so the kills landed in the phases named above,
    # and each of the three kills during writing left its staging folder behind.
    assert hits == [moment for moment, _ in moments]
    for moment in ("starting", "training"):
        assert leftovers[moment] == []
    for moment in ("writing PEFT files", "converting to GGUF", "writing the GGUF"):
        assert len(leftovers[moment]) == 1, leftovers
        assert leftovers[moment][0].startswith(STAGING_PREFIX + moment.replace(" ", "-") + "-"), leftovers

    # The next training run removes the leftover of a killed run and writes a whole adapter.
    for folder in kept_leftovers:
        shutil.move(folder, adapters_dir / folder.name)
    assert staging_folders(adapters_dir) != []
    final = ChildRun(["finetune", "--name", "final", *TRAINING_ARGUMENTS])
    assert final.finish() == 0, final.stderr[-3000:]
    assert staging_folders(adapters_dir) == []
    visible = check_visible_adapters_complete(adapters_dir)
    assert "final" in visible
    check_catalog_lists(adapters_dir, visible)
    assert database_snapshot(db) == snapshot
    check_database_intact(db)
