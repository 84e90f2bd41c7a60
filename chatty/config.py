"""Configuration: built-in defaults, loading and validating config.toml, and the data folders.

The defaults are dataclasses whose fields carry their help text, so the reference config.toml at
the top of the repository is generated from them (`python -m chatty.config > config.toml`) and a
test keeps the two equal.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from chatty.errors import ConfigError

APP_NAME = "chatty"
HOME_ENV = "CHATTY_HOME"
# TOML integers are 64-bit signed; tomllib returns larger ones as Python ints instead of failing.
TOML_INT_RANGE = range(-(2**63), 2**63)
# Values quoted in error messages are cut to this many characters, so a message stays one short line.
MAX_QUOTED_VALUE = 60


def _option(default, help: str, choices: tuple = (), minimum=None, maximum=None, rule=None):
    """A config field; `rule` is (check, requirement), where check(value) is True for valid values."""
    metadata = {"help": help, "choices": choices, "min": minimum, "max": maximum, "rule": rule}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class PathsConfig:
    """Folders; an empty string selects the default."""

    data_dir: str = _option(
        "", "Data folder for chatty.db, models/, adapters/ and cache/. Empty: $CHATTY_HOME, else the platform's user data folder."
    )
    model_dirs: list[str] = _option([], "Extra folders scanned for .gguf files, besides ./models and <data_dir>/models.")
    adapters_dir: str = _option("", "Folder of LoRA adapters. Empty: <data_dir>/adapters.")


@dataclass
class ModelConfig:
    """The model that new chats start with."""

    default: str = _option("", "Model id (as `chatty models` lists it) or path to a .gguf file. Empty: the embedded SmolLM2-135M-Instruct.")
    backend: str = _option("llama", "Runtime: llama (llama.cpp, GGUF) or torch (transformers + PEFT).", choices=("llama", "torch"))
    # llama-cpp-python sizes its token buffer by n_ctx while llama.cpp rounds small contexts up, so
    # tiny values break generation; 256 tokens is below any useful chat.
    n_ctx: int = _option(
        4096, "Context window in tokens. 0: the model's training context.", minimum=0,
        rule=(lambda value: value == 0 or value >= 256, "0 or at least 256"),
    )
    threads: int = _option(0, "CPU threads for llama.cpp. 0: one per available core, less one in the TUI for the interface.", minimum=0)
    trust_remote_code: list[str] = _option(
        [], "Ids of Hugging Face model folders allowed to run Python code they ship (transformers' trust_remote_code). "
        "Empty: none. Add only models whose code you have read."
    )
    dtype: str = _option(
        "auto",
        "PyTorch weight dtype. auto: bfloat16 on CUDA, float32 elsewhere.",
        choices=("auto", "float32", "bfloat16", "float16"),
    )


@dataclass
class GenerationConfig:
    """Defaults for new conversations; each conversation can change them."""

    system_prompt: str = _option("", "System prompt. Empty: the model's chat template decides.")
    temperature: float = _option(0.2, "Sampling temperature. 0: greedy decoding.", minimum=0.0, maximum=5.0)
    top_p: float = _option(0.9, "Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p.", minimum=0.0, maximum=1.0)
    max_tokens: int = _option(1024, "Maximum number of tokens in one reply.", minimum=1)


@dataclass
class FinetuneConfig:
    """LoRA fine-tuning defaults; the fine-tune screen and `chatty finetune` flags start from these."""

    rank: int = _option(8, "LoRA rank r: the inner dimension of each low-rank update.", minimum=1)
    alpha: float = _option(16.0, "LoRA alpha: updates are scaled by alpha / rank.", minimum=0.0)
    dropout: float = _option(0.05, "Dropout on the LoRA input during training.", minimum=0.0, maximum=1.0)
    target_modules: list[str] = _option(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "Names of the linear layers that get LoRA updates (Hugging Face module names).",
    )
    learning_rate: float = _option(1e-3, "Peak learning rate of AdamW, reached after warmup and decayed by a cosine.", minimum=0.0)
    epochs: int = _option(3, "Passes over the training conversations.", minimum=1)
    max_seq_length: int = _option(512, "Tokens per example; longer conversations are truncated.", minimum=16)
    batch_size: int = _option(4, "Conversations per optimizer micro-batch, grouped by length to avoid padding.", minimum=1)
    gradient_accumulation: int = _option(1, "Micro-batches summed into one optimizer step.", minimum=1)
    seed: int = _option(0, "Random seed for LoRA initialization, shuffling and the validation split.")
    validation_fraction: float = _option(
        0.1, "Share of conversations held out to measure validation loss (needs at least 8 conversations).", minimum=0.0, maximum=0.5
    )
    gradient_checkpointing: bool = _option(False, "Recompute activations in the backward pass: less memory, about 30% slower.")
    qlora: bool = _option(False, "Load the base in 4-bit NF4 with bitsandbytes (QLoRA). Needs a CUDA GPU.")
    include_unfinished: bool = _option(False, "Also train on replies that were stopped or interrupted.")


@dataclass
class UIConfig:
    """The terminal interface."""

    theme: str = _option("textual-dark", "Textual theme name, as the command palette's theme picker lists them.")


@dataclass
class KeysConfig:
    """Key bindings by binding id. Several keys are separated by commas, e.g. "ctrl+s,f5"."""

    send: str = _option("enter", "Send the prompt.")
    newline: str = _option("ctrl+j,shift+enter", "Insert a newline in the prompt (shift+enter works only where the terminal reports it).")
    stop: str = _option("escape", "Stop the reply that is streaming.")
    new_conversation: str = _option("ctrl+n", "Start a new conversation.")
    rename_conversation: str = _option("f2", "Rename the selected conversation.")
    delete_conversation: str = _option("f8", "Delete the selected conversation, after confirmation.")
    search: str = _option("ctrl+f", "Search all messages.")
    settings: str = _option("f4", "Edit the system prompt and generation parameters of this conversation.")
    switch_model: str = _option("ctrl+t", "Choose the model, backend and adapter for the next replies.")
    star_conversation: str = _option("f9", "Star or unstar the selected conversation (for picking training data).")
    finetune: str = _option("ctrl+r", "Open the fine-tune screen: train a LoRA adapter on saved conversations.")
    use_adapter: str = _option("f6", "On the fine-tune screen: switch the chat to the adapter just trained.")
    close_finetune: str = _option("escape", "Leave the fine-tune screen (asks first while training runs).")
    copy_reply: str = _option("f5", "Copy the selected reply, or the last one.")
    copy_code: str = _option("ctrl+o", "Copy a code block from the selected reply, or the last one.")
    show_prompt: str = _option("f3", "Show the prompt and its tokens for the selected message, or for the text in the prompt box.")
    show_odds: str = _option("ctrl+g", "Show the next-token odds of the selected reply, or of the last one.")
    model_card: str = _option("f10", "Show model and adapter cards: architecture, size, quantization and LoRA settings.")
    focus_prompt: str = _option("ctrl+l", "Move the cursor to the prompt.")
    toggle_sidebar: str = _option("ctrl+b", "Show or hide the conversation list.")
    help: str = _option("f1", "Show the key bindings.")
    quit: str = _option("ctrl+q", "Quit chatty.")


@dataclass
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    ui: UIConfig = field(default_factory=UIConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)

    def keymap(self) -> dict[str, str]:
        """Return binding id -> keys, in the form Textual's App.set_keymap takes."""
        return {f.name: getattr(self.keys, f.name) for f in fields(self.keys)}


