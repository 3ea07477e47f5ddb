"""The console in headless Chromium against the real server and the simulator: what an operator
clicks is heard by the simulated caller (checked by analysing what it received), errors are the
API's own, and with API_TOKEN nothing but the sign-in page is served without the token."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import httpx
import numpy as np
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from audio_checks import dominant_hz, non_silent, sine_peak_dbfs
from livecall import LiveServer, wait_until, wav_bytes
from simulator import FakeTelnyx, SimCall

RATE = 8000


def streaming_call(telnyx: FakeTelnyx, server: LiveServer) -> SimCall:
    call = telnyx.place_call()
    call.wait_streaming(timeout=10)
    wait_until(lambda: server.http.get(f"/streams/{call.call_control_id}").json()["status"] == "streaming",
               what="the call to stream")
    return call


def heard_after(call: SimCall, start: int, samples: int) -> np.ndarray:
    """The first `samples` of sound the caller heard after sample `start` (waits for them)."""
    def sound() -> tuple[np.ndarray] | None:
        audible = non_silent(call.heard_pcm()[start:])
        return (audible[:samples],) if len(audible) >= samples else None

    return wait_until(sound, timeout=15, what="the caller to hear it")[0]


def tone_power(pcm: np.ndarray, hz: float) -> float:
    """Power of `pcm` at `hz` (a single DFT bin, windowed)."""
    x = pcm.astype(np.float64) * np.hanning(len(pcm))
    n = np.arange(len(x))
    return float(abs(np.sum(x * np.exp(-2j * np.pi * hz * n / RATE))) ** 2)


def test_a_call_appears_live_and_leaves_the_list_when_it_hangs_up(make_console, telnyx: FakeTelnyx) -> None:
    server, page = make_console()
    page.open()
    page.wait(lambda: page.find("feed-status").text == "live", "the feed")
    assert page.present("no-calls") and page.find("no-calls").is_displayed()
    call = streaming_call(telnyx, server)
    row = page.wait(lambda: page.call_row(call.call_control_id), "the call in the list")
    cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
    assert cells[1] == "streaming" and cells[2] == "PCMU/8000"
    page.screenshot("call-listed")
    call.hangup()
    page.wait(lambda: page.call_row(call.call_control_id) is None, "the call to leave the list")
    history = page.wait(lambda: page.driver.find_elements(
        By.CSS_SELECTOR, f'[data-test="history-row"][data-call="{call.call_control_id}"]'), "the call in the history")
    assert "ended" in history[0].text
    page.screenshot("call-ended")


def test_a_dtmf_key_is_heard(make_console, telnyx: FakeTelnyx) -> None:
    server, page = make_console()
    page.open()
    call = streaming_call(telnyx, server)
    page.open_call(call.call_control_id)
    start = len(call.heard_pcm())
    page.find("dtmf-key-5").click()
    pcm = heard_after(call, start, 640)  # 80 ms of the 100 ms tone
    # 5 is 770 Hz + 1336 Hz; its neighbours on the keypad are far below both.
    powers = {hz: tone_power(pcm, hz) for hz in (697, 770, 852, 1209, 1336, 1477)}
    assert min(powers[770], powers[1336]) > 50 * max(powers[697], powers[852], powers[1209], powers[1477])
    page.wait(lambda: any("DTMF 5" in row.text for row in page.injection_rows()), "the injection listed")
    page.screenshot("dtmf")
    # The call's log, filtered as /stream-log filters: only the injection's events, live.
    page.find("log-event").send_keys("injection")
    page.find("log-apply").click()
    logged = "return [...document.querySelectorAll('[data-test=log-entry]')].map((e) => e.dataset.event)"
    page.wait(lambda: page.driver.execute_script(logged) == ["injection.created", "injection.playing",
                                                             "injection.finished"], "the filtered log")


def test_text_in_a_picked_voice_is_heard(make_console, telnyx: FakeTelnyx) -> None:
    server, page = make_console()
    page.open()
    call = streaming_call(telnyx, server)
    page.open_call(call.call_control_id)
    page.wait(lambda: page.find("voice-select").find_elements(By.CSS_SELECTOR, 'option[value="en-us"]'), "the voices")
    page.find("voice-select").find_element(By.CSS_SELECTOR, 'option[value="en-us"]').click()
    page.find("speak-text").send_keys("Hello from the console")
    start = len(call.heard_pcm())
    page.find("inject-text").click()
    speech = heard_after(call, start, 4000)
    assert sine_peak_dbfs(speech) > -40  # words, not silence
    row = page.wait(lambda: page.injection_rows(), "the speech listed")[0]
    assert 'speak "Hello from the console"' in row.text
    injection = server.http.get(f"/streams/{call.call_control_id}").json()["injections"][0]
    assert injection["source"]["voice"] == "en-us"


def test_an_uploaded_wav_is_heard(make_console, telnyx: FakeTelnyx, tmp_path: Path) -> None:
    server, page = make_console()
    page.open()
    call = streaming_call(telnyx, server)
    page.open_call(call.call_control_id)
    sound = tmp_path / "upload.wav"
    sound.write_bytes(wav_bytes(0.3 * np.sin(2 * np.pi * 1000 * np.arange(RATE) / RATE)))
    start = len(call.heard_pcm())
    page.find("file-input").send_keys(str(sound))
    pcm = heard_after(call, start, 4000)
    assert abs(dominant_hz(pcm, RATE) - 1000) < 5
    assert abs(sine_peak_dbfs(pcm[400:3600]) - 20 * np.log10(0.3)) < 0.5
    row = page.wait(lambda: page.injection_rows(), "the upload listed")[0]
    assert "file upload.wav" in row.text
    page.wait(lambda: page.find("injection-status", page.injection_rows()[0]).text == "finished", "it to finish")
    # Dropped on the drop zone, as a file dragged from the desktop arrives.
    dropped = base64.b64encode(wav_bytes(0.3 * np.sin(2 * np.pi * 1500 * np.arange(RATE) / RATE))).decode()
    start = len(call.heard_pcm())
    page.driver.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.wav", {type: "audio/wav"}));
        const zone = document.querySelector('[data-test="drop-zone"]');
        zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
    """, dropped)
    assert abs(dominant_hz(heard_after(call, start, 4000), RATE) - 1500) < 5
    page.wait(lambda: "file dropped.wav" in page.injection_rows()[0].text, "the dropped file listed")


