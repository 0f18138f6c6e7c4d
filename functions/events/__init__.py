"""Run events: every run state change, read from the table's stream, published to the runly EventBridge bus."""
