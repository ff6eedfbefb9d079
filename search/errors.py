"""The one kind of error the CLI turns into a single line and exit code 2: bad input from the user.

Every module's input error (a space field, a chip folder, --out, --address, --storage, a run
directory) derives from `UserError`, so `python -m search` catches them all without importing
Ray Tune or matplotlib just to name their classes.
"""


class UserError(Exception):
    """Input that cannot be used; the message is one line naming the field, file or flag."""
