// The operator console: a client of the API in docs/api.md, nothing more.
//
// - The live call list follows GET /events (Server-Sent Events, read with fetch: EventSource
//   cannot send the console header) and refreshes GET /streams when a call's events arrive, and
//   once a second for ages and who is speaking: one request for all calls, never one per call.
// - The open call's meters and injections come from GET /streams/<id>, four times a second.
// - Every request carries X-Mixer-Console: with API_TOKEN set, the server accepts the console's
//   session cookie only with it (apitoken.py); a 401 means the session is gone: back to sign-in.
// Everything the server sends is shown with textContent, never parsed as HTML.
"use strict";

const CONSOLE_HEADERS = {"X-Mixer-Console": "1"};
const LIST_REFRESH_MS = 1000;
const CALL_REFRESH_MS = 250;
const HISTORY_PAGE = 20;
const LOG_PAGE = 200;
const LOG_KEEP = 2000;
const DTMF_KEYS = ["1", "2", "3", "A", "4", "5", "6", "B", "7", "8", "9", "C", "*", "0", "#", "D"];

const state = {
  calls: new Map(),      // call_control_id -> Stream view, the live calls
  selected: null,        // call_control_id of the open call
  log: new Map(),        // event id -> event, the open call's log as filtered
  logCursor: null,       // next_cursor of /stream-log for the open call, null when all is loaded
  logFilter: {event: "", since: ""},
  historyCursor: null,
  historyPageStart: null,
  refreshTimer: null,
};

class ApiFailure extends Error {
  constructor(status, error) {
    super(error && error.message ? error.message : `The server answered ${status}.`);
    this.status = status;
    this.code = error ? error.code : null;
    this.field = error ? error.field : null;
  }
}

const $ = (selector, root = document) => root.querySelector(`[data-test="${selector}"]`);

function element(tag, attributes = {}, text = null) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "className") node.className = value;
    else node.setAttribute(name, value);
  }
  if (text !== null) node.textContent = String(text);
  return node;
}

async function api(method, path, body) {
  const init = {method, headers: {...CONSOLE_HEADERS}, credentials: "same-origin"};
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const answer = await fetch(path, init);
  if (answer.status === 401) {
    window.location.reload();  // the sign-in page
    throw new ApiFailure(401, null);
  }
  const data = await answer.json().catch(() => null);
  if (!answer.ok) throw new ApiFailure(answer.status, data && data.error);
  return data;
}

// -- the event feed --------------------------------------------------------------------------------

async function follow(onEvent) {
  const status = $("feed-status");
  let lastId = null;
  let retryMs = 2000;
  for (;;) {
    try {
      const headers = {...CONSOLE_HEADERS};
      if (lastId !== null) headers["Last-Event-ID"] = String(lastId);
      const answer = await fetch("/events", {headers, credentials: "same-origin", cache: "no-store"});
      if (answer.status === 401) {
        window.location.reload();
        return;
      }
      if (!answer.ok) throw new Error(`the feed answered ${answer.status}`);
      status.textContent = "live";
      status.classList.add("live");
      refreshCalls();  // what changed while we were away is in the feed; the list is refreshed anyway
      const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let data = null;
          for (const line of block.split("\n")) {
            if (line.startsWith("id: ")) lastId = Number(line.slice(4));
            else if (line.startsWith("data: ")) data = line.slice(6);
            else if (line.startsWith("retry: ")) retryMs = Number(line.slice(7)) || retryMs;
          }
          if (data !== null) onEvent(JSON.parse(data));
        }
      }
    } catch (exc) {
      console.warn("event feed:", exc);
    }
    status.textContent = "reconnecting…";
    status.classList.remove("live");
    await new Promise((resolve) => setTimeout(resolve, retryMs));
  }
}

function onEvent(event) {
  if (event.call_control_id) scheduleRefresh();
  if (/^stream\.(ended|failed|interrupted)$/.test(event.event)) refreshHistory(state.historyPageStart);
  if (event.call_control_id === state.selected && state.selected !== null && logMatches(event)) {
    state.log.set(event.id, event);
    renderLog();
  }
}

function scheduleRefresh() {
  if (state.refreshTimer !== null) return;
  state.refreshTimer = setTimeout(() => {
    state.refreshTimer = null;
    refreshCalls();
    if (state.selected) refreshCall();
  }, 100);
}

// -- the live calls ---------------------------------------------------------------------------------

async function refreshCalls() {
  let page;
  try {
    page = await api("GET", "/streams");
  } catch (exc) {
    return;
  }
  state.calls = new Map(page.items.map((call) => [call.call_control_id, call]));
  renderCalls();
}

