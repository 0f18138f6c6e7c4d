"""runly example: jobs written as decorated functions."""
