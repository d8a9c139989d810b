"""The worker's own error: a problem with a run's spec or inputs, in words the user reads as they are."""

from __future__ import annotations


class RunError(RuntimeError):
    """A problem with the run's spec or inputs; the message is shown to the user as it is."""
