"""Errors a user can cause: each carries a message fit to print in one line (the CLI exits 2)."""


class DigestError(Exception):
    """Base of every error a user can cause and fix."""


class ConfigError(DigestError):
    """A missing or invalid configuration key, named with the file it belongs in."""


class SourceError(DigestError):
    """A feed or directory that cannot be read, named by its location."""


class DeliveryError(DigestError):
    """A transport refused the send for a reason the admin must fix (auth, a rejected payload)."""


class NotFound(DigestError):
    """A subscriber, issue or list that does not exist."""
