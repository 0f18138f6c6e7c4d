"""The embedded stack: AWS played locally (moto server, the HTTP gateway)."""
