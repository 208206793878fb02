"""Keeping the garbage collector's full passes off the hot path.

A service imports aiogram (hundreds of pydantic models), the anthropic SDK,
redis-py and its own modules: about a million objects that live as long as the
process. CPython's full (generation 2) collection walks every one of them; in
the agent that was a 243 ms stall of the event loop every so often, in the
middle of answers (measured with ``bench/agent.py``). Freezing the heap once
startup is done moves those objects to a permanent generation that collections
skip; what is allocated afterwards is collected as usual.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Call once imports and long-lived clients exist, before the work starts."""
    gc.collect()  # don't freeze startup's garbage along with it
    gc.freeze()
