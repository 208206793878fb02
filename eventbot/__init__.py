"""eventbot: the shared core (settings, streams, consumer runtime, CLI)."""
