"""What must hold once traffic stopped and every group caught up: the claims, checked from outside.

Every number here is read where a user, an operator or an auditor would read it:
the fake Telegram (what users saw), the streams (what was appended), ``event_log``
and the projection (what was archived), and the ``eventbot audit`` / ``replay``
commands. ``verify`` returns the problems found (empty when all holds) and the figures.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import psycopg

from services.ingest import texts
from tests.e2e.system import System
from tests.e2e.traffic import Traffic


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    # What a process kill can cause and nothing here can prevent: a final message that
    # Telegram accepted just before its agent was killed, sent again by the takeover
    # (the Bot API has no idempotent send). Reported apart, never mixed with problems.
    known_window: list[str] = field(default_factory=list)

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)


async def verify(system: System, traffic: Traffic, user_errors: list[BaseException], *, schema: str = "eventbot",
                 expect_entries_equal: bool = True) -> Report:
    r = Report()
    for e in user_errors:
        r.problems.append(f"a user gave up: {type(e).__name__}: {e}")
    rows = await _event_log(system, schema)
    await _answers(system, traffic, r)
    await _projection(system, rows, r, expect_entries_equal)
    _money(system, traffic, rows, r)
    await _ledger_heads(system, traffic, r)
    await _commands(system, traffic, r)
    return r


async def _answers(system: System, traffic: Traffic, r: Report) -> None:
    """One terminal response per message, and in Telegram exactly the final message(s) it implies."""
    obs = system.observer
    exchanges = traffic.exchanges
    r.figures["messages"] = len(exchanges)
    outcomes = Counter(x.outcome or "missing" for x in exchanges)
    r.figures["outcomes"] = dict(outcomes)
    r.check(outcomes.get("missing", 0) == 0, f"{outcomes.get('missing', 0)} messages never answered")
    multi = [(x.chat_id, x.message_id, x.kind, obs.terminal_outcomes(x.chat_id, x.message_id),
              [(rid[:8], s.message_ids, s.outcome) for rid, s in obs.responses.items()
               if s.chat_id == x.chat_id and x.message_id in s.message_ids])
             for x in exchanges if len(obs.terminal_outcomes(x.chat_id, x.message_id)) != 1]
    received = Counter({k: v for k, v in obs.received_count.items() if k[0] in {c.chat_id for c in traffic.conversations}})
    twice = [k for k, n in received.items() if n != 1]
    r.check(not twice, f"message.received recorded other than once: {twice[:5]}")
    r.check(len(received) == len(exchanges), f"{len(received)} message.received for {len(exchanges)} messages sent")

    sends = defaultdict(list)
    for call in system.telegram.calls("sendMessage"):
        text = str(call.params.get("text"))
        # Replies of ingest, not answers: a payment receipt can land just after the user's first
        # message (the user chats as soon as the credit shows in the ledger, before the receipt goes out).
        if call.ok and text not in (texts.WELCOME, texts.HELP) and not text.startswith(texts.RECEIPT_OPENING):
            sends[str(call.params.get("chat_id"))].append((call.at, str(call.params.get("text"))))
    duplicated: list[Any] = []
    after_kill: list[Any] = []
    missing: list[Any] = []
    for conv in traffic.conversations:
        mine = sorted(conv.exchanges, key=lambda x: x.sent_at)
        for k, x in enumerate(mine):
            end = mine[k + 1].sent_at if k + 1 < len(mine) else float("inf")
            window = [(at, text) for at, text in sends[str(x.chat_id)] if x.sent_at <= at < end]
            sent = [text for _, text in window]
            expected = 0 if (x.outcome == "cancelled" and not _partial(system, x)) else 1
            # What the log says the user got, next to what Telegram shows, and the agent kills
            # between the first send and the last: enough to tell a takeover from a live double.
            first, last = (window[0][0], window[-1][0]) if window else (0.0, 0.0)
            kills = [at for n, at in system.kill_log if n == "agent" and first - 5 <= at <= last]
            seen = (x.chat_id, x.message_id, x.kind, x.outcome, system.terminal_texts.get((x.chat_id, x.message_id), "?")[:40],
                    [f"{at - first:+.2f}s {t[:40]}" for at, t in window], f"agent kills: {[f'agent@{at - first:+.2f}s' for at in kills]}")
            if len(sent) > expected:
                (after_kill if _killed_delivering(window, kills) else duplicated).append(seen)
            elif len(sent) < expected:
                missing.append(seen)
    r.figures["duplicated_final_messages"] = len(duplicated) + len(after_kill)
    r.figures["missing_final_messages"] = len(missing)
    r.check(not duplicated, f"final message sent more than once with no agent killed around it: {duplicated[:5]}")
    r.check(not missing, f"final message missing: {missing[:5]}")
    if after_kill:
        r.known_window.append(f"final message sent twice, an agent killed during its delivery: {after_kill[:5]}")
    # A second terminal response for a message is only explained by the same takeover.
    doubled_chats = {seen[0] for seen in after_kill}
    r.check(not [m for m in multi if m[0] not in doubled_chats], f"messages without exactly one terminal response: {multi[:5]}")
    if [m for m in multi if m[0] in doubled_chats]:
        r.known_window.append(f"other than one terminal response, in a chat with such a takeover: {multi[:5]}")


# How far apart an agent's kill and the arrival of the final message it was sending may be
# recorded: the fake Bot API notes the arrival on the test's own (loaded) event loop.
DELIVERY_KILL_S = 1.0


def _killed_delivering(window: list[tuple[float, str]], kills: list[float]) -> bool:
    """The Bot API's window, and nothing looser: an agent killed as a final message it was
    sending arrived (within ``DELIVERY_KILL_S``), and every later send made after that kill
    (by the takeover, which answers again: its text may differ, the request being rebuilt)."""
    return any(
        abs(at - window[h - 1][0]) <= DELIVERY_KILL_S and at < window[h][0]
        for h in range(1, len(window)) for at in kills
    )


def _partial(system: System, x: Any) -> bool:
    return bool(system.terminal_texts.get((x.chat_id, x.message_id)))


async def _event_log(system: System, schema: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    async with await psycopg.AsyncConnection.connect(system.database_url) as conn:
        cur = await conn.execute(
            f"select event_id::text, stream || '/' || entry_id, type, payload from {schema}.event_log"  # noqa: S608
        )
        rows = await cur.fetchall()
    # Terminal responses, keyed by the messages they answered, for the final-message check.
    started = {p["response_id"]: p for _, _, t, p in rows if t == "response.started"}
    for _, _, t, p in rows:
        if t in ("response.completed", "response.cancelled", "response.failed") and p["response_id"] in started:
            s = started[p["response_id"]]
            for mid in s["message_ids"]:
                system.terminal_texts[(s["chat_id"], mid)] = p.get("text") or p.get("partial_text") or (
                    "" if t == "response.cancelled" else "(failure notice)")
    return rows


async def _projection(system: System, rows: list[tuple[str, str, str, dict[str, Any]]], r: Report,
                      expect_entries_equal: bool) -> None:
    added = await system.entries_added()
    r.figures["events"] = len(rows)
    r.figures["stream_entries_added"] = added
    r.check(len({e for e, _, _, _ in rows}) == len(rows), "event_log has an event twice")
    r.check(len({pos for _, pos, _, _ in rows}) == len(rows), "event_log has a stream entry twice")
    if expect_entries_equal:
        archived = {pos for _, pos, _, _ in rows}
        unarchived = sorted(f"{pos} {t}" for pos, t in system.observer.entries.items() if pos not in archived)
        r.check(len(rows) == added, f"event_log has {len(rows)} events, the conv and ledger streams {added}; "
                                    f"seen in Redis, not archived: {unarchived[:12]}")
    terminal = Counter(p["response_id"] for _, _, t, p in rows
                       if t in ("response.completed", "response.cancelled", "response.failed"))
    r.check(all(n == 1 for n in terminal.values()), f"responses ended twice: {[k for k, n in terminal.items() if n > 1][:5]}")
    code, out = await system.cli("audit", "verify", "--all")
    r.figures["audit_verify"] = "ok" if code == 0 else out[-2000:]
    r.check(code == 0, f"audit verify --all failed: {out[-2000:]}")
    code, out = await system.cli("replay", "postgres", "--verify", "--shadow", f"{system.namespace}_shadow")
    r.figures["replay_verify"] = "equal" if code == 0 else out[-2000:]
    r.check(code == 0, f"replay postgres --verify differs: {out[-2000:]}")
    dead = await system.dead_letters()
    r.figures["dead_letters"] = dead
    r.check(dead == 0, f"{dead} dead letters")
    kept = await system.kept_aside()
    r.figures["updates_kept_aside"] = len(kept)
    r.check(not kept, f"updates kept aside by ingest (update id, error): {kept[:5]}")


def _money(system: System, traffic: Traffic, rows: list[tuple[str, str, str, dict[str, Any]]], r: Report) -> None:
    """Each response held once, charged at most once and exactly what its terminal event says it cost."""
    users = {c.user.id for c in traffic.conversations}
    credits = Counter(p["user_id"] for _, _, t, p in rows if t == "balance.credited")
    r.check(all(credits[u] == 1 for u in users), f"credits per user not exactly one: {dict(credits)}")
    cost = {p["response_id"]: p.get("cost", 0) for _, _, t, p in rows
            if t in ("response.completed", "response.cancelled", "response.failed")}
    reserved = Counter(p["hold_id"] for _, _, t, p in rows if t == "balance.reserved")
    held = {p["hold_id"]: p["amount"] for _, _, t, p in rows if t == "balance.reserved"}
    charged = Counter(p["charge_id"] for _, _, t, p in rows if t == "balance.charged")
    charges = {p["charge_id"]: p for _, _, t, p in rows if t == "balance.charged"}
    released = defaultdict(int)
    for _, _, t, p in rows:
        if t == "balance.released":
            released[p["hold_id"]] += p["amount"]
    r.check(all(n == 1 for n in reserved.values()), f"held twice: {[k for k, n in reserved.items() if n > 1][:5]}")
    r.check(all(n == 1 for n in charged.values()), f"charged twice: {[k for k, n in charged.items() if n > 1][:5]}")
    unfair = [rid for rid, c in charges.items() if c["amount"] != cost.get(rid)]
    r.check(not unfair, f"charges that differ from the response's cost: {unfair[:5]}")
    unsettled = [h for h, amount in held.items()
                 if charges.get(h, {}).get("hold_settled", 0) + released.get(h, 0) != amount]
    r.check(not unsettled, f"holds not settled exactly: {unsettled[:5]}")
    free = [rid for rid, c in cost.items() if c and rid not in charges]
    r.check(not free, f"responses that cost something and were not charged: {free[:5]}")
    r.figures["charges"] = len(charges)
    r.figures["charged_micro_usd"] = sum(c["amount"] for c in charges.values())


async def _ledger_heads(system: System, traffic: Traffic, r: Report) -> None:
    leaked = []
    for c in traffic.conversations:
        head = await system.ledger.head(c.user.id)
        if head.held:
            leaked.append((c.user.id, head.held))
    r.check(not leaked, f"holds left on balances: {leaked}")


async def _commands(system: System, traffic: Traffic, r: Report) -> None:
    """Ingest replies to a command at most once; a kill between recording and replying loses the reply."""
    welcomes = Counter(str(c.params.get("chat_id")) for c in system.telegram.calls("sendMessage")
                       if c.ok and c.params.get("text") == texts.WELCOME)
    chats = [c.chat_id for c in traffic.conversations]
    r.figures["start_replies_duplicated"] = sum(1 for n in welcomes.values() if n > 1)
    r.figures["start_replies_lost"] = sum(1 for c in chats if welcomes[str(c)] == 0)
    r.check(all(n <= 1 for n in welcomes.values()), f"/start answered twice: {dict(welcomes)}")
