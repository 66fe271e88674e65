// The sagaflow console: plain JavaScript over the same JSON API and keys as every client.
// Views are routed by the URL hash; every string from the API goes into the page as text
// (never as HTML), so a payload cannot inject markup.
"use strict";

const KEY = "sagaflow.key";
const view = document.getElementById("view");
const notice = document.getElementById("notice");
let refresh = null; // the current view's retry timer (after an error)
let stream = null; // the current view's event stream (an AbortController)
let definitions = null; // cached /v1/saga-definitions

// --- Building the page -------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function badge(status) {
  return h("span", { class: `status s-${status}` }, status);
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function show(...nodes) {
  view.replaceChildren(...nodes.flat().filter((node) => node !== null && node !== undefined));
}

function say(text) {
  notice.textContent = text || "";
}

// --- Talking to the API ------------------------------------------------------------------

class Refused extends Error {}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  const key = sessionStorage.getItem(KEY);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  const body = await response.json().catch(() => null);
  if (response.status === 401) {
    throw new Refused("This needs an API key: paste an operator key above.");
  }
  if (response.status === 403) {
    throw new Refused(`This key may not do that: ${body && body.detail}`);
  }
  if (!response.ok) {
    throw new Error((body && body.detail) || `${response.status} ${response.statusText}`);
  }
  return body;
}

async function sagaDefinitions() {
  if (!definitions) definitions = await api("/v1/saga-definitions");
  return definitions;
}

// --- Views -------------------------------------------------------------------------------

async function overview() {
  document.title = "Overview · sagaflow";
  const [stats, lag] = await Promise.all([api("/v1/saga-stats"), api("/v1/consumer-lag")]);
  const statuses = ["RUNNING", "COMPENSATING", "COMPLETED", "COMPENSATED", "CANCELLED", "FAILED", "RESOLVED"];
  const names = [...new Set(stats.by_status.map((row) => row.definition))];
  const count = (definition, status) =>
    (stats.by_status.find((row) => row.definition === definition && row.status === status) || {})
      .count || 0;
  // Sixty slots, one per minute of the last hour; a minute with nothing in it stays empty.
  const minute = 60000;
  const now = Math.floor(new Date(stats.as_of).getTime() / minute) * minute;
  const slots = Array.from({ length: 60 }, (_, i) => {
    const at = now - (59 - i) * minute;
    return stats.per_minute.find((m) => new Date(m.minute).getTime() === at)
      || { minute: new Date(at).toISOString(), started: 0, completed: 0, compensated: 0, failed: 0 };
  });
  const peak = Math.max(1, ...slots.map((m) => m.started + m.completed + m.compensated + m.failed));
  show(
    h("h2", {}, "Overview"),
    h(
      "div",
      { class: "cards" },
      card("Running", names.reduce((n, d) => n + count(d, "RUNNING") + count(d, "COMPENSATING"), 0)),
      card("Failed (need an operator)", names.reduce((n, d) => n + count(d, "FAILED"), 0)),
      card("Overdue", stats.overdue),
      card("Quarantined", stats.quarantined),
      card("Dead letters waiting", h("a", { href: "#/dead-letters" }, stats.dead_letters_waiting)),
      card("Outbox backlog", stats.outbox_backlog,
        stats.oldest_unpublished_seconds !== undefined
          ? `oldest ${stats.oldest_unpublished_seconds.toFixed(1)} s` : null),
    ),
    h("h3", {}, "Sagas by definition and status"),
    h(
      "table",
      { id: "by-status" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "definition"),
        statuses.map((s) => h("th", { scope: "col" }, s)))),
      h("tbody", {}, names.map((d) => h("tr", {}, h("th", { scope: "row" }, d),
        statuses.map((s) => h("td", {}, count(d, s) ? h("a", { href: `#/sagas?definition=${d}&status=${s}` }, count(d, s)) : "0"))))),
    ),
    h("h3", {}, "Consumer lag"),
    h("table", { id: "lag" },
      h("thead", {}, h("tr", {}, ["consumer", "group", "topic", "lag"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, lag.map((group) => h("tr", {}, h("td", {}, group.consumer), h("td", {}, h("code", {}, group.group)),
        h("td", {}, h("code", {}, group.topic)), h("td", {}, group.error ? `unknown: ${group.error}` : group.lag))))),
    h("h3", {}, "Started and ended per minute, last hour"),
    h("div", { class: "minutes", role: "img",
      "aria-label": `${stats.per_minute.reduce((n, m) => n + m.started, 0)} sagas started in the last hour` },
      slots.map((m) => h("div", {
        style: `height:${(100 * (m.started + m.completed + m.compensated + m.failed)) / peak}%`,
        title: `${when(m.minute)}: ${m.started} started, ${m.completed} completed, ${m.compensated} compensated, ${m.failed} failed`,
      }))),
    h("p", { class: "muted" }, `as of ${when(stats.as_of)}; refreshes every 5 s`),
  );
  return 5000;
}

