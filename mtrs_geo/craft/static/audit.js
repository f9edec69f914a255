// CRAFT audit page: one triplet at a time, keyboard-driven; every decision is POSTed at once.
// The page's link carries the auditor's secret token (?token=...): every API call sends it in the
// X-Audit-Token header, images in their URL; the server knows the auditor from the token.
"use strict";

const token = new URLSearchParams(window.location.search).get("token") || "";
const state = { items: [], position: 0, auditor: "" };
const $ = (id) => document.getElementById(id);

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}), "X-Audit-Token": token };
  const response = await fetch(path, { ...options, headers });
  let data = {};
  try {
    data = await response.json();
  } catch (error) {
    data = {};
  }
  return { ok: response.ok, status: response.status, data };
}

function imageUrl(kind, id) {
  return `/image/${kind}?item=${encodeURIComponent(id)}&token=${encodeURIComponent(token)}`;
}

function showMessage(text) {
  $("message").textContent = text;
}

function showProgress(p) {
  $("progress-bar").value = p.total ? p.done / p.total : 0;
  $("progress-text").textContent =
    `done ${p.done} · left ${p.left} · accepted ${Math.round(100 * p.accepted_share)}%`;
}

function current() {
  return state.items[state.position];
}

function render() {
  const item = current();
  $("edit-form").hidden = true;
  $("reject-form").hidden = true;
  if (!item) {
    $("position").textContent = "no triplet matches the filters";
    $("expression").textContent = "";
    $("edited").textContent = "";
    $("kind").textContent = "";
    $("status").textContent = "";
    for (const id of ["img-before", "img-after", "img-overlay"]) $(id).removeAttribute("src");
    return;
  }
  $("img-before").src = imageUrl("before", item.id);
  $("img-after").src = imageUrl("after", item.id);
  $("img-overlay").src = imageUrl("overlay", item.id);
  $("position").textContent = `${state.position + 1} / ${state.items.length} · ${item.id}`;
  $("kind").textContent = item.kind || "?";
  $("status").textContent = item.status;
  $("status").className = `tag status-${item.status}`;
  $("expression").textContent = item.text;
  $("edited").textContent = item.edited_text ? `edited: ${item.edited_text}` : "";
  if (item.reason) $("edited").textContent = `rejected: ${item.reason}`;
}

async function load(keepId) {
  const params = { status: $("filter-status").value, kind: $("filter-kind").value };
  const { ok, status, data } = await api(`/api/items?${new URLSearchParams(params)}`);
  if (!ok) {
    showMessage(data.error || `error ${status}`);
    return;
  }
  state.items = data.items;
  const kinds = $("filter-kind");
  if (kinds.options.length === 1) {
    for (const kind of data.kinds) kinds.add(new Option(kind, kind));
  }
  const keep = keepId ? state.items.findIndex((i) => i.id === keepId) : -1;
  if (keep >= 0) {
    state.position = keep;
  } else {
    const pending = state.items.findIndex((i) => i.status === "pending");
    state.position = pending >= 0 ? pending : 0;
  }
  showProgress(data.progress);
  render();
}

async function decide(decision, extra) {
  const item = current();
  if (!item) return;
  const body = { item: item.id, decision, ...extra };
  const { ok, status, data } = await api("/api/decision", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!ok) {
    showMessage(data.error || `error ${status}`);
    return;
  }
  showMessage("");
  state.items[state.position] = data.item;
  showProgress(data.progress);
  move(1);
}

function move(step) {
  if (!state.items.length) return;
  state.position = Math.min(Math.max(state.position + step, 0), state.items.length - 1);
  render();
}

function openForm(formId, inputId, value) {
  $(formId).hidden = false;
  const input = $(inputId);
  input.value = value;
  input.focus();
  input.select();
}

function startEdit() {
  const item = current();
  if (item) openForm("edit-form", "edit-text", item.edited_text || item.text);
}

function startReject() {
  if (current()) openForm("reject-form", "reject-reason", "");
}

document.addEventListener("keydown", (event) => {
  const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
  if (event.key === "Escape") {
    render();
    document.activeElement.blur();
    return;
  }
  if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
  const actions = {
    a: () => decide("accept", {}),
    r: startReject,
    e: startEdit,
    s: () => decide("skip", {}),
    j: () => move(1),
    ArrowRight: () => move(1),
    k: () => move(-1),
    ArrowLeft: () => move(-1),
  };
  const action = actions[event.key];
  if (action) {
    event.preventDefault();
    action();
  }
});

$("edit-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("edit-text").value.trim();
  $("edit-text").blur();
  if (text) decide("edit", { text });
});

$("reject-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const reason = $("reject-reason").value.trim();
  if (!reason) {
    showMessage("a rejection needs a reason");
    return;
  }
  $("reject-reason").blur();
  decide("reject", { reason });
});

$("btn-accept").addEventListener("click", () => decide("accept", {}));
$("btn-reject").addEventListener("click", startReject);
$("btn-edit").addEventListener("click", startEdit);
$("btn-skip").addEventListener("click", () => decide("skip", {}));
$("btn-prev").addEventListener("click", () => move(-1));
$("btn-next").addEventListener("click", () => move(1));
$("filter-status").addEventListener("change", () => load(null));
$("filter-kind").addEventListener("change", () => load(null));
async function start() {
  const { ok, status, data } = await api("/api/whoami");
  if (!ok) {
    $("progress-text").textContent = "";
    showMessage(data.error || `error ${status}`);
    document.body.dataset.ready = "0";
    return;
  }
  state.auditor = data.auditor;
  $("auditor").textContent = state.auditor;
  await load(null);
  document.body.dataset.ready = "1";
}

start();
