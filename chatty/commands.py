"""The command-line commands other than parsing: ask, list, models and the TUI."""

from __future__ import annotations

import argparse
import sys

from chatty.errors import ChattyError
from chatty.text import escape_controls


def _print_table(rows: list[tuple], headers: tuple[str, ...]) -> None:
    """Print a table: aligned columns on a terminal, tab-separated lines for scripts."""
    if not sys.stdout.isatty():
        for row in (headers, *rows):
            print("\t".join(str(cell) for cell in row))
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


def ask(args: argparse.Namespace, services) -> int:
    question = args.question
    if question is None:
        if sys.stdin.isatty():
            raise ChattyError('No question given. Run chatty ask "your question", or pipe the question on stdin.')
        question = sys.stdin.read()
    if not question.strip():
        raise ChattyError("The question is empty. Give some text to send.")

    services.runtime.load(getattr(args, "model", None), getattr(args, "backend", None))
    chat = services.chat
    store = services.store
    if args.continue_id is not None:
        conversation = store.get_conversation(args.continue_id)
    else:
        conversation = chat.new_conversation()
        if args.system is not None:
            store.update_conversation(conversation.id, system_prompt=args.system)

    overrides = {
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
    }
    overrides = {key: value for key, value in overrides.items() if value is not None}
    _check_overrides(overrides)
    if overrides:
        store.update_conversation(conversation.id, params={**conversation.params, **overrides})

    reply = chat.reply(conversation.id, question)
    escape = sys.stdout.isatty()
    try:
        for piece in reply:
            sys.stdout.write(escape_controls(piece) if escape else piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        # Ctrl+C stops the reply; the generator finishes and saves it as stopped.
        reply.cancel()
        for piece in reply:
            pass
        sys.stdout.write("\n")
        print(f"chatty: reply stopped; saved in conversation {conversation.id}.", file=sys.stderr)
        return 130
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


def _check_overrides(overrides: dict) -> None:
    if "temperature" in overrides and not 0 <= overrides["temperature"] <= 5:
        raise ChattyError(f"--temperature {overrides['temperature']} is out of range. Use a value from 0 to 5.")
    if "top_p" in overrides and not 0 < overrides["top_p"] <= 1:
        raise ChattyError(f"--top-p {overrides['top_p']} is out of range. Use a value above 0 and at most 1.")
    if "max_tokens" in overrides and overrides["max_tokens"] < 1:
        raise ChattyError(f"--max-tokens {overrides['max_tokens']} is invalid. Use a positive number of tokens.")


def list_conversations(args: argparse.Namespace, services) -> int:
    conversations = services.store.list_conversations(args.limit)
    if not conversations:
        print("No conversations yet. Start one with: chatty ask \"Hello\"")
        return 0
    rows = [
        (c.id, c.updated_at[:16].replace("T", " "), len(services.store.messages(c.id)), c.model or "", escape_controls(c.title))
        for c in conversations
    ]
    _print_table(rows, ("ID", "UPDATED (UTC)", "MESSAGES", "MODEL", "TITLE"))
    return 0


def list_models(args: argparse.Namespace, services) -> int:
    models = services.runtime.catalog.models()
    if not models:
        print("No models found. Put .gguf files in one of: " + ", ".join(str(p) for p in services.paths.model_dirs))
        return 0
    rows = [
        (m.id, ", ".join(m.backends), f"{m.size_bytes / 1e6:,.0f} MB", m.architecture, m.source, m.path)
        for m in models
    ]
    _print_table(rows, ("ID", "BACKENDS", "SIZE", "ARCHITECTURE", "SOURCE", "PATH"))
    return 0


def run_tui(args: argparse.Namespace, services) -> int:
    from chatty.tui.app import ChattyApp

    app = ChattyApp(services, model=getattr(args, "model", None), backend=getattr(args, "backend", None))
    app.run()
    return app.return_code or 0
