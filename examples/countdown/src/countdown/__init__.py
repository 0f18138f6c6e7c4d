"""runly example: a long, resumable job."""