function age(since) {
  const seconds = Math.max(0, Math.floor((Date.now() - Date.parse(since)) / 1000));
  const minutes = Math.floor(seconds / 60);
  return `${minutes}:${String(seconds % 60).padStart(2, "0")}`;
}

function renderCalls() {
  const body = $("call-list").tBodies[0];
  const rows = [];
  for (const call of state.calls.values()) {
    const row = element("tr", {className: "call-row", "data-test": "call-row", dataset: {call: call.call_control_id}});
    if (call.call_control_id === state.selected) row.classList.add("selected");
    row.append(
      element("td", {className: "id", title: call.call_control_id}, call.call_control_id),
      element("td", {className: `status-${call.status}`, "data-test": "call-status-cell"}, call.status),
      element("td", {}, `${call.codec}/${call.sample_rate}`),
      element("td", {"data-test": "call-age"}, age(call.created_at)),
      element("td", {}, call.node || "–"),
      element("td", {"data-test": "speaking", className: call.caller_speaking ? "speaking" : ""},
        call.caller_speaking ? "speaking" : "–"),
    );
    row.addEventListener("click", () => select(call.call_control_id));
    rows.push(row);
  }
  body.replaceChildren(...rows);
  $("no-calls").hidden = rows.length > 0;
}

// -- the open call ------------------------------------------------------------------------------------

function select(callControlId) {
  state.selected = callControlId;
  state.log = new Map();
  $("call-panel").hidden = false;
  $("call-id").textContent = callControlId;
  $("injections").replaceChildren();
  clearErrors();
  renderCalls();
  refreshCall();
  loadLog();
}

async function refreshCall() {
  const key = state.selected;
  if (!key) return;
  let call;
  try {
    call = await api("GET", `/streams/${encodeURIComponent(key)}`);
  } catch (exc) {
    return;
  }
  if (key !== state.selected) return;
  $("call-status").textContent = call.status;
  const levels = call.levels || {caller_dbfs: -96, sent_dbfs: -96};
  meter("caller", levels.caller_dbfs);
  meter("sent", levels.sent_dbfs);
  renderInjections(call.injections);
}

function meter(which, dbfs) {
  const width = Math.max(0, Math.min(100, (dbfs + 60) / 60 * 100));  // -60 dBFS .. 0 dBFS
  $(`meter-${which}`).style.width = `${width}%`;
  $(`level-${which}`).textContent = dbfs <= -96 ? "silence" : `${dbfs.toFixed(1)} dBFS`;
}

function describe(source) {
  switch (source.kind) {
    case "tone": return `tone ${source.frequency_hz} Hz`;
    case "dtmf": return `DTMF ${source.digits}`;
    case "clip": return `clip ${source.name}`;
    case "file": return `file ${source.filename || ""}`;
    case "text": return `speak "${source.text}"`;
    case "audio_url": return source.url;
    default: return source.kind;
  }
}

function renderInjections(injections) {
  const body = $("injections");
  const rows = new Map([...body.children].map((row) => [row.dataset.id, row]));
  const ordered = [];
  for (const inj of injections) {
    let row = rows.get(inj.id);
    if (!row) row = injectionRow(inj);
    const active = inj.status === "created" || inj.status === "playing";
    const status = $("injection-status", row);
    status.textContent = inj.error ? `${inj.status}: ${inj.error}` : inj.status;
    status.className = `status-${inj.status}`;
    const progress = $("injection-progress", row);
    const played = $("injection-played", row);
    if (inj.duration_ms) {
      progress.max = inj.duration_ms;
      progress.value = Math.min(inj.played_ms, inj.duration_ms);
      played.textContent = `${(inj.played_ms / 1000).toFixed(1)} / ${(inj.duration_ms / 1000).toFixed(1)} s`;
    } else {
      progress.removeAttribute("value");
      played.textContent = `${(inj.played_ms / 1000).toFixed(1)} s${inj.loop ? " (loop)" : ""}`;
    }
    const slider = $("gain-slider", row);
    if (document.activeElement !== slider) {
      slider.value = inj.gain_db;
      $("gain-value", row).textContent = `${inj.gain_db} dB`;
    }
    slider.disabled = !active || inj.mode !== "mix";
    $("stop-injection", row).disabled = !active;
    ordered.push(row);
  }
  body.replaceChildren(...ordered.reverse());  // the newest first
}

