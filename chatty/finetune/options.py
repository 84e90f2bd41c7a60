"""Training options from user input, checked with the same rules as the [finetune] table of config.toml."""

from __future__ import annotations

import json
from dataclasses import fields

from chatty.config import FinetuneConfig, parse_config
from chatty.errors import ChattyError


def apply_overrides(defaults: FinetuneConfig, overrides: dict, source: str = "options") -> FinetuneConfig:
    """Return defaults with overrides applied; raises ChattyError naming the invalid option."""
    values = {option.name: getattr(defaults, option.name) for option in fields(FinetuneConfig)}
    values.update({name: value for name, value in overrides.items() if value is not None})
    lines = ["[finetune]"] + [f"{name} = {_toml(value)}" for name, value in values.items()]
    try:
        return parse_config("\n".join(lines), source).finetune
    except ChattyError as error:
        # "source:3: 'finetune.rank' must be ..." becomes "'rank' must be ...".
        message = str(error).split(": ", 1)[-1].replace("'finetune.", "'")
        raise ChattyError(f"Invalid training option: {message}") from None


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, str)):
        return json.dumps(value)
    return repr(value)
