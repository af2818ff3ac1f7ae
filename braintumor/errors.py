"""One exception family for problems the user can fix: each prints as one line."""


class BrainTumorError(Exception):
    """A problem reported to the user as one line (``error: <message>``), never a traceback.

    The message names the file (or setting) and the problem, e.g.
    ``data/val/annotations.json: not valid JSON (line 3, column 5)``.
    """
