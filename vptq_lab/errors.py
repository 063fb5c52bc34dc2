"""The one exception type users see. Its message names the problem and the fix."""

from __future__ import annotations

__all__ = ["VPTQLabError"]


class VPTQLabError(ValueError):
    """Bad input or a missing resource. The CLI prints it as one line, without a traceback."""
