"""Telnyx Call Control: the /webhooks/voice blueprint (views.py), the call flow, commands."""
