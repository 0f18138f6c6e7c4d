"""runly example: an item job with real work, run in parallel, where some items fail by category."""
