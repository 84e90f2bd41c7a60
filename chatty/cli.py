"""The `chatty` command: argument parsing and dispatch.

Nothing heavy is imported at module level, so `chatty --help` stays fast; textual, torch,
transformers and llama_cpp load only inside the commands that use them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from chatty import __version__
from chatty.config import Config, Paths, default_config_file, load_config, resolve_paths
from chatty.errors import ChattyError

log = logging.getLogger("chatty.cli")


@dataclass
class Services:
    """What every command works with, created once per run."""

    config: Config
    paths: Paths
    debug: bool = False
    config_file: Path | None = None

    def __post_init__(self):
        self._store = None
        self._runtime = None
        self._chat = None

    @property
    def store(self):
        if self._store is None:
            from chatty.store import Store

            self._store = Store(self.paths.db_file)
        return self._store

    @property
    def runtime(self):
        if self._runtime is None:
            from chatty.models.catalog import ModelCatalog
            from chatty.runtime import Runtime

            self._runtime = Runtime(self.config, ModelCatalog(self.paths.model_dirs), self.paths.cache_dir, self.paths.adapters_dir)
        return self._runtime

    @property
    def chat(self):
        if self._chat is None:
            from chatty.chat import ChatService

            self._chat = ChatService(self.config, self.store, self.runtime)
        return self._chat

    def close(self) -> None:
        if self._runtime is not None:
            self._runtime.close()
        if self._store is not None:
            self._store.close()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, metavar="PATH", default=argparse.SUPPRESS,
                        help=f"config file to read (default: {default_config_file()})")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="log at debug level and show tracebacks for errors")

    model_options = argparse.ArgumentParser(add_help=False)
    model_options.add_argument("--model", metavar="MODEL", default=argparse.SUPPRESS,
                               help="model id (see `chatty models`) or path to a .gguf file")
    model_options.add_argument("--backend", choices=("llama", "torch"), default=argparse.SUPPRESS,
                               help="runtime: llama (llama.cpp) or torch (transformers + PEFT)")

    parser = argparse.ArgumentParser(
        prog="chatty",
        description="Chat with local language models in the terminal. Without a command, opens the chat screen.",
        parents=[common, model_options],
    )
    parser.add_argument("--version", action="version", version=f"chatty {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    ask = commands.add_parser("ask", parents=[common, model_options], help="stream one reply to stdout and save it",
                              description="Send one message, stream the reply to stdout and save both as a conversation.")
    ask.add_argument("question", nargs="?", help="the message; read from stdin when omitted")
    ask.add_argument("--continue", dest="continue_id", type=int, metavar="ID",
                     help="append to conversation ID (see `chatty list`) instead of starting a new one")
    ask.add_argument("--system", metavar="TEXT", help="system prompt for a new conversation")
    ask.add_argument("--temperature", type=float, metavar="T", help="sampling temperature; 0 is greedy")
    ask.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling threshold, 0 to 1")
    ask.add_argument("--max-tokens", type=int, metavar="N", help="maximum number of tokens in the reply")
    ask.add_argument("--seed", type=int, metavar="N", help="random seed for sampling")
    ask.add_argument("--adapter", metavar="NAME", help="LoRA adapter to attach (see `chatty adapters`), by name or path")

    tokenize = commands.add_parser(
        "tokenize", parents=[common, model_options], help="print the tokens of a text with their ids",
        description="Tokenize text with the model's own tokenizer and print each token's id and piece.",
    )
    tokenize.add_argument("text", nargs="?", help="the text; read from stdin when omitted, including any final newline")
    tokenize.add_argument("--chat", action="store_true",
                          help="apply the model's chat template first, with the text as one user message")
    tokenize.add_argument("--json", action="store_true",
                          help='print a JSON list of {"id", "piece", "special", "bytes"} objects instead of a table')

    listing = commands.add_parser("list", parents=[common], help="list saved conversations, newest first")
    listing.add_argument("--limit", type=_positive_int, default=50, metavar="N",
                         help="show at most N conversations (default: 50)")

    commands.add_parser("models", parents=[common], help="list the models chatty finds, with their backends and sizes")
    commands.add_parser("adapters", parents=[common], help="list the LoRA adapters in the adapters folder")

    finetune = commands.add_parser("finetune", parents=[common], help="train a LoRA adapter on saved conversations",
                                   description="Train a LoRA adapter on saved conversations or a JSONL file. "
                                               "Runs unchanged under torchrun or accelerate launch with several processes.")
    from chatty.finetune.command import add_arguments

    add_arguments(finetune)

    export = commands.add_parser("export", parents=[common], help="write conversations as messages JSONL or Markdown")
    export.add_argument("--conversation", type=int, action="append", default=[], metavar="ID",
                        help="export conversation ID; repeat for more (default: all)")
    export.add_argument("--format", choices=("jsonl", "markdown"), default="jsonl",
                        help="jsonl: one OpenAI-style {\"messages\": [...]} object per line; markdown: for reading")
    export.add_argument("--output", "-o", type=Path, metavar="FILE", help="file to write (default: stdout)")

    importing = commands.add_parser("import", parents=[common], help="read conversations from a messages JSONL file")
    importing.add_argument("file", type=Path, help="JSONL file with one {\"messages\": [...]} object per line")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        config = load_config(getattr(args, "config", None))
        paths = resolve_paths(config)
    except ChattyError as error:
        print(f"chatty: {error}", file=sys.stderr)
        return error.exit_status

    from chatty.logs import setup_logging

    setup_logging(paths.log_file, debug)
    log.info("chatty %s started: %s", __version__, args.command or "tui")
    services = Services(config, paths, debug, getattr(args, "config", None) or default_config_file())
    try:
        return _dispatch(args, services)
    except ChattyError as error:
        log.error("%s", error)
        if debug:
            raise
        print(f"chatty: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        log.exception("unexpected error")
        if debug:
            raise
        print(f"chatty: unexpected error: {error}. Details are in {paths.log_file}; run with --debug for a traceback.",
              file=sys.stderr)
        return 1
    finally:
        services.close()


def _dispatch(args: argparse.Namespace, services: Services) -> int:
    from chatty import commands

    if args.command == "ask":
        return commands.ask(args, services)
    if args.command == "list":
        return commands.list_conversations(args, services)
    if args.command == "tokenize":
        return commands.tokenize(args, services)
    if args.command == "models":
        return commands.list_models(args, services)
    if args.command == "adapters":
        return commands.list_adapters(args, services)
    if args.command == "finetune":
        from chatty.finetune.command import run

        return run(args, services)
    if args.command == "export":
        return commands.export(args, services)
    if args.command == "import":
        return commands.import_file(args, services)
    return commands.run_tui(args, services)


if __name__ == "__main__":
    sys.exit(main())
