"""Keeping the garbage collector off the hot path and out of the projector's batches.

A service imports aiogram (hundreds of pydantic models), the anthropic SDK,
redis-py and its own modules: about a million objects that live as long as the
process. CPython's full (generation 2) collection walks every one of them; in
the agent that was a 243 ms stall of the event loop every so often, in the
middle of answers (measured with ``bench/agent.py``). Freezing the heap once
startup is done moves those objects to a permanent generation that collections
skip; what is allocated afterwards is collected as usual.

The young generation's threshold is raised too. CPython collects it every 700
container allocations net of frees; the projector holds a batch of every
partition in flight (reply lists, dicts, rows: 8 x 2,000 entries), so each young
pass found them alive, promoted them, and the older passes walked them again and
again: 37 % of the projector's CPU on a 200k backlog (``gc.disable()`` as the
bound: 22 against 35-37 us per event). Objects here die by reference counting,
not in cycles, so a rarer pass finds the same garbage, later. Every 10,000: the
projector as fast as at 50,000 (30.4k events/s either way in ``bench/project.py``),
while the agent's passes stay short (9 per ``bench/agent.py`` run, 4-5 ms at most;
at 50,000, 2 of 14-24 ms, stalls as long as the hot path's whole budget).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000  # CPython's default: 700
# Passes of the younger generation between two of the next; default (10, 10). A middle pass
# walks every batch in flight: at 20, six passes of ~140 ms in a 200k drain (a fifth of the
# projector's CPU); at 100, one (bench/project.py: 29-30 against 36-37 us per event).
OLDER_THRESHOLDS = (100, 20)


def freeze_startup_heap() -> None:
    """Call once imports and long-lived clients exist, before the work starts."""
    gc.collect()  # don't freeze startup's garbage along with it
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
