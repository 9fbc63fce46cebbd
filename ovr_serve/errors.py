"""The one error type of serving start-up: a problem the user can fix, with the fix in its message.

It sits below `launch` and `preflight` (and `device`, which both use), so neither imports the other.
"""

from __future__ import annotations


class LaunchError(RuntimeError):
    """A problem the user can fix; the message says how."""
