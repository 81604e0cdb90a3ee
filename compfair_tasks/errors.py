"""The one base class of errors caused by bad input (a path, a file, a model, an option).

`compfair` prints such an error's message (which names the problem and the fix) and exits 2; any
other exception is a bug and keeps its traceback. Modules derive their own errors from it.
"""

from __future__ import annotations


class CompfairError(Exception):
    """Bad input the user can fix; the message names the problem and the fix in one line."""
