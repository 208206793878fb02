"""Which users this process already recorded as seen, so ``user.seen`` is appended on change, not per message.

A user's profile in a chat (names, language, premium) rarely changes; appending it
with every message would double the conversation log. Each process remembers what
it last appended per (chat, topic, user); a restart or another instance appends it
once more, which the read model folds as a no-op. Bounded: cleared when full.
"""

from __future__ import annotations

from events import UserSeen


class SeenUsers:
    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._last: dict[tuple[str, int], tuple[object, ...]] = {}

    @staticmethod
    def _profile(e: UserSeen) -> tuple[object, ...]:
        return (e.username, e.first_name, e.last_name, e.language_code, e.is_premium)

    def is_news(self, event: UserSeen) -> bool:
        """True if this profile was not appended by this process yet (call ``remember`` once it is)."""
        return self._last.get((event.partition_key, event.user_id)) != self._profile(event)

    def remember(self, event: UserSeen) -> None:
        if len(self._last) >= self.max_entries:
            self._last.clear()
        self._last[(event.partition_key, event.user_id)] = self._profile(event)