def test_a_picked_clip_is_heard(make_console, telnyx: FakeTelnyx, media_dir: Path) -> None:
    (media_dir / "chime.wav").write_bytes(wav_bytes(0.25 * np.sin(2 * np.pi * 600 * np.arange(RATE) / RATE)))
    (media_dir / "other.wav").write_bytes(wav_bytes(0.25 * np.sin(2 * np.pi * 1500 * np.arange(RATE) / RATE)))
    server, page = make_console()
    page.open()
    call = streaming_call(telnyx, server)
    page.open_call(call.call_control_id)
    page.wait(lambda: len(page.find("clip-select").find_elements(By.TAG_NAME, "option")) == 2, "the clips")
    page.find("clip-select").find_element(By.CSS_SELECTOR, 'option[value="chime"]').click()
    start = len(call.heard_pcm())
    page.find("inject-clip").click()
    pcm = heard_after(call, start, 4000)
    assert abs(dominant_hz(pcm, RATE) - 600) < 5


def test_moving_a_gain_slider_is_heard(make_console, telnyx: FakeTelnyx) -> None:
    server, page = make_console()
    page.open()
    call = streaming_call(telnyx, server)
    page.open_call(call.call_control_id)
    page.find("opt-loop").click()
    for name, value in (("tone-frequency", "500"), ("tone-duration", "1000"), ("tone-level", "-10")):
        field = page.find(name)
        field.clear()
        field.send_keys(value)
    start = len(call.heard_pcm())
    page.find("inject-tone").click()
    loud = heard_after(call, start, 4000)
    assert abs(sine_peak_dbfs(loud[800:]) - -10) < 0.5
    slider = page.wait(lambda: page.find_all("gain-slider"), "the injection's slider")[0]
    slider.send_keys(Keys.HOME)  # to -60 dB, as a hand on the keyboard would
    key = call.call_control_id
    inj_id = page.injection_rows()[0].get_attribute("data-id")
    wait_until(lambda: server.http.get(f"/streams/{key}/injections/{inj_id}").json()["gain_db"] == -60,
               what="the gain change to reach the server")
    after = len(call.heard_pcm())
    wait_until(lambda: len(call.heard_pcm()) > after + 4000, what="more of the call")
    quiet = call.heard_pcm()[after + 800: after + 4000]
    assert sine_peak_dbfs(quiet) < -60  # -70 dBFS, G.711's steps give or take
    assert abs(dominant_hz(quiet, RATE) - 500) < 10 or sine_peak_dbfs(quiet) < -75
    assert page.find("gain-value", page.injection_rows()[0]).text == "-60 dB"
    page.screenshot("gain")


