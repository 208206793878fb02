"""Scaffolding for the end-to-end fault tests: real service processes, the fakes, simulated users, final checks.

``system.System`` starts the fakes in the test process and ingest, agent and
projector as real ``eventbot run`` subprocesses that a test may SIGKILL and
restart; ``traffic.Traffic`` keeps simulated users chatting through the fake
Bot API; ``checks.verify`` is what must hold once everything caught up.
"""
