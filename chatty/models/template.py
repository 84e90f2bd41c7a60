"""Chat template rendering that keeps message contents apart from template text.

Both backends and the fine-tuning dataset render prompts here, so chatting and training see the
same text. The result is a list of segments: template text, where special-token strings such as
`<|im_start|>` are meant as special tokens, and message contents, which must be tokenized as
plain text so that a user cannot inject a special token by typing its string.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Literal

# Used when a model file carries no chat template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Private-use characters mark where each message's content goes; chat templates pass them through.
_SENTINEL = "\ue000chatty-content-{index}\ue001"
_SENTINEL_PATTERN = re.compile("\ue000chatty-content-(\\d+)\ue001")


@dataclass(frozen=True)
class Segment:
    """A run of the rendered prompt: template text, or one message's content."""

    text: str
    kind: Literal["template", "content"]
    message_index: int | None = None
    role: str | None = None


@dataclass(frozen=True)
class RenderedPrompt:
    """The prompt text after the chat template, split into segments in order."""

    segments: tuple[Segment, ...]

    @property
    def text(self) -> str:
        return "".join(segment.text for segment in self.segments)

    def content_spans(self) -> list[tuple[int, int, Segment]]:
        """Return (start, end, segment) character spans of every content segment."""
        spans, position = [], 0
        for segment in self.segments:
            end = position + len(segment.text)
            if segment.kind == "content":
                spans.append((position, end, segment))
            position = end
        return spans


class ChatTemplate:
    """A Jinja chat template in the Hugging Face convention, with its special-token strings."""

    def __init__(self, source: str | None, bos_token: str = "", eos_token: str = ""):
        self.source = source or CHATML_TEMPLATE
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._compiled = _compile(self.source)

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> RenderedPrompt:
        """Render messages ({"role", "content"} dicts) into segments.

        Raises ValueError when the template itself raises, as templates do for roles they reject.
        """
        placeholders = [
            {**message, "content": _SENTINEL.format(index=index)} for index, message in enumerate(messages)
        ]
        try:
            text = self._compiled.render(
                messages=placeholders,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except _TemplateRaised as error:
            raise ValueError(f"the chat template rejected the conversation: {error}") from None

        segments: list[Segment] = []
        position = 0
        for match in _SENTINEL_PATTERN.finditer(text):
            if match.start() > position:
                segments.append(Segment(text[position : match.start()], "template"))
            index = int(match[1])
            message = messages[index]
            segments.append(Segment(message["content"], "content", index, message["role"]))
            position = match.end()
        if position < len(text):
            segments.append(Segment(text[position:], "template"))
        return RenderedPrompt(tuple(segment for segment in segments if segment.text))


class _TemplateRaised(Exception):
    pass


def _raise_exception(message: str):
    raise _TemplateRaised(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _tojson(value, indent=None, ensure_ascii=False, separators=None, sort_keys=False):
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile(source: str):
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(Extension):
        """Accepts `{% generation %}...{% endgeneration %}` blocks and renders their body unchanged."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    return environment.from_string(source)
