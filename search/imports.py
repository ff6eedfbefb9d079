"""Importing a heavy stack (torch, Lightning, TerraTorch: about a million Python objects) in a fresh process.

Python's cyclic garbage collector runs every few hundred allocations and, as the heap grows during such an
import, rescans it again and again: importing a trial's model stack takes about 13 s of CPU on the 2-CPU
machine with the collector on and about 9 s with it paused (`python -m search bench imports` measures it).
What the import creates lives as long as the process, so it is then frozen (`gc.freeze`) out of every later
collection: the trials' own collections scan the trials' objects only. The price: the little cyclic garbage the
import leaves (about 19,000 of a million objects, measured after importing the model stack) is frozen too
and never freed; collecting it first would cost about 1 s of CPU.
"""

from __future__ import annotations

import gc
import importlib
import sys
from contextlib import contextmanager
from types import ModuleType
from typing import Iterator


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's garbage collector off for the block, then left as it was found (a caller may have it off)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def import_heavy(name: str) -> ModuleType:
    """`importlib.import_module(name)` with the collector paused, and what it loaded frozen; a module this
    process has already imported is returned as it is (nothing is frozen twice)."""
    if name in sys.modules:
        return sys.modules[name]
    with collector_paused():
        module = importlib.import_module(name)
    gc.freeze()
    return module
