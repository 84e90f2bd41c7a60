"""The command-line commands other than parsing: ask, tokenize, list, models and the TUI."""

from __future__ import annotations

import argparse
import re
import sys

from chatty.errors import ChattyError
from chatty.text import escape_controls


def _print_table(rows: list[tuple], headers: tuple[str, ...]) -> None:
    """Print a table: aligned columns on a terminal, tab-separated lines for scripts."""
    if not sys.stdout.isatty():
        for row in (headers, *rows):
            # A tab or newline inside a cell would split it into columns or rows of its own.
            print("\t".join(str(cell).replace("\t", " ").replace("\n", " ") for cell in row))
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    # Titles and paths are user data: markup=False keeps "[...]" in them from being read as style.
    Console(markup=False, highlight=False).print(table)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _report_skipped(skipped) -> None:
    """Name the entries a listing left out, so a broken file does not vanish without a word."""
    for path, reason in skipped:
        print(f"chatty: skipped {path}: {reason}", file=sys.stderr)


def ask(args: argparse.Namespace, services) -> int:
    question = args.question
    if question is None:
        if sys.stdin.isatty():
            raise ChattyError('No question given. Run chatty ask "your question", or pipe the question on stdin.')
        # A piped question ends with the newline of its last line, which is not part of it.
        question = _read_stdin("question").rstrip("\n")
    if not question.strip():
        raise ChattyError("The question is empty. Give some text to send.")
    if args.system is not None and args.continue_id is not None:
        raise ChattyError("--system sets the system prompt of a new conversation, so it cannot be used with --continue.")
    overrides = {"temperature": args.temperature, "top_p": args.top_p, "max_tokens": args.max_tokens, "seed": args.seed}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    _check_overrides(overrides)

    services.runtime.load(getattr(args, "model", None), getattr(args, "backend", None))
    if args.adapter:
        services.runtime.set_adapter(args.adapter)
    chat = services.chat
    store = services.store
    if args.continue_id is not None:
        conversation = store.get_conversation(args.continue_id)
    else:
        conversation = chat.new_conversation()
        if args.system is not None:
            store.update_conversation(conversation.id, system_prompt=args.system)
    if overrides:
        store.update_conversation(conversation.id, params={**conversation.params, **overrides})

    try:
        reply = chat.reply(conversation.id, question)
    except ChattyError:
        # A conversation made for this question and left empty would only clutter the list.
        if args.continue_id is None and not store.messages(conversation.id):
            store.delete_conversation(conversation.id)
        raise

    escape = sys.stdout.isatty()
    try:
        for piece in reply:
            sys.stdout.write(escape_controls(piece) if escape else piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        # The reply saved itself as stopped when the interrupt left its loop.
        sys.stdout.write("\n")
        print(f"chatty: reply stopped; saved in conversation {conversation.id}.", file=sys.stderr)
        return 130
    sys.stdout.write("\n")
    sys.stdout.flush()
    if reply.save_error:
        raise ChattyError(f"The reply above could not be saved: {reply.save_error}.")
    return 0


def _read_stdin(name: str) -> str:
    """Read stdin as UTF-8, with a clear error for other encodings instead of a UnicodeDecodeError."""
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ChattyError(f"The {name} on stdin is not valid UTF-8 (byte {error.start + 1} is 0x{data[error.start]:02x}). "
                          "Convert it to UTF-8, for example with iconv.") from None


def _check_overrides(overrides: dict) -> None:
    # "not within" also rejects NaN, for which every comparison is false.
    if "temperature" in overrides and not 0 <= overrides["temperature"] <= 5:
        raise ChattyError(f"--temperature {overrides['temperature']} is out of range. Use a value from 0 to 5.")
    if "top_p" in overrides and not 0 < overrides["top_p"] <= 1:
        raise ChattyError(f"--top-p {overrides['top_p']} is out of range. Use a value above 0 and at most 1.")
    if "max_tokens" in overrides and overrides["max_tokens"] < 1:
        raise ChattyError(f"--max-tokens {overrides['max_tokens']} is invalid. Use a positive number of tokens.")


def tokenize(args: argparse.Namespace, services) -> int:
    """Print the tokens of a text: a table on a terminal, tab-separated lines in a pipe, or JSON."""
    import json

    from chatty.inspect import printable_piece

    text = args.text
    if text is None:
        if sys.stdin.isatty():
            raise ChattyError('No text given. Run chatty tokenize "your text", or pipe the text on stdin.')
        text = _read_stdin("text")

    backend = services.runtime.load(getattr(args, "model", None), getattr(args, "backend", None))
    if args.chat:
        token_ids = backend.tokenize_prompt([{"role": "user", "content": text}])
    else:
        token_ids = backend.tokenize(text)
    pieces = backend.token_pieces(token_ids)

    escape = sys.stdout.isatty()
    if args.json:
        records = [{"id": p.id, "piece": p.piece, "special": p.special, "bytes": p.data.hex()} for p in pieces]
        output = json.dumps(records, ensure_ascii=False, indent=1 if escape else None)
        # JSON escapes C0 controls but not DEL or C1 controls, which terminals may act on.
        print(_JSON_UNESCAPED_CONTROLS.sub(lambda match: f"\\u{ord(match[0]):04x}", output))
        return 0

    rows = []
    for index, piece in enumerate(pieces):
        piece_text = printable_piece(piece.piece)
        if escape:
            # Quotes show where a piece starts and ends, which matters for pieces that begin with a space.
            piece_text = '"' + escape_controls(piece_text).replace('"', '\\"') + '"'
        rows.append((index, piece.id, piece_text, "yes" if piece.special else ""))
    _print_table(rows, ("#", "ID", "PIECE", "SPECIAL"))
    if escape:
        print(f"{len(pieces)} tokens")
    return 0


_JSON_UNESCAPED_CONTROLS = re.compile("[\x7f-\x9f]")


def list_conversations(args: argparse.Namespace, services) -> int:
    conversations = services.store.list_conversations(args.limit)
    if not conversations:
        print("No conversations yet. Start one with: chatty ask \"Hello\"")
        return 0
    counts = services.store.message_counts()
    rows = [
        (c.id, c.updated_at[:16].replace("T", " "), counts.get(c.id, 0), c.model or "", escape_controls(c.title))
        for c in conversations
    ]
    _print_table(rows, ("ID", "UPDATED (UTC)", "MESSAGES", "MODEL", "TITLE"))
    return 0


def list_models(args: argparse.Namespace, services) -> int:
    models = services.runtime.catalog.models()
    _report_skipped(services.runtime.catalog.skipped)
    if not models:
        print("No models found. Put .gguf files in one of: " + ", ".join(str(p) for p in services.paths.model_dirs))
        return 0
    rows = [
        (m.id, ", ".join(m.backends), f"{m.size_bytes / 1e6:,.0f} MB", m.architecture, m.source, m.path)
        for m in models
    ]
    _print_table(rows, ("ID", "BACKENDS", "SIZE", "ARCHITECTURE", "SOURCE", "PATH"))
    return 0


def list_adapters(args: argparse.Namespace, services) -> int:
    catalog = services.runtime.adapters
    adapters = catalog.adapters()
    _report_skipped(catalog.skipped)
    if not adapters:
        print(f"No adapters yet in {catalog.folder}. Train one with: chatty finetune --name NAME --all")
        return 0
    rows = []
    for adapter in adapters:
        size = sum(f.stat().st_size for f in adapter.path.iterdir() if f.is_file())
        rows.append((adapter.name, adapter.base_model_id or "unknown", ", ".join(adapter.backends), adapter.rank,
                     adapter.alpha, f"{size / 1e6:,.1f} MB"))
    _print_table(rows, ("NAME", "BASE MODEL", "BACKENDS", "RANK", "ALPHA", "SIZE"))
    return 0


def export(args: argparse.Namespace, services) -> int:
    from chatty.jsonl import write_jsonl_lines

    store = services.store
    ids = args.conversation or [c.id for c in reversed(store.list_conversations())]
    conversations = [store.get_conversation(conversation_id) for conversation_id in ids]
    if args.format == "jsonl":
        records = []
        for conversation in conversations:
            messages = [{"role": "system", "content": conversation.system_prompt}] if conversation.system_prompt else []
            messages += [message.as_chat() for message in store.messages(conversation.id)]
            records.append(messages)
        text = write_jsonl_lines(records)
    else:
        text = "\n".join(_markdown(conversation, store.messages(conversation.id)) for conversation in conversations)
    if args.output:
        try:
            args.output.write_text(text, encoding="utf-8")
        except OSError as error:
            raise ChattyError(f"Cannot write {args.output}: {error.strerror}. Give a file path in a writable folder.") from None
        print(f"Wrote {_count(len(conversations), 'conversation')} to {args.output}.", file=sys.stderr)
    else:
        sys.stdout.write(escape_controls(text) if sys.stdout.isatty() else text)
    return 0


def _markdown(conversation, messages) -> str:
    lines = [f"# {conversation.title}", ""]
    if conversation.system_prompt:
        lines += ["**system**", "", conversation.system_prompt, ""]
    for message in messages:
        details = f" ({message.model}, {message.status})" if message.role == "assistant" and message.model else ""
        lines += [f"**{message.role}**{details}", "", message.content, ""]
    return "\n".join(lines)


def import_file(args: argparse.Namespace, services) -> int:
    from chatty.chat import DEFAULT_TITLE, title_from
    from chatty.jsonl import read_jsonl

    conversations = read_jsonl(args.file)
    entries = []
    for messages in conversations:
        first_user = next((m["content"] for m in messages if m["role"] == "user" and m["content"].strip()), "")
        entries.append((title_from(first_user) if first_user else DEFAULT_TITLE, messages))
    ids = services.store.import_conversations(entries)
    span = f"id {ids[0]}" if len(ids) == 1 else f"ids {ids[0]} to {ids[-1]}"
    print(f"Imported {_count(len(ids), 'conversation')} from {args.file} ({span}).")
    return 0


def run_tui(args: argparse.Namespace, services) -> int:
    from chatty.tui.app import ChattyApp

    # Opening the store first reports an unusable data folder in one line, before the app takes the terminal.
    _ = services.store
    app = ChattyApp(services, model=getattr(args, "model", None), backend=getattr(args, "backend", None))
    app.run()
    return app.return_code or 0
