"""Exceptions that MoDiff shows to users.

Every problem a user can cause (a bad file, a wrong frame count, a point outside the volume)
raises a :class:`MoDiffError` subclass whose message is one clear sentence naming the problem;
the command line prints it as ``modiff: error: <message>`` and exits non-zero, and the Slicer
module shows it in an error box. Anything else is a bug and keeps its traceback.
"""


class MoDiffError(Exception):
    """Base class of the errors MoDiff reports to users without a traceback."""


class InputError(MoDiffError, ValueError):
    """The input (file, volume, parameter) is unusable; the message says why."""


class OutputError(MoDiffError, OSError):
    """An output cannot be written (exists already, unwritable folder, full disk)."""


class Cancelled(MoDiffError):
    """The user cancelled a long-running job; nothing was written."""
