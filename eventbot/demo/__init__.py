"""The offline demo: the main job on a fresh machine (``./dev demo``)."""