function injectionRow(inj) {
  const row = element("tr", {"data-test": "injection-row", dataset: {id: inj.id}});
  const slider = element("input", {type: "range", min: "-60", max: "12", step: "1", "data-test": "gain-slider",
    "aria-label": "gain in dB"});
  const gainValue = element("output", {"data-test": "gain-value"});
  slider.addEventListener("input", () => { gainValue.textContent = `${slider.value} dB`; });
  slider.addEventListener("change", async () => {
    try {
      await api("PATCH", `/streams/${encodeURIComponent(state.selected)}/injections/${inj.id}`,
        {gain_db: Number(slider.value)});
    } catch (exc) {
      showError(exc);
    }
    slider.blur();
  });
  const stop = element("button", {type: "button", "data-test": "stop-injection"}, "Stop");
  stop.addEventListener("click", async () => {
    try {
      await api("DELETE", `/streams/${encodeURIComponent(state.selected)}/injections/${inj.id}`);
    } catch (exc) {
      showError(exc);
    }
    refreshCall();
  });
  const label = inj.label ? ` (${inj.label})` : "";
  row.append(
    element("td", {title: inj.id}, describe(inj.source) + label),
    element("td", {"data-test": "injection-status"}),
    (() => {
      const cell = element("td");
      cell.append(element("progress", {"data-test": "injection-progress"}), " ",
        element("span", {"data-test": "injection-played"}));
      return cell;
    })(),
    (() => {
      const cell = element("td");
      cell.append(slider, " ", gainValue);
      return cell;
    })(),
    (() => {
      const cell = element("td");
      cell.append(stop);
      return cell;
    })(),
  );
  return row;
}

// -- injecting -------------------------------------------------------------------------------------------

function options() {
  const form = $("inject-form");
  return {
    gain_db: Number(form.elements.gain_db.value || 0),
    loop: form.elements.loop.checked,
    duck: form.elements.duck.checked,
    fade_in_ms: Number(form.elements.fade_in_ms.value || 0),
    fade_out_ms: Number(form.elements.fade_out_ms.value || 0),
  };
}

function clearErrors() {
  for (const span of document.querySelectorAll("[data-error-for]")) span.textContent = "";
  $("inject-error").textContent = "";
}

// The API's own message, next to the field it names when the form has that field.
function showError(exc) {
  const message = exc instanceof ApiFailure ? exc.message : `The request failed: ${exc.message}`;
  const spot = exc.field ? document.querySelector(`[data-error-for="${CSS.escape(exc.field)}"]`) : null;
  (spot || $("inject-error")).textContent = message;
}

async function inject(body) {
  if (!state.selected) return;
  clearErrors();
  try {
    await api("POST", `/streams/${encodeURIComponent(state.selected)}/inject`, body);
  } catch (exc) {
    showError(exc);
  }
  refreshCall();
}

function injectFile(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  for (const [name, value] of Object.entries(options())) form.append(name, String(value));
  return inject(form);
}

function setUpInjecting() {
  const form = $("inject-form");
  form.addEventListener("submit", (event) => event.preventDefault());
  const input = $("file-input");
  input.addEventListener("change", () => {
    if (input.files.length) injectFile(input.files[0]).finally(() => { input.value = ""; });
  });
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) injectFile(event.dataTransfer.files[0]);
  });
  $("inject-clip").addEventListener("click", () => inject({clip: $("clip-select").value, ...options()}));
  $("inject-tone").addEventListener("click", () => inject({
    tone: {
      frequency_hz: Number(form.elements.frequency_hz.value),
      duration_ms: Number(form.elements.duration_ms.value),
      level_dbfs: Number(form.elements.level_dbfs.value),
    },
    ...options(),
  }));
  const keypad = $("dtmf-keypad");
  for (const key of DTMF_KEYS) {
    const name = key === "*" ? "star" : key === "#" ? "hash" : key;
    const button = element("button", {type: "button", "data-test": `dtmf-key-${name}`}, key);
    button.addEventListener("click", () => inject({dtmf: key, ...options()}));
    keypad.append(button);
  }
  $("inject-text").addEventListener("click", () => {
    const body = {text: $("speak-text").value, ...options()};
    if ($("voice-select").value) body.voice = $("voice-select").value;
    inject(body);
  });
  $("clear-call").addEventListener("click", async () => {
    try {
      await api("POST", `/streams/${encodeURIComponent(state.selected)}/clear`);
    } catch (exc) {
      showError(exc);
    }
    refreshCall();
  });
}

