"""Local fake HTTP servers of the outside world (Telegram, Anthropic) for tests, the demo and benchmarks."""
