"""Reporters: render a ``Diagnosis``; they never aggregate or decide anything."""

from typing import Protocol

from bilge.model import Diagnosis


class Reporter(Protocol):
    """Renders a diagnosis; format options belong in the constructor."""

    def render(self, diagnosis: Diagnosis) -> None:
        """Write the diagnosis to the reporter's output."""
