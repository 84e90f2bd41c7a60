"""`chatty finetune`: train an adapter from a shell, with the engine the fine-tune screen uses.

It trains in the calling process, so the standard PyTorch launchers work unchanged:
`torchrun --nproc-per-node 2 -m chatty.cli finetune ...` trains with DistributedDataParallel, and
only rank 0 writes the adapter.
"""

from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import fields
from pathlib import Path

from chatty.config import FinetuneConfig
from chatty.errors import ChattyError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="name of the new adapter (a folder in the adapters folder)")
    data = parser.add_argument_group("training data (at least one)")
    data.add_argument("--conversation", type=int, action="append", default=[], metavar="ID",
                      help="train on conversation ID; repeat for more")
    data.add_argument("--search", metavar="QUERY", help="train on conversations with a message matching QUERY")
    data.add_argument("--starred", action="store_true", help="train on starred conversations")
    data.add_argument("--all", action="store_true", help="train on every saved conversation")
    data.add_argument("--jsonl", type=Path, metavar="FILE",
                      help='train on an OpenAI-style messages JSONL file ({"messages": [...]} per line)')
    parser.add_argument("--base", metavar="MODEL", help="base model id or path (default: the [model] default)")

    # One flag per training option; the option's help text in config.py is the flag's help.
    hyper = parser.add_argument_group("hyperparameters (defaults from [finetune] in config.toml)")
    hints = typing.get_type_hints(FinetuneConfig)
    for option in fields(FinetuneConfig):
        flag = "--" + option.name.replace("_", "-")
        kind = hints[option.name]
        # argparse expands % in help text, so a literal percent sign is written %%.
        help_text = option.metadata["help"].replace("%", "%%")
        if kind is bool:
            hyper.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(kind) is list:
            hyper.add_argument(flag, nargs="+", default=None, metavar="NAME", help=help_text)
        else:
            hyper.add_argument(flag, type=kind, default=None, metavar=kind.__name__.upper(), help=help_text)


def options_from(args: argparse.Namespace, defaults: FinetuneConfig) -> FinetuneConfig:
    """Return the config's [finetune] options with the flags given on the command line applied."""
    from chatty.finetune.options import apply_overrides

    overrides = {option.name: getattr(args, option.name) for option in fields(FinetuneConfig)}
    try:
        return apply_overrides(defaults, overrides, "command line")
    except ChattyError as error:
        # Name the flag the user typed: 'learning_rate' becomes '--learning-rate'.
        message = str(error)
        for option in fields(FinetuneConfig):
            message = message.replace(f"'{option.name}'", "'--" + option.name.replace("_", "-") + "'")
        raise ChattyError(message) from None


def select_training_data(args: argparse.Namespace, services):
    """Return the Selection for the data flags; conversations named with --conversation must have a reply."""
    from chatty.finetune import selection

    if not (args.conversation or args.search or args.starred or args.all or args.jsonl):
        raise ChattyError("Choose the training data: --conversation ID, --search QUERY, --starred, --all or --jsonl FILE.")

    store = services.store
    ids = list(args.conversation)
    for conversation_id in args.conversation:
        store.get_conversation(conversation_id)  # raises ConversationNotFound with a clear message
    if args.search:
        ids += [c.id for c in store.search_conversations(args.search, limit=100_000)]
    if args.starred:
        ids += [c.id for c in store.list_conversations(starred=True)]
    if args.all:
        ids += [c.id for c in reversed(store.list_conversations())]

    chosen = selection.from_store(store, ids, bool(args.include_unfinished), required=set(args.conversation))
    if args.jsonl:
        from_file = selection.from_jsonl(args.jsonl)
        chosen.conversations = from_file.conversations + chosen.conversations
        chosen.sources = from_file.sources + chosen.sources
    if not chosen.conversations:
        raise ChattyError("The selection matched no conversation with a complete reply. Check the ids, the search words or the stars.")
    return chosen


def run(args: argparse.Namespace, services) -> int:
    from chatty.finetune.job import DatasetReady, Evaluation, Progress, TrainingJob
    from chatty.finetune.trainer import Distributed, check_qlora_possible, train
    from chatty.finetune.writer import check_adapter_name
    from chatty.models.adapters import remove_stale_staging

    options = options_from(args, services.config.finetune)
    if options.qlora:
        check_qlora_possible()
    adapters_dir = services.paths.adapters_dir
    check_adapter_name(args.name, adapters_dir)
    remove_stale_staging(adapters_dir)
    base = services.runtime.catalog.resolve(args.base if args.base is not None else services.config.model.default)
    chosen = select_training_data(args, services)
    job = TrainingJob(
        name=args.name, base=base, conversations=chosen.conversations, sources=chosen.sources, options=options,
        adapters_dir=adapters_dir, cache_dir=services.paths.cache_dir, dtype=services.config.model.dtype,
        conversation_ids=chosen.ids,
    )

    show = Distributed().is_main
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

    console = Console(stderr=True, markup=False, highlight=False)
    if chosen.skipped and show:
        print(f"Left out {len(chosen.skipped)} conversations without a complete reply: "
              + ", ".join(str(conversation_id) for conversation_id, _ in chosen.skipped), file=sys.stderr)
    bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[detail]}"),
              TimeRemainingColumn(), console=console, disable=not show)
    task = bar.add_task(f"training {args.name}", total=None, detail="loading the base model")

    def report(event) -> None:
        if isinstance(event, DatasetReady):
            if show:
                bar.console.print(f"{event.train_examples} training and {event.validation_examples} validation conversations, "
                          f"{event.trainable_tokens} reply tokens to learn per epoch, {event.truncated} truncated "
                          f"to {options.max_seq_length} tokens.", soft_wrap=True)
            bar.update(task, total=event.total_steps, detail="")
        elif isinstance(event, Evaluation):
            if show:
                bar.console.print(f"validation loss at step {event.step}: {event.validation_loss:.4f}", soft_wrap=True)
        elif isinstance(event, Progress):
            bar.update(task, completed=event.step,
                       detail=f"epoch {event.epoch:.2f}  loss {event.loss:.4f}  {event.tokens_per_second:.0f} tok/s")

    with bar:
        finished = train(job, report)
    if finished is not None:
        before = finished.metadata.get("validation_loss_before")
        after = finished.metadata.get("validation_loss_after")
        if before is not None and after is not None:
            print(f"Validation loss: {before:.4f} before, {after:.4f} after training.")
        print(f"Saved adapter '{args.name}' to {finished.adapter_path}. Chat with it: chatty ask --adapter {args.name} \"...\"")
        if not finished.metadata.get("gguf", {}).get("written"):
            print(f"No LoRA GGUF was written, so only --backend torch can use it: {finished.metadata['gguf']['reason']}",
                  file=sys.stderr)
    return 0
