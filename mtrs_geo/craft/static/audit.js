// CRAFT audit page: one triplet at a time, keyboard-driven; every decision is POSTed at once.
"use strict";

const state = { items: [], position: 0, auditor: "" };
const $ = (id) => document.getElementById(id);

function query(params) {
  const search = new URLSearchParams(params);
  search.set("auditor", state.auditor);
  return search.toString();
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
  const id = encodeURIComponent(item.id);
  $("img-before").src = `/image/before?item=${id}`;
  $("img-after").src = `/image/after?item=${id}`;
  $("img-overlay").src = `/image/overlay?item=${id}`;
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
  const response = await fetch(`/api/items?${query(params)}`);
  const data = await response.json();
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
  const body = { item: item.id, decision, auditor: state.auditor, ...extra };
  const response = await fetch("/api/decision", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) {
    showMessage(data.error || `error ${response.status}`);
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
$("auditor").addEventListener("change", () => {
  state.auditor = $("auditor").value.trim();
  localStorage.setItem("mtrs-auditor", state.auditor);
  load(null);
});

async function start() {
  const info = await (await fetch("/api/whoami")).json();
  state.auditor = localStorage.getItem("mtrs-auditor") || info.auditor;
  $("auditor").value = state.auditor;
  await load(null);
  document.body.dataset.ready = "1";
}

start();
