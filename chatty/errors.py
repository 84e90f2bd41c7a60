"""Errors that a user can cause and fix, shown as one sentence without a traceback."""


class ChattyError(Exception):
    """An error caused by input, a file or the environment, with a message that says what to do."""

    exit_status = 1


class ConfigError(ChattyError):
    """Invalid configuration: the message names the file, line and key."""

    exit_status = 2


class ModelError(ChattyError):
    """A model or adapter that cannot be found or loaded."""


class BackendUnavailable(ChattyError):
    """A backend whose optional packages are not installed."""


class ContextOverflow(ChattyError):
    """A prompt that does not fit in the model's context window."""
