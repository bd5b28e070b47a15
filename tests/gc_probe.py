"""What a block of test code leaves for the cyclic GC: objects in reference cycles, by name."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def left_for_the_gc(describe: Callable[[object], str | None]) -> Iterator[list[str]]:
    """The list filled, after the block, with `describe(obj)` of each object that only the cyclic GC
    would have freed (None: not one of interest). The GC is off inside the block."""
    found: list[str] = []
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        found += [name for obj in gc.garbage if (name := describe(obj)) is not None]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
