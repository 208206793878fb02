"""The agent: answers ``message.received`` (disposition "answer") with Claude, streamed into Telegram.

One idea per module, in the order an answer meets them:

- ``main``        builds the clients and runs the core consumer (group ``agent``, concurrent mode);
- ``service``     routes entries: messages to chat sessions, ``/stop`` to the asker's answer;
- ``sessions``    per chat and topic: one answer at a time, merge window, cancel-and-restart or queue;
- ``answer``      one answer end to end, in the order that makes a takeover safe;
- ``request``     the Messages API request from the read-model context (``files``: attachment bytes);
- ``pricing``, ``holds``, ``billing``  price table, hold planning, hold/charge/release exactly once;
- ``model``       the Claude stream, retried only before the first token;
- ``presenter``   drafts/edits, continuation past 4096, the final message (``limiter``, ``formatting``, ``splitting``);
- ``tokens``      token events to ``tokens:{p}``; ``metrics``: what /metrics shows; ``config``: the knobs.
"""
