"""digest: a weekly newsletter digest generator."""

from pathlib import Path

__version__ = "0.1.0"

#: The project root (editable installs): templates/ and migrations/ live here.
ROOT = Path(__file__).resolve().parent.parent
