"""Errors a user can cause. ``train.py`` prints their message alone and exits non-zero."""


class UserError(Exception):
    """A mistake the user can fix: the message names the file/key and the fix."""

    exit_code = 2


class DataError(UserError):
    """A dataset problem: missing folders, mismatched classes, unreadable images."""


class ConfigError(UserError):
    """A mistake in a config file or override; the message says where and how to fix it."""