def test_a_bad_upload_shows_the_apis_own_error_by_its_field(make_console, telnyx: FakeTelnyx, tmp_path: Path) -> None:
    server, page = make_console()
    page.open()
    call = streaming_call(telnyx, server)
    page.open_call(call.call_control_id)
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really audio")
    page.find("file-input").send_keys(str(bad))
    shown = page.wait(lambda: page.find("error-file").text, "the error next to the file field")
    api = server.http.post(f"/streams/{call.call_control_id}/inject",
                           files={"file": ("broken.wav", bad.read_bytes(), "audio/wav")},
                           data={"gain_db": "0", "loop": "false", "duck": "false", "fade_in_ms": "0",
                                 "fade_out_ms": "0"})
    assert api.status_code == 422 and api.json()["error"]["field"] == "file"
    assert shown == api.json()["error"]["message"]
    # A field of the tone panel: its error sits next to it.
    frequency = page.find("tone-frequency")
    frequency.clear()
    frequency.send_keys("6000")
    page.find("inject-tone").click()
    assert "4000 Hz" in page.wait(lambda: page.find("error-tone-frequency").text, "the tone's error")
    assert page.find("error-file").text == ""  # the old error is gone
    page.screenshot("errors")


def test_the_token_prompt_guards_everything(make_console, telnyx: FakeTelnyx) -> None:
    server, page = make_console(API_TOKEN="s3cret-token")
    page.open()
    page.wait(lambda: page.present("login-form"), "the sign-in page")
    assert not page.present("call-list")
    for path in ("/console/console.js", "/streams", "/events", "/clips", "/stream-log"):
        assert httpx.get(f"{server.url}{path}").status_code == 401, path
    page.find("login-token").send_keys("wrong")
    page.find("login-submit").click()
    assert page.wait(lambda: page.find("login-error").text, "the refusal") == "That is not the API token."
    assert not page.present("call-list")
    page.screenshot("sign-in")
    token = page.find("login-token")
    token.clear()
    token.send_keys("s3cret-token")
    page.find("login-submit").click()
    page.wait(lambda: page.present("call-list"), "the console")
    page.wait(lambda: page.find("feed-status").text == "live", "the feed, with the session")
    server.http.headers["Authorization"] = "Bearer s3cret-token"  # for the test's own checks
    call = streaming_call(telnyx, server)
    page.open_call(call.call_control_id)
    start = len(call.heard_pcm())
    page.find("dtmf-key-1").click()
    heard_after(call, start, 320)
    # The cookie alone opens the console's files, not the API: that needs the console header too.
    cookie = {"mixer_console": page.driver.get_cookie("mixer_console")["value"]}
    assert page.driver.get_cookie("mixer_console")["httpOnly"] is True
    assert httpx.get(f"{server.url}/console/console.js", cookies=cookie).status_code == 200
    assert httpx.get(f"{server.url}/streams", cookies=cookie).status_code == 401
    assert httpx.get(f"{server.url}/streams", cookies=cookie, headers={"X-Mixer-Console": "1"}).status_code == 200
    page.find("logout").click()
    page.wait(lambda: page.present("login-form"), "the sign-in page after signing out")


def test_the_console_during_a_call(make_console, telnyx: FakeTelnyx, media_dir: Path) -> None:
    """A full view: a call with a speaking caller and sounds playing. CONSOLE_PNG=docs/console.png
    also writes it there (make console-png)."""
    from simulator.audio import CallerAudio

    (media_dir / "hold-music.wav").write_bytes(wav_bytes(0.2 * np.sin(2 * np.pi * 330 * np.arange(6 * RATE) / RATE)))
    server, page = make_console()
    page.open()
    call = telnyx.place_call(caller_audio=CallerAudio.speech_like(level_dbfs=-14))
    call.wait_streaming(timeout=10)
    page.open_call(call.call_control_id)
    key = call.call_control_id
    server.http.post(f"/streams/{key}/inject", json={"clip": "hold-music", "loop": True, "duck": True,
                                                     "gain_db": -6, "label": "hold music"})
    server.http.post(f"/streams/{key}/inject", json={"dtmf": "42#"})
    server.http.post(f"/streams/{key}/inject", json={"tone": {"frequency_hz": 5000}})  # a refusal, logged
    page.wait(lambda: len(page.injection_rows()) == 2, "the injections")
    page.wait(lambda: page.find("level-caller").text not in ("–", "silence")
              and page.find("level-sent").text not in ("–", "silence"), "both meters moving")
    page.wait(lambda: "injection.rejected" in page.driver.execute_script(
        "return [...document.querySelectorAll('[data-test=log-entry]')].map((e) => e.dataset.event)"),
        "the refusal in the log")
    path = page.screenshot("console-during-a-call")
    target = os.environ.get("CONSOLE_PNG")
    if target:
        Path(target).write_bytes(path.read_bytes())
