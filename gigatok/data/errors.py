"""The one exception the data layer raises for bad data or a bad data location."""

from __future__ import annotations


class DataError(ValueError):
    """Unreadable image, missing folder or empty split; the one-line message names the path at fault."""
