"""Analysis: turns stored runs into a ``Diagnosis``. Never touches a live process."""

from bilge.analysis.diagnose import diagnose

__all__ = ["diagnose"]
