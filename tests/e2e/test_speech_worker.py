"""A crash of the speech engine fails that injection with a clear error; calls play on and the
next text is spoken (the engine runs in a worker process; faults from tests/speech_hooks.py)."""

from __future__ import annotations

import speech_hooks

from livecall import connected_call, inject, wait_injection
from mixer import speech


def test_a_speech_crash_is_a_clear_error_and_nothing_else_stops(telnyx, server, monkeypatch):
    worker = speech.IsolatedEngine(serve=speech_hooks.faulty_serve)
    monkeypatch.setattr(speech, "_isolated_engine", worker)
    try:
        call = connected_call(telnyx, server)
        music = inject(server, call, {"tone": {"frequency_hz": 300, "duration_ms": 1000}, "loop": True})
        wait_injection(server, call, music["id"], "playing")
        response = server.http.post(f"/streams/{call.call_control_id}/inject",
                                    json={"text": speech_hooks.SEGFAULT})
        assert response.status_code == 422, response.text
        assert response.json()["error"] == {
            "code": "speech_unavailable", "field": "text",
            "message": "text to speech failed: the speech engine crashed on this request; "
                       "try again, or with another text."}
        spoken = inject(server, call, {"text": "still here"})
        wait_injection(server, call, spoken["id"], "finished")
        assert server.http.get(f"/streams/{call.call_control_id}/injections/{music['id']}").json()["status"] \
            == "playing"
        assert server.http.get("/health").json()["status"] == "ok"
    finally:
        worker.close()
