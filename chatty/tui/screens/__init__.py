"""Modal screens: dialogs over the chat screen."""
