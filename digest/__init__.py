"""digest: a weekly newsletter digest generator."""

__version__ = "0.1.0"