@dataclass(frozen=True)
class Paths:
    """Where chatty keeps its files."""

    data_dir: Path
    log_dir: Path
    adapters_dir: Path
    model_dirs: tuple[Path, ...]

    @property
    def db_file(self) -> Path:
        return self.data_dir / "chatty.db"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def log_file(self) -> Path:
        return self.log_dir / "chatty.log"


def default_config_file() -> Path:
    """Return the config file read when --config is not given."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser() / "config.toml"

    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / "config.toml"


def resolve_paths(config: Config, project_dir: Path | None = None) -> Paths:
    """Resolve the data, log, adapter and model folders; CHATTY_HOME takes precedence over config."""
    import platformdirs

    home = os.environ.get(HOME_ENV)
    if home:
        data_dir = Path(home).expanduser()
        log_dir = data_dir / "logs"
    else:
        if config.paths.data_dir:
            data_dir = Path(config.paths.data_dir).expanduser()
        else:
            data_dir = Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
        log_dir = Path(platformdirs.user_log_dir(APP_NAME, appauthor=False))

    adapters_dir = Path(config.paths.adapters_dir).expanduser() if config.paths.adapters_dir else data_dir / "adapters"

    # ./models is the project-local model folder; it only counts when chatty runs from a checkout.
    model_dirs = [data_dir / "models"]
    local_models = (project_dir or Path.cwd()) / "models"
    if local_models.is_dir():
        model_dirs.insert(0, local_models)
    model_dirs.extend(Path(p).expanduser() for p in config.paths.model_dirs)
    return Paths(data_dir=data_dir, log_dir=log_dir, adapters_dir=adapters_dir, model_dirs=tuple(model_dirs))


# Loading and validation


def load_config(path: Path | None = None) -> Config:
    """Load the user's config file over the defaults; a missing default file means all defaults.

    Raises ConfigError for a file given explicitly that does not exist, for invalid TOML, an
    unknown key, a value of the wrong type or a value out of range.
    """
    explicit = path is not None
    path = Path(path).expanduser() if explicit else default_config_file()
    if not path.exists():
        if explicit:
            raise ConfigError(f"Config file not found: {path}. Check the path given to --config.")
        return Config()

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: the file is not valid UTF-8 (byte {error.start}). Save it as UTF-8.") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file: {error.strerror}.") from None
    return parse_config(text, path)


def parse_config(text: str, path: Path | str = "config.toml") -> Config:
    """Parse config TOML text over the defaults; `path` only appears in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        position = re.search(r"\(at line (\d+), column (\d+)\)", message)
        if position:
            reason = message[: position.start()].strip()
            raise ConfigError(f"{path}:{position[1]}:{position[2]}: invalid TOML: {reason}.") from None
        raise ConfigError(f"{path}: invalid TOML: {message}.") from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively.
        raise ConfigError(f"{path}: invalid TOML: arrays or inline tables are nested too deeply.") from None

    locator = _KeyLocator(text)
    config = Config()
    keys_table = data.get("keys") if isinstance(data.get("keys"), dict) else {}
    sections = {f.name: f for f in fields(Config)}
    for section_name, table in data.items():
        if section_name not in sections:
            line = locator.find_table(section_name) or locator.find_key("", section_name)
            raise ConfigError(
                f"{path}:{line or '?'}: unknown section {_quote(section_name)}. Valid sections: {', '.join(sections)}."
            )
        if not isinstance(table, dict):
            line = locator.find_key("", section_name)
            raise ConfigError(f"{path}:{line or '?'}: '{section_name}' must be a table, written as [{section_name}].")
        section = getattr(config, section_name)
        _apply_table(section, section_name, table, path, locator)
    _check_keys(config.keys, keys_table, path, locator)
    return config


