"""Schedules: the function EventBridge Scheduler invokes at each fire (``fire.py``)."""