async function loadChoices() {
  try {
    const clips = await api("GET", "/clips");
    const select = $("clip-select");
    select.replaceChildren(...clips.items.map((clip) => element("option", {value: clip.name},
      clip.duration_ms ? `${clip.name} (${(clip.duration_ms / 1000).toFixed(1)} s)` : clip.name)));
    if (!clips.items.length) select.append(element("option", {value: ""}, "no clips in MEDIA_DIR"));
  } catch (exc) {
    showError(exc);
  }
  try {
    const voices = await api("GET", "/voices");
    const select = $("voice-select");
    select.replaceChildren(element("option", {value: ""}, "default voice"),
      ...voices.items.map((voice) => element("option", {value: voice}, voice)));
  } catch (exc) {
    $("error-voice").textContent = exc.message;
  }
}

// -- the open call's event log -------------------------------------------------------------------------

function logMatches(event) {
  const wanted = state.logFilter.event.toLowerCase();
  const name = event.event.toLowerCase();
  if (wanted && name !== wanted && !name.startsWith(`${wanted}.`)) return false;
  if (state.logFilter.since && Date.parse(event.at) < Date.parse(state.logFilter.since)) return false;
  return true;
}

async function loadLog(more = false) {
  const key = state.selected;
  if (!key) return;
  const query = new URLSearchParams({call_control_id: key, limit: String(LOG_PAGE)});
  if (state.logFilter.event) query.set("event", state.logFilter.event);
  if (state.logFilter.since) query.set("since", state.logFilter.since);
  if (more && state.logCursor) query.set("cursor", state.logCursor);
  $("log-error").textContent = "";
  let page;
  try {
    page = await api("GET", `/stream-log?${query}`);
  } catch (exc) {
    $("log-error").textContent = exc.message;
    return;
  }
  if (key !== state.selected) return;
  if (!more) state.log = new Map();
  for (const event of page.items) state.log.set(event.id, event);
  state.logCursor = page.next_cursor;
  $("log-more").hidden = page.next_cursor === null;
  renderLog();
}

function renderLog() {
  const ids = [...state.log.keys()].sort((a, b) => a - b);
  for (const id of ids.slice(0, Math.max(0, ids.length - LOG_KEEP))) state.log.delete(id);
  const list = $("event-log");
  const stick = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  list.replaceChildren(...ids.slice(-LOG_KEEP).map((id) => {
    const event = state.log.get(id);
    const item = element("li", {"data-test": "log-entry", dataset: {event: event.event}});
    item.append(element("span", {}, `${event.at} `), element("span", {className: "name"}, event.event),
      element("span", {}, ` ${JSON.stringify(event.data)}`));
    return item;
  }));
  if (stick) list.scrollTop = list.scrollHeight;
}

// -- history ---------------------------------------------------------------------------------------------

async function refreshHistory(cursor = null) {
  const query = new URLSearchParams({status: $("history-status").value, limit: String(HISTORY_PAGE)});
  if (cursor) query.set("cursor", cursor);
  let page;
  try {
    page = await api("GET", `/streams?${query}`);
  } catch (exc) {
    return;
  }
  state.historyPageStart = cursor;
  state.historyCursor = page.next_cursor;
  $("history-next").disabled = page.next_cursor === null;
  $("history").tBodies[0].replaceChildren(...page.items.map((call) => {
    const row = element("tr", {className: "call-row", "data-test": "history-row", dataset: {call: call.call_control_id}});
    row.append(
      element("td", {className: "id", title: call.call_control_id}, call.call_control_id),
      element("td", {className: `status-${call.status}`}, call.status),
      element("td", {}, call.started_at || "–"),
      element("td", {}, call.ended_at || "–"),
      element("td", {}, call.end_reason || "–"),
      element("td", {}, String(call.injections.length)),
    );
    row.addEventListener("click", () => select(call.call_control_id));
    return row;
  }));
}

// -- start ---------------------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  setUpInjecting();
  const logout = $("logout");
  logout.hidden = false;
  logout.addEventListener("click", async () => {
    await fetch("/console/logout", {method: "POST", headers: CONSOLE_HEADERS});
    window.location.reload();
  });
  $("log-apply").addEventListener("click", () => {
    state.logFilter = {event: $("log-event").value.trim(), since: $("log-since").value.trim()};
    loadLog();
  });
  $("log-more").addEventListener("click", () => loadLog(true));
  $("history-status").addEventListener("change", () => refreshHistory());
  $("history-first").addEventListener("click", () => refreshHistory());
  $("history-next").addEventListener("click", () => refreshHistory(state.historyCursor));
  loadChoices();
  refreshCalls();
  refreshHistory();
  setInterval(refreshCalls, LIST_REFRESH_MS);
  setInterval(refreshCall, CALL_REFRESH_MS);
  follow(onEvent);
});