def _apply_table(section, section_name: str, table: dict, path, locator: _KeyLocator) -> None:
    hints = typing.get_type_hints(type(section))
    known = {f.name: f for f in fields(section)}
    for key, value in table.items():
        name = f"{section_name}.{key}"
        line = locator.find_key(section_name, key) or "?"
        if key not in known:
            raise ConfigError(
                f"{path}:{line}: unknown key {_quote(name)}. Valid keys in [{section_name}]: {', '.join(known)}."
            )

        expected = hints[key]
        if not _has_type(value, expected):
            raise ConfigError(
                f"{path}:{line}: '{name}' must be {_describe_type(expected)}, not {_describe_value(value)}."
            )
        if isinstance(value, int) and not isinstance(value, bool) and value not in TOML_INT_RANGE:
            raise ConfigError(f"{path}:{line}: '{name}' is {_describe_value(value)}, outside the 64-bit range of TOML integers.")
        if expected is float:
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"{path}:{line}: '{name}' must be a finite number, not {_to_toml(value)}.")

        metadata = known[key].metadata
        if metadata["choices"] and value not in metadata["choices"]:
            options = ", ".join(f'"{c}"' for c in metadata["choices"])
            raise ConfigError(f"{path}:{line}: '{name}' must be one of {options}, not {_quote(value)}.")
        if metadata["min"] is not None and value < metadata["min"]:
            raise ConfigError(f"{path}:{line}: '{name}' must be at least {metadata['min']}, not {value!r}.")
        if metadata["max"] is not None and value > metadata["max"]:
            raise ConfigError(f"{path}:{line}: '{name}' must be at most {metadata['max']}, not {value!r}.")
        if metadata["rule"] is not None and not metadata["rule"][0](value):
            raise ConfigError(f"{path}:{line}: '{name}' must be {metadata['rule'][1]}, not {value!r}.")
        setattr(section, key, value)


# Keys as Textual names them, besides single characters; modifiers join them with "+".
KEY_MODIFIERS = {"ctrl", "shift", "alt", "super", "meta", "hyper"}
NAMED_KEYS = {
    "enter", "escape", "tab", "space", "backspace", "delete", "insert", "home", "end", "pageup", "pagedown",
    "up", "down", "left", "right", *(f"f{number}" for number in range(1, 25)),
    "comma", "full_stop", "slash", "backslash", "question_mark", "exclamation_mark", "plus", "minus", "underscore",
    "equals_sign", "colon", "semicolon", "apostrophe", "quotation_mark", "number_sign", "dollar_sign",
    "percent_sign", "ampersand", "asterisk", "at", "circumflex_accent", "grave_accent", "tilde", "vertical_line",
    "left_parenthesis", "right_parenthesis", "left_square_bracket", "right_square_bracket",
    "left_curly_bracket", "right_curly_bracket", "less_than_sign", "greater_than_sign",
}
# Bindings of the fine-tune screen, which hides the chat screen's bindings while it is shown.
FINETUNE_SCREEN_BINDINGS = {"use_adapter", "close_finetune"}


