"""The CLI's command groups."""
