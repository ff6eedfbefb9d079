"""Reading the user's YAML files (space files, base configs): one-line errors naming the file, never a traceback.

`yaml.safe_load` only, so an input file can never construct Python objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from search.errors import UserError


def read_yaml(path: str | Path, error: type[UserError], prefix: str = "", what: str = "file") -> Any:
    """A YAML file's content; a missing file, bytes that are not UTF-8 text or bad syntax raise `error` in
    one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{prefix}{path}: {what} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{prefix}{path}: expected a UTF-8 text (YAML) {what}, found a byte 0x{err.object[err.start]:02x} "
                    f"that is not UTF-8 at offset {err.start}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise error(f"{prefix}{path}: YAML syntax error{where}: {problem}") from None
