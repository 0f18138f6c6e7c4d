"""runly example: an application that enqueues runs from its request handlers."""