def _check_keys(keys: KeysConfig, table: dict, path, locator: _KeyLocator) -> None:
    """Raise ConfigError for a key name Textual would not know, or a key bound twice on one screen."""
    owners: dict[tuple[str, str], str] = {}
    for option in fields(keys):
        line = locator.find_key("keys", option.name) or "?"
        value = getattr(keys, option.name)
        scope = "finetune" if option.name in FINETUNE_SCREEN_BINDINGS else "chat"
        for key in (part.strip() for part in value.split(",")):
            if not _valid_key(key):
                raise ConfigError(
                    f"{path}:{line}: 'keys.{option.name}' has an invalid key {_quote(key)}. Write keys as Textual names them, "
                    "such as \"ctrl+s\", \"f5\", \"enter\" or \"alt+shift+up\"."
                )
            other = owners.setdefault((scope, key), option.name)
            if other != option.name:
                where = locator.find_key("keys", option.name if option.name in table else other) or "?"
                raise ConfigError(
                    f"{path}:{where}: the key {key!r} is bound to both 'keys.{other}' and 'keys.{option.name}'. "
                    "Give one of them another key."
                )


def _valid_key(key: str) -> bool:
    *modifiers, base = key.split("+") if key != "+" else ["+"]
    if not base or any(modifier not in KEY_MODIFIERS for modifier in modifiers):
        return False
    return base in NAMED_KEYS or (len(base) == 1 and base.isprintable() and not base.isspace())


def _has_type(value, expected) -> bool:
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is str:
        return isinstance(value, str)
    if typing.get_origin(expected) is list:
        (item_type,) = typing.get_args(expected)
        return isinstance(value, list) and all(_has_type(item, item_type) for item in value)
    raise TypeError(f"unsupported config type {expected!r}")


def _describe_type(expected) -> str:
    if typing.get_origin(expected) is list:
        (item_type,) = typing.get_args(expected)
        plural = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}[item_type]
        return f"a list of {plural}"
    return {bool: "a boolean (true or false)", int: "an integer", float: "a number", str: "a string"}[expected]


def _describe_value(value) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}
    return f"{kind.get(type(value), type(value).__name__)} ({_shorten(_to_toml(value))})"


def _quote(value) -> str:
    """Quote a name or value from the file for an error message: escaped, on one line, and short."""
    return _shorten(repr(value))


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_QUOTED_VALUE else text[: MAX_QUOTED_VALUE - 1] + "…"


class _KeyLocator:
    """Finds the line of a key in TOML text, for error messages; tomllib reports no positions."""

    _table = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\" ]+?)\s*\]")
    _key = re.compile(r"^\s*\"?([A-Za-z0-9_\-]+)\"?\s*=")

    def __init__(self, text: str):
        self.lines = text.splitlines()

    def find_table(self, table: str) -> int | None:
        for number, line in enumerate(self.lines, start=1):
            match = self._table.match(line)
            if match and match[1].replace('"', "").replace(" ", "") == table:
                return number
        return None

    def find_key(self, table: str, key: str) -> int | None:
        current = ""
        for number, line in enumerate(self.lines, start=1):
            header = self._table.match(line)
            if header:
                current = header[1].replace('"', "").replace(" ", "")
                continue
            match = self._key.match(line)
            if match and match[1] == key and current == table:
                return number
        return None


# The reference config.toml


# TOML basic strings must escape the quote, the backslash and the control characters other than tab.
# Other characters that are not printable are escaped too, so that a value quoted in an error
# message cannot put a line break, an escape sequence or a bidi override on the terminal.
_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(value: str) -> str:
    escaped = []
    for character in value:
        if character in _TOML_ESCAPES:
            escaped.append(_TOML_ESCAPES[character])
        elif not character.isprintable() and character != " ":
            code = ord(character)
            escaped.append(f"\\u{code:04X}" if code <= 0xFFFF else f"\\U{code:08X}")
        else:
            escaped.append(character)
    return '"' + "".join(escaped) + '"'


def _to_toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_to_toml(item) for item in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # nan, inf and -inf, spelled as TOML spells them
    return repr(value)


def render_reference(config: Config | None = None) -> str:
    """Render a config as commented TOML: the text of the reference config.toml."""
    config = config or Config()
    out = [
        "# chatty configuration: every key with its default value.",
        "# Copy this file to the user config folder (see `chatty --help`) or pass it with --config,",
        "# and keep only the keys you change.",
    ]
    for section_field in fields(config):
        section = getattr(config, section_field.name)
        out += ["", f"# {type(section).__doc__.strip()}", f"[{section_field.name}]"]
        for option in fields(section):
            out.append(f"# {option.metadata['help']}")
            out.append(f"{option.name} = {_to_toml(getattr(section, option.name))}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render_reference(), end="")
