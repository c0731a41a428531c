"""Errors a user can cause and fix. The CLI prints them as one line, never a traceback."""


class UserError(Exception):
    """Something the user can fix: the message says what is wrong and how to fix it."""
