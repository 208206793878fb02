"""The agent's consumer handler: routes ``conv`` entries to chat sessions.

Run under the core consumer in ``concurrent`` mode (group ``agent``): each
entry's handler returns when its effect is done, and only then is it acked. A
message to answer waits for its answer; ``/stop`` cancels; everything else in
the conversation stream is not the agent's business and is acked at once.
"""

from __future__ import annotations

from eventbot.consumer import Batch
from events import CommandIssued, MessageReceived
from services.agent.answer import Job
from services.agent.sessions import Sessions

STOP_COMMANDS = frozenset({"stop", "cancel"})


class AgentHandler:
    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions

    async def __call__(self, batch: Batch) -> list[str]:
        """Returns the entries answered together with this batch's (the consumer acks them with it)."""
        together: list[str] = []
        for d in batch.deliveries:
            match d.event:
                case MessageReceived(disposition="answer") as m:
                    job = Job(m, d.stream, d.entry_id, d.deliveries)
                    together += await self.sessions.get(m.chat_id, m.topic_id).message(job)
                case CommandIssued(command=command) as c if command.lower().lstrip("/") in STOP_COMMANDS:
                    session = self.sessions.find(c.chat_id, c.topic_id)
                    if session is not None:
                        session.stop(c.user_id, at=(d.stream, d.entry_id))
                case _:
                    pass
        return together