function card(title, value, note) {
  return h("div", { class: "card" }, title, h("strong", {}, value), note && h("span", { class: "muted" }, note));
}

async function sagaList(params) {
  document.title = "Sagas · sagaflow";
  const query = new URLSearchParams();
  for (const name of ["definition", "status", "user_id", "order_id", "campaign_id", "idempotency_key", "updated_before", "cursor"]) {
    if (params.get(name)) query.set(name, params.get(name));
  }
  query.set("limit", "50");
  const [page, defs] = await Promise.all([api(`/v1/sagas?${query}`), sagaDefinitions()]);
  const select = (name, options) => h("label", {}, name,
    h("select", { name }, h("option", { value: "" }, "any"),
      options.map((o) => h("option", { value: o, selected: params.get(name) === o }, o))));
  const filters = h("form", { class: "filters", onsubmit: (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const next = new URLSearchParams();
    for (const [name, value] of form) if (value) next.set(name, value);
    location.hash = `#/sagas?${next}`;
  } },
    select("definition", defs.map((d) => d.name)),
    select("status", ["RUNNING", "COMPENSATING", "COMPLETED", "COMPENSATED", "CANCELLED", "FAILED", "RESOLVED"]),
    ["user_id", "order_id", "campaign_id", "idempotency_key"].map((name) =>
      h("label", {}, name.replace("_", " "), h("input", { name, value: params.get(name) || "", size: 14 }))),
    h("label", {}, "updated before", h("input", { name: "updated_before", value: params.get("updated_before") || "", placeholder: "2026-11-29T10:00:00Z", size: 20 })),
    h("button", { type: "submit" }, "Filter"));
  const rows = page.items.map((saga) => h("tr", {},
    h("td", {}, h("a", { href: `#/sagas/${saga.id}` }, h("code", {}, saga.id))),
    h("td", {}, saga.definition),
    h("td", {}, badge(saga.status), saga.quarantine ? " quarantined" : ""),
    h("td", {}, saga.current_step),
    h("td", {}, when(saga.updated_at))));
  const next = new URLSearchParams(params);
  if (page.next_cursor) next.set("cursor", page.next_cursor);
  show(
    h("h2", {}, "Sagas"),
    filters,
    h("table", { id: "sagas" },
      h("thead", {}, h("tr", {}, ["id", "definition", "status", "step", "updated"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 5 }, "No sagas match.")))),
    page.next_cursor ? h("a", { href: `#/sagas?${next}` }, "Older sagas →") : null,
    h("p", { class: "muted" }, params.get("cursor") ? "" : "The first page follows the sagas' events."),
  );
  // Live on the first page only, so paging back through history stays put: redrawn a
  // second after sagas change (a burst of events is one redraw).
  if (!params.get("cursor")) {
    const only = params.get("definition") ? `?definition=${encodeURIComponent(params.get("definition"))}` : "";
    follow(`/v1/saga-events${only}`, null, 1000);
  }
  return null;
}

