"""User-facing errors.

Every error a user can cause (a bad path, a bad bag, a bad config) is raised as an
`OffrlError` whose message is one line naming the file/topic/field and what to do. The CLI
prints exactly that line and exits non-zero; anything else is a bug and is reported as one.
"""

from __future__ import annotations


class OffrlError(Exception):
    """A problem with the user's input. `str(err)` is a single actionable line."""


class ConfigError(OffrlError):
    """A config/spec file is missing, unreadable, or has unknown or invalid keys."""


class DatasetError(OffrlError):
    """A dataset is missing, malformed, or holds non-finite values."""


class BagError(OffrlError):
    """A rosbag2 log cannot be read completely or does not hold what the spec asks for."""


class ModelError(OffrlError):
    """A model file or card is missing, corrupt, or disagrees with its metadata."""
