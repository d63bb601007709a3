"""bilge's one error tree. Every message says what went wrong and what to do.

    BilgeError
    ├── DataDirError        the data directory cannot be used
    ├── StoreError          the database is unreadable, corrupt or foreign
    │   └── EmptyStoreError the database holds no recorded run
    ├── CommandError        the command given to ``bilge run`` cannot start
    ├── ServeError          the health/metrics address cannot be served
    ├── FleetError          a node or Prometheus of ``bilge fleet`` cannot be read
    └── GuardError          ``bilge guard`` cannot check the task as asked

The CLI turns these into one-line messages and exit codes in exactly one
place (``bilge.cli.main``); foreign exceptions are translated at the
boundary where they arise (``sqlite3.Error`` only inside ``bilge.store``).
"""

from __future__ import annotations


class BilgeError(Exception):
    """Root of every error bilge raises on purpose."""

    exit_code = 1


class DataDirError(BilgeError):
    """The data directory is missing, not writable, or holds something else."""

    exit_code = 2


class StoreError(BilgeError):
    """The store cannot be read or written."""

    exit_code = 3


class EmptyStoreError(StoreError):
    """The store exists but holds no run to report on."""

    exit_code = 4


class CommandError(BilgeError):
    """The command to run under bilge cannot be started."""

    exit_code = 127


class ServeError(BilgeError):
    """The health and metrics endpoint cannot listen on the address asked for."""

    exit_code = 7


class FleetError(BilgeError):
    """A node (or the Prometheus) the fleet page reads cannot be reached or does not answer like bilge."""

    exit_code = 8


class GuardError(BilgeError):
    """``bilge guard`` cannot load the app, find the task, parse the arguments or run the calls."""

    exit_code = 2


class AgentUnreachableError(BilgeError):
    """No live agent answers for a process (not under bilge, gone, another user's, or stalled)."""

    exit_code = 5


class AttachError(BilgeError):
    """A running process cannot be attached to safely (the message says why and what to do instead)."""

    exit_code = 6