// Follows Server-Sent Events (read with fetch, so the key goes in a header as for every
// other request) and redraws the view once one arrives, `settle` ms later (lists and the
// overview gather a burst into one redraw). No timer polls the API.
function follow(path, lastId, settle = 0) {
  const controller = new AbortController();
  stream = controller;
  const headers = { Accept: "text/event-stream" };
  const key = sessionStorage.getItem(KEY);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (lastId) headers["Last-Event-ID"] = String(lastId);
  const redraw = () => {
    controller.abort();
    if (stream === controller) setTimeout(() => { if (stream === controller) route(); }, settle);
  };
  fetch(path, { headers, signal: controller.signal }).then(async (response) => {
    if (!response.ok || !response.body) return;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      const blocks = buffer.split("\n\n");
      buffer = blocks.pop();
      // A block with a data line is an event; ":" lines are keep-alives.
      if (blocks.some((block) => block.split("\n").some((line) => line.startsWith("data:")))) {
        redraw();
        return;
      }
    }
  }).catch(() => {});
}

async function sagaDetail(id) {
  document.title = `Saga ${id} · sagaflow`;
  const saga = await api(`/v1/sagas/${id}`);
  const canRetry = saga.status === "FAILED" && !saga.quarantine;
  const canCancel = saga.status === "RUNNING" && !saga.quarantine;
  show(
    h("h2", {}, `Saga `, h("code", {}, saga.id)),
    h("p", {}, badge(saga.status), ` ${saga.definition} v${saga.definition_version}, started ${when(saga.created_at)}, updated ${when(saga.updated_at)}`),
    saga.failure ? h("p", {}, h("strong", {}, "Why: "), saga.failure) : null,
    saga.quarantine ? h("p", {}, h("strong", {}, "Quarantined: "), saga.quarantine) : null,
    h("div", { class: "actions" },
      h("button", { id: "retry", disabled: !canRetry, onclick: () => act(saga, "retry") },
        "Retry compensation"),
      h("button", { id: "cancel", disabled: !canCancel, onclick: () => act(saga, "cancel") },
        "Cancel saga"),
      h("button", { id: "resolve", disabled: !canRetry, onclick: () => act(saga, "resolve") },
        "Resolve by hand")),
    h("h3", {}, "Steps"),
    diagram(saga.steps, saga),
    h("h3", {}, "Attempts"),
    timeline(saga),
    h("h3", {}, "History"),
    h("table", { id: "history" },
      h("thead", {}, h("tr", {}, ["time", "entry", "step", "attempt", "status", "detail"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, saga.history.map((entry) => h("tr", {},
        h("td", {}, when(entry.recorded_at)), h("td", {}, entry.kind), h("td", {}, entry.step ?? ""),
        h("td", {}, entry.attempt ?? ""), h("td", {}, badge(entry.status)),
        h("td", {}, h("code", {}, entry.detail.message || entry.detail.reason || summary(entry.detail))))))),
    h("h3", {}, "Payload"),
    h("pre", {}, JSON.stringify(saga.payload, null, 2)),
  );
  // The page follows the saga's events: it is redrawn when the next entry is recorded,
  // and not otherwise (a saga waiting days for a signal leaves the page, and the signal
  // form, alone). A final saga records no more.
  const final = ["COMPLETED", "COMPENSATED", "CANCELLED", "RESOLVED"].includes(saga.status);
  const last = saga.history.length ? saga.history[saga.history.length - 1].id : 0;
  if (!final) follow(`/v1/sagas/${encodeURIComponent(id)}/events`, last);
  return null;
}

function summary(detail) {
  const text = JSON.stringify(detail);
  return text === "{}" ? "" : text.length > 160 ? `${text.slice(0, 160)}…` : text;
}

// A box per step, coloured by where it stands forward and in compensation; the steps of
// one stage (a parallel group) are stacked together, stages are joined by arrows.
function stepBox(step, index, saga) {
  const what = step.kind === "wait"
    ? h("p", {}, step.wait_until ? `wait until input ${step.wait_until}` : step.wait_ms ? `wait ${step.wait_ms / 1000} s` : "durable wait")
    : step.kind === "signal"
      ? h("p", {}, `signal (scope ${step.signal_scope || "?"})${step.signal_timeout_ms ? `, timeout ${step.signal_timeout_ms / 1000} s` : ""}`)
      : h("p", {}, `${step.role}: ${step.command}`);
  const undo = step.kind !== "task"
    ? h("p", { class: "muted" }, "nothing to undo")
    : step.compensation
      ? h("p", {}, "undo ", badge(step.compensation_state), ` ${step.compensation_attempts} attempt(s)`)
      : h("p", { class: "muted" }, step.forward_only ? "forward only: retried, never undone" : "cannot be undone (fenced)");
  const waiting = saga && step.kind === "signal" && step.state === "in_flight" && saga.status === "RUNNING";
  return h("section", { class: `step s-${step.state}${step.pivot ? " pivot" : ""}`, "data-step": step.name, "data-kind": step.kind || "task",
    "aria-label": `${step.name}: ${step.state}, compensation ${step.compensation_state}` },
    h("h3", {}, `${index + 1}. ${step.name}`, step.pivot ? " (pivot)" : ""),
    what,
    h("p", {}, "forward ", badge(step.state), step.kind === "task" || !step.kind ? ` ${step.attempts} attempt(s)` : ""),
    undo,
    waiting ? signalForm(saga, step) : null,
    step.last_error ? h("p", {}, h("strong", {}, "error: "), step.last_error) : null,
    step.output ? h("details", {}, h("summary", {}, "output"), h("pre", {}, JSON.stringify(step.output, null, 2))) : null);
}

function diagram(steps, saga) {
  const stages = [];
  steps.forEach((step, index) => {
    const stage = step.stage ?? index;
    if (!stages.length || stages[stages.length - 1].stage !== stage) stages.push({ stage, boxes: [] });
    stages[stages.length - 1].boxes.push(stepBox(step, index, saga));
  });
  const parts = [];
  stages.forEach((stage, position) => {
    if (position > 0) parts.push(h("span", { class: "arrow", "aria-hidden": "true" }, "→"));
    parts.push(stage.boxes.length > 1
      ? h("div", { class: "stage parallel", "data-stage": stage.stage, "aria-label": `stage ${stage.stage + 1}: together` }, stage.boxes)
      : stage.boxes[0]);
  });
  return h("div", { class: "diagram", id: "diagram" }, parts);
}

// Sends a signal the saga waits for; the JSON typed in is the step's output.
function signalForm(saga, step) {
  return h("form", { class: "signal", id: `signal-${step.name}`, onsubmit: async (event) => {
    event.preventDefault();
    let body;
    try { body = JSON.parse(event.target.elements.body.value || "{}"); } catch (error) { say(`not JSON: ${error.message}`); return; }
    try {
      await api(`/v1/sagas/${saga.id}/signals/${step.name}`, { method: "POST", body });
      say(`signal ${step.name} sent`);
      route();
    } catch (error) { say(error.message); }
  } },
  h("label", {}, "body ", h("input", { name: "body", value: "{}", "aria-label": `${step.name} signal body` })),
  h("button", { type: "submit" }, `Send ${step.name}`));
}

// One bar per attempt, from its first send to its reply, on the saga's own time scale.
function timeline(saga) {
  const t = (iso) => new Date(iso).getTime();
  const start = t(saga.created_at);
  const finished = !(saga.status === "RUNNING" || saga.status === "COMPENSATING");
  const end = Math.max(start + 1, finished ? t(saga.updated_at) : Date.now());
  const bars = [];
  for (const entry of saga.history) {
    const sent = entry.kind === "command.sent" || entry.kind === "compensation.sent";
    if (sent) {
      const direction = entry.kind === "command.sent" ? "forward" : "compensation";
      const open = bars.find((b) => b.direction === direction && b.step === entry.step && b.attempt === entry.attempt && b.to === null);
      if (open) open.sends += 1;
      else bars.push({ direction, step: entry.step, attempt: entry.attempt, from: t(entry.recorded_at), to: null, sends: 1 });
    } else if (entry.kind === "reply.received") {
      const open = [...bars].reverse().find((b) => b.step === entry.step && b.attempt === entry.attempt && b.to === null);
      if (open) { open.to = t(entry.recorded_at); open.outcome = entry.detail.outcome && entry.detail.outcome.status; }
    }
  }
  if (!bars.length) return h("p", { class: "muted" }, "No command sent yet.");
  const name = (index) => (saga.steps[index] || {}).name || `step ${index}`;
  const lanes = bars.map((bar) => {
    const to = bar.to === null ? end : bar.to;
    const left = (100 * (bar.from - start)) / (end - start);
    const width = Math.max(0.3, (100 * (to - bar.from)) / (end - start));
    const label = `${name(bar.step)} ${bar.direction} attempt ${bar.attempt}: ${bar.to === null ? "no reply yet" : `${to - bar.from} ms, ${bar.outcome || "replied"}`}${bar.sends > 1 ? `, sent ${bar.sends} times` : ""}`;
    return h("div", { class: "lane" }, h("span", {}, label),
      h("div", { class: "track" }, h("div", { class: `bar ${bar.direction}${bar.to === null ? " open" : ""}`,
        style: `left:${left}%;width:${width}%`, title: label })));
  });
  return h("div", { class: "timeline", id: "timeline" }, lanes,
    h("p", { class: "muted" }, `0 to ${end - start} ms after the saga started`));
}

function act(saga, action) {
  const dialog = document.getElementById("confirm");
  const reason = document.getElementById("reason");
  const texts = {
    retry: ["Retry the compensation?", "The pending compensation runs again with a fresh budget."],
    cancel: ["Cancel this saga?", "Its dispatched steps are compensated, newest first, and it ends CANCELLED."],
    resolve: ["Resolve this saga by hand?", "It ends RESOLVED and nothing more is sent: whatever its compensation could not undo is yours to settle outside sagaflow."],
  };
  document.getElementById("confirm-title").textContent = texts[action][0];
  document.getElementById("confirm-text").textContent = texts[action][1];
  reason.value = "";
  dialog.returnValue = "";
  dialog.onclose = async () => {
    if (dialog.returnValue !== "ok") return;
    try {
      // Only on the saga as shown: if it moved meanwhile, the API answers 412.
      await api(`/v1/sagas/${saga.id}/${action}`, {
        method: "POST", body: { reason: reason.value }, headers: { "If-Match": `"${saga.version}"` },
      });
      say(`${action} requested`);
    } catch (error) {
      say(error.message);
    }
    route();
  };
  dialog.showModal();
  reason.focus();
}

async function deadLetterList(params) {
  document.title = "Dead letters · sagaflow";
  const only = params.get("state") || "waiting";
  const page = await api(`/v1/dead-letters?state=${encodeURIComponent(only)}&limit=100`);
  const settle = (action) => async () => {
    const ids = [...view.querySelectorAll("input[name=letter]:checked")].map((box) => Number(box.value));
    const reason = view.querySelector("#letter-reason").value.trim();
    if (!ids.length) return say("Select the dead letters first.");
    if (action === "discard" && !reason) return say("Say why they are discarded.");
    try {
      const done = await api(`/v1/dead-letters/${action}`, { method: "POST", body: { ids, reason: reason || undefined } });
      say(`${action}: ${done.done.length} done, ${done.skipped.length} skipped`);
    } catch (error) {
      say(error.message);
    }
    route();
  };
  show(
    h("h2", {}, "Dead letters"),
    h("p", {}, ["waiting", "replayed", "discarded"].map((s) =>
      h("a", { href: `#/dead-letters?state=${s}`, style: "margin-right:1rem", "aria-current": s === only ? "page" : null }, s))),
    h("table", { id: "dead-letters" },
      h("thead", {}, h("tr", {}, ["", "received", "origin", "error", "key", "payload", "settled"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, page.items.length ? page.items.map((letter) => h("tr", {},
        h("td", {}, only === "waiting" ? h("input", { type: "checkbox", name: "letter", value: letter.id, "aria-label": `select dead letter ${letter.id}` }) : ""),
        h("td", {}, when(letter.received_at)),
        h("td", {}, `${letter.origin_topic || "?"} ${letter.origin_partition ?? ""}/${letter.origin_offset ?? ""}`),
        h("td", {}, letter.error),
        h("td", {}, h("code", {}, letter.message_key || "")),
        // The whole payload: an operator replays only what they have read in full.
        h("td", {}, letter.payload.length > 120
          ? h("details", {}, h("summary", {}, h("code", {}, `${letter.payload.slice(0, 120)}…`)), h("pre", { class: "payload" }, letter.payload))
          : h("code", {}, letter.payload)),
        h("td", {}, letter.settled_by ? `${letter.state} by ${letter.settled_by}: ${letter.settled_reason || ""}` : ""))) : h("tr", {}, h("td", { colspan: 7 }, "None.")))),
    only === "waiting" ? h("div", { class: "actions" },
      h("label", { for: "letter-reason" }, "Reason "),
      h("input", { id: "letter-reason", maxlength: 500, size: 40 }),
      h("button", { id: "replay", onclick: settle("replay") }, "Replay onto origin"),
      h("button", { id: "discard", onclick: settle("discard") }, "Discard")) : null,
  );
  return null;
}

async function bulkJobs() {
  document.title = "Bulk actions · sagaflow";
  const jobs = await api("/v1/bulk-jobs");
  const defs = await sagaDefinitions();
  const form = h("form", { id: "bulk-form", class: "filters", onsubmit: async (event) => {
    event.preventDefault();
    const data = new FormData(event.target);
    const body = { action: data.get("action"), reason: data.get("reason") || undefined };
    if (data.get("definition")) body.definition = data.get("definition");
    if (data.get("updated_before")) body.updated_before = data.get("updated_before");
    if (!confirm(`${body.action} every ${body.action === "retry" ? "FAILED" : "RUNNING"} saga the filter names?`)) return;
    try {
      const job = await api("/v1/bulk-jobs", { method: "POST", body, headers: { "Idempotency-Key": crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}` } });
      say(`job ${job.id}: ${job.total} saga(s)`);
    } catch (error) {
      say(error.message);
    }
    route();
  } },
    h("label", {}, "action", h("select", { name: "action" }, h("option", { value: "cancel" }, "cancel RUNNING sagas"), h("option", { value: "retry" }, "retry FAILED sagas"))),
    h("label", {}, "definition", h("select", { name: "definition" }, h("option", { value: "" }, "any"), defs.map((d) => h("option", { value: d.name }, d.name)))),
    h("label", {}, "updated before", h("input", { name: "updated_before", placeholder: "2026-11-29T10:00:00Z", size: 20 })),
    h("label", {}, "reason", h("input", { name: "reason", maxlength: 500, size: 30, required: true })),
    h("button", { type: "submit" }, "Start job"));
  show(
    h("h2", {}, "Bulk actions"),
    form,
    h("table", { id: "bulk-jobs" },
      h("thead", {}, h("tr", {}, ["created", "action", "by", "reason", "total", "done", "skipped", "failed", "pending", "finished"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, jobs.length ? jobs.map((job) => h("tr", {},
        h("td", {}, when(job.created_at)), h("td", {}, job.action), h("td", {}, job.requested_by),
        h("td", {}, job.reason || ""), h("td", {}, job.total), h("td", {}, job.done), h("td", {}, job.skipped),
        h("td", {}, job.failed), h("td", {}, job.pending), h("td", {}, job.finished_at ? when(job.finished_at) : "running"))) : h("tr", {}, h("td", { colspan: 10 }, "No bulk jobs yet.")))),
  );
  return jobs.some((job) => !job.finished_at) ? 2000 : null;
}

async function definitionList() {
  document.title = "Definitions · sagaflow";
  definitions = null;
  const defs = await sagaDefinitions();
  const paths = await Promise.all(defs.map((d) =>
    api(`/v1/saga-definitions/${d.name}/versions/${d.version}/paths`).catch(() => [])));
  const millis = (ms) => (ms ? `${ms / 1000} s` : "–");
  show(h("h2", {}, "Saga definitions"), defs.map((d, i) => h("section", { "data-definition": d.name },
    h("h3", {}, `${d.name} v${d.version}`),
    d.description ? h("p", {}, d.description) : null,
    h("p", { class: "versions" }, "versions: ", d.versions.map((v) => h("span", {
      class: ["version", v.version === d.version ? "default" : "", v.retired ? "retired" : ""].join(" ").trim(),
      "data-version": v.version,
      title: v.retired ? `retired by ${v.retired.retired_by}: ${v.retired.reason}` : "",
    },
      `v${v.version}${v.version === d.version ? " (default)" : ""}${v.retired ? " (retired)" : ""} by ${v.created_by}`, " "))),
    diagram(d.steps.map((step) => ({ ...step, state: "pending", attempts: 0, compensation_state: "not_started", compensation_attempts: 0 }))),
    h("table", {}, h("thead", {}, h("tr", {}, ["step", "kind", "stage", "retries", "deadline", "attempt timeout", "undo retries"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, d.steps.map((s) => h("tr", {}, h("td", {}, s.name), h("td", {}, s.kind), h("td", {}, s.stage + 1),
        h("td", {}, s.retry ? (s.forward_only ? `${s.retry.max_attempts}, then parks` : s.retry.max_attempts) : "–"),
        h("td", {}, millis(s.deadline_ms || s.signal_timeout_ms)), h("td", {}, millis(s.attempt_timeout_ms)),
        h("td", {}, s.compensation ? s.compensation_retry.max_attempts : "–"))))),
    h("h4", {}, "Compensation paths"),
    h("table", { class: "paths", "data-paths": d.name }, h("thead", {}, h("tr", {}, ["when", "fails by", "the saga undoes", "and ends"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, paths[i].map((p) => h("tr", {}, h("td", {}, p.step), h("td", {}, p.failure),
        h("td", {}, p.undo.length ? p.undo.map((u) => `${u.step} (${u.command})`).join(" → ") : "nothing"),
        h("td", {}, badge(p.ends)))))))));
  return null;
}

// --- Routing -----------------------------------------------------------------------------

// Renders run one after another: a view still loading when the hash changes finishes
// first, and the view for the new hash is drawn after it, so a slow render never draws
// over a newer one.
let rendering = Promise.resolve();

function route() {
  const previous = rendering;
  rendering = previous.then(renderRoute, renderRoute);
  return rendering;
}

async function renderRoute() {
  clearTimeout(refresh);
  if (stream) stream.abort();
  stream = null;
  const [path, query] = location.hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  const parts = (path || "/").split("/").filter(Boolean);
  let render;
  if (parts.length === 0) render = () => overview();
  else if (parts[0] === "sagas" && parts[1]) render = () => sagaDetail(parts[1]);
  else if (parts[0] === "sagas") render = () => sagaList(params);
  else if (parts[0] === "definitions") render = () => definitionList();
  else if (parts[0] === "dead-letters") render = () => deadLetterList(params);
  else if (parts[0] === "bulk") render = () => bulkJobs();
  else render = async () => { show(h("p", {}, "No such page.")); return null; };
  const here = location.hash;
  try {
    const every = await render();
    if (every && location.hash === here) refresh = setTimeout(route, every);
  } catch (error) {
    say(error.message);
    if (!(error instanceof Refused) && location.hash === here) refresh = setTimeout(route, 5000);
  }
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("key");
  if (input.value.trim()) sessionStorage.setItem(KEY, input.value.trim());
  input.value = "";
  definitions = null;
  say("");
  route();
});
document.getElementById("forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  definitions = null;
  route();
});
document.getElementById("confirm-no").addEventListener("click", () =>
  document.getElementById("confirm").close("cancel"));
window.addEventListener("hashchange", () => { say(""); route(); view.focus(); });
route();
