"""The one kind of error the CLI turns into a single line and exit code 2: bad input from the user.

Every module's input error (a space field, a chip folder, --out, --address, --storage, a run
directory) derives from `UserError`, so `python -m search` catches them all without importing
Ray Tune or matplotlib just to name their classes.
"""


class UserError(Exception):
    """Input that cannot be used; the message is one line naming the field, file or flag."""


def read_yaml(path, error: type[UserError], prefix: str = "", what: str = "file"):
    """A YAML file's content; a missing file or bad syntax raises `error` in one line naming the file."""
    from pathlib import Path

    import yaml

    path = Path(path)
    if not path.is_file():
        raise error(f"{prefix}{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise error(f"{prefix}{path}: YAML syntax error{where}: {problem}") from None
