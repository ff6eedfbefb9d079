"""Reading fields out of a parsed YAML mapping, each failure one line naming the dotted field and what was expected."""

from __future__ import annotations

from typing import Any, Callable

from em_backbones.catalog import did_you_mean
from search.errors import UserError


class SpaceError(UserError, ValueError):
    """A space file that cannot be searched; the message is one line naming the field."""


class FieldChecker:
    """Reads fields out of nested dicts, remembering the dotted path for error messages."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, expected: str, got: Any) -> None:
        raise SpaceError(f"{self.source}: field '{path}': expected {expected}, got {got!r}")

    def section(self, raw: dict, key: str, allowed: set[str] | list[str]) -> dict:
        value = raw.get(key, {})
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.fail(key, "a mapping", value)
        self.no_unknown(value, set(allowed), f"{key}.")
        return value

    def no_unknown(self, raw: dict, allowed: set[str], prefix: str = "") -> None:
        for key in raw:
            if key not in allowed:
                hint = did_you_mean(key, allowed, prefix)
                raise SpaceError(f"{self.source}: unknown field '{prefix}{key}'{hint}; "
                                 f"allowed: {', '.join(sorted(allowed))}")

    def integer(self, value: Any, path: str, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(path, f"an integer >= {minimum}", value)
        return value

    def number(self, value: Any, path: str, minimum: float, strictly: bool = False) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or value < minimum or (strictly and value == minimum):
            self.fail(path, f"a number {'>' if strictly else '>='} {minimum}", value)
        return float(value)

    def one_of(self, value: Any, path: str, options: tuple[str, ...]) -> Any:
        if value not in options:
            self.fail(path, " or ".join(repr(o) for o in options), value)
        return value

    def choices(self, value: Any, path: str, check: Callable[[Any, str], Any]) -> tuple:
        values = value if isinstance(value, list) else [value]
        if not values:
            self.fail(path, "a non-empty list", value)
        return tuple(check(v, f"{path}[{i}]") for i, v in enumerate(values))
