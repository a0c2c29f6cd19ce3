// exdaas admin page: plain JavaScript, no framework, nothing fetched from
// elsewhere. It speaks the v1 API with the key the user signs in with,
// kept in sessionStorage (this tab only). Every text from the server is put
// in the page as text (textContent), never as HTML.
"use strict";

const KEY_ITEM = "exdaas.admin.key";
const PAGE_SIZE = 50;
const CHANGES_KEPT = 200;

const state = {
  key: sessionStorage.getItem(KEY_ITEM) || "",
  grant: null,
  watch: null, // {abort: AbortController, collection}
};

// --- helpers ---------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const enc = encodeURIComponent;
const view = () => document.getElementById("view");

function show(...nodes) {
  const target = view();
  target.replaceChildren(...nodes);
  const heading = target.querySelector("h2");
  if (heading) {
    heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: true });
  }
}

function toast(message) {
  const node = document.getElementById("toast");
  node.textContent = message;
  node.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => node.classList.remove("show"), 3000);
}

async function api(method, path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.key) headers["Authorization"] = "Bearer " + state.key;
  let body;
  if (options.body !== undefined) {
    headers["Content-Type"] = headers["Content-Type"] || "application/json";
    body = typeof options.body === "string" ? options.body : JSON.stringify(options.body);
  }
  const response = await fetch(path, { method, headers, body, signal: options.signal, cache: "no-store" });
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (response.status === 401 && !options.allow401) {
    signOut("The server no longer accepts this key: sign in again.");
    throw new Error("not signed in");
  }
  return { status: response.status, ok: response.ok, json, text, headers: response.headers };
}

function problem(answer) {
  const said = answer.json && (answer.json.detail || answer.json.message);
  return `${answer.status}: ${said || answer.text || "no details"}`;
}

function canWrite(collection) {
  const g = state.grant;
  if (!g || g.scope === "read") return false;
  return !g.collections || g.collections.includes(collection);
}

function canBackup() {
  const g = state.grant;
  return !!g && g.scope === "admin" && !g.collections;
}

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

// --- signing in ---------------------------------------------------------------

async function signIn(key) {
  state.key = key;
  const answer = await api("GET", "/v1/access", { allow401: true });
  if (answer.status === 401) {
    state.key = "";
    return false;
  }
  if (!answer.ok) throw new Error(problem(answer));
  state.grant = answer.json;
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  const who = document.getElementById("who");
  const limited = state.grant.collections ? ` on ${state.grant.collections.join(", ")}` : "";
  who.textContent = state.grant.keys_required ? `${state.grant.scope} key${limited}` : "open server: no key needed";
  document.getElementById("signout").hidden = !state.grant.keys_required;
  document.getElementById("tabs").hidden = false;
  document.getElementById("signin").hidden = true;
  return true;
}

function signOut(message) {
  stopWatching();
  sessionStorage.removeItem(KEY_ITEM);
  state.key = "";
  state.grant = null;
  document.getElementById("who").textContent = "";
  document.getElementById("signout").hidden = true;
  document.getElementById("tabs").hidden = true;
  view().replaceChildren();
  const section = document.getElementById("signin");
  section.hidden = false;
  document.getElementById("signin-error").textContent = message || "";
  document.getElementById("key").value = "";
  document.getElementById("key").focus();
}

// --- routing ------------------------------------------------------------------

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

async function route() {
  if (!state.grant) return;
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const tab = parts[0] === "changes" || parts[0] === "health" ? parts[0] : "collections";
  for (const link of document.querySelectorAll("#tabs a")) {
    if (link.dataset.tab === tab) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (tab !== "changes") stopWatching();
  try {
    if (parts[0] === "c" && parts[1] && parts[2] === "doc" && parts[3] !== undefined) await documentView(parts[1], parts[3]);
    else if (parts[0] === "c" && parts[1] && parts[2] === "new") newDocumentView(parts[1]);
    else if (parts[0] === "c" && parts[1]) await collectionView(parts[1], "");
    else if (tab === "changes") await changesView();
    else if (tab === "health") await healthView();
    else await collectionsView();
  } catch (err) {
    if (err.message !== "not signed in") show(el("h2", { text: "Something went wrong" }), el("p", { class: "error", text: String(err.message || err) }));
  }
}

// --- collections ----------------------------------------------------------------

async function collectionsView() {
  const answer = await api("GET", "/v1/collections");
  if (!answer.ok) throw new Error(problem(answer));
  const list = el("ul", { class: "plain collections" });
  for (const c of answer.json.collections) {
    list.append(el("li", {},
      el("button", { class: "link", type: "button", onclick: () => go(`#/c/${enc(c.name)}`) }, c.name),
      el("span", { class: "pill", text: `${c.documents} document${c.documents === 1 ? "" : "s"}` })));
  }
  if (!answer.json.collections.length) list.append(el("li", { class: "hint", text: "No collections yet." }));
  const name = el("input", { id: "open-name", placeholder: "users", "aria-label": "Collection name", pattern: "[A-Za-z0-9_-]{1,64}", required: true });
  const open = el("form", { class: "inline", onsubmit: (e) => { e.preventDefault(); go(`#/c/${enc(name.value)}`); } },
    el("label", { for: "open-name", text: "Open a collection" }), name, el("button", { type: "submit", text: "Open" }));
  show(el("h2", { text: "Collections" }), el("div", { class: "card" }, list), el("div", { class: "card" }, open,
    el("p", { class: "hint", text: "A collection exists once it holds a document: open a new name to create its first one." })));
}

async function collectionView(collection, prefix, cursor) {
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (prefix) query.set("prefix", prefix);
  if (cursor) query.set("cursor", cursor);
  const answer = await api("GET", `/v1/collections/${enc(collection)}/docs?${query}`);
  if (!answer.ok) throw new Error(problem(answer));
  const filter = el("input", { id: "prefix", value: prefix, placeholder: "id prefix", "aria-label": "Id prefix" });
  const form = el("form", { class: "inline", onsubmit: (e) => { e.preventDefault(); collectionView(collection, filter.value).catch(report); } },
    filter, el("button", { type: "submit", text: "Filter" }),
    canWrite(collection) && el("button", { type: "button", class: "primary", onclick: () => go(`#/c/${enc(collection)}/new`) }, "New document"));
  const rows = answer.json.items.map((doc) => el("tr", {},
    el("td", {}, el("button", { class: "link", type: "button", onclick: () => go(`#/c/${enc(collection)}/doc/${enc(doc.id)}`) }, doc.id)),
    el("td", { text: String(doc.version) }),
    el("td", { class: "updated", text: when(doc.updated_at) }),
    el("td", { class: "preview", text: JSON.stringify(doc.data).slice(0, 120) })));
  const table = el("div", { class: "scroll" }, el("table", {},
    el("thead", {}, el("tr", {}, el("th", { text: "id" }), el("th", { text: "version" }), el("th", { class: "updated", text: "updated" }), el("th", { text: "data" }))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: "4", class: "hint", text: prefix ? "No document with this prefix." : "No documents." })))));
  const next = answer.json.next_cursor;
  show(
    el("p", {}, el("a", { href: "#/collections", text: "← Collections" })),
    el("h2", { text: collection }),
    form,
    el("div", { class: "card" }, table,
      el("div", { class: "row" },
        cursor && el("button", { type: "button", onclick: () => collectionView(collection, prefix).catch(report) }, "First page"),
        next && el("button", { type: "button", id: "next-page", onclick: () => collectionView(collection, prefix, next).catch(report) }, "Next page"))));
}

// --- one document -------------------------------------------------------------------

async function documentView(collection, id) {
  const path = `/v1/collections/${enc(collection)}/docs/${enc(id)}`;
  const answer = await api("GET", path);
  if (answer.status === 404) {
    show(el("p", {}, el("a", { href: `#/c/${enc(collection)}`, text: `← ${collection}` })),
      el("h2", { text: `${collection}/${id}` }), el("p", { class: "error", text: "This document does not exist (any more)." }));
    return;
  }
  if (!answer.ok) throw new Error(problem(answer));
  let doc = answer.json;
  const writable = canWrite(collection);
  const meta = el("p", { class: "meta", id: "doc-meta" });
  const editor = el("textarea", { id: "doc-json", spellcheck: "false", "aria-label": "Document JSON", readonly: !writable });
  const message = el("p", { id: "doc-message", role: "alert" });
  const conflict = el("div", { class: "conflict", id: "conflict", hidden: true });
  const render = (current, keepText) => {
    doc = current;
    meta.textContent = `version ${doc.version} · updated ${when(doc.updated_at)}` + (doc.expires_at ? ` · expires ${when(doc.expires_at)}` : "");
    if (!keepText) editor.value = JSON.stringify(doc.data, null, 2);
  };
  render(doc);

  const parsed = () => {
    try { return { ok: true, value: JSON.parse(editor.value) }; } catch (err) {
      message.className = "error";
      message.textContent = `Not valid JSON: ${err.message}`;
      return { ok: false };
    }
  };

  const save = async (headers) => {
    const data = parsed();
    if (!data.ok) return;
    const result = await api("PUT", path, { body: data.value, headers });
    if (result.ok) {
      conflict.hidden = true;
      render(result.json);
      message.className = "ok";
      message.textContent = `Saved: version ${result.json.version}.`;
    } else if (result.status === 412) {
      await explainConflict("save");
    } else {
      message.className = "error";
      message.textContent = `Not saved: ${problem(result)}`;
    }
  };

  // Another writer got there first: say what happened, keep the user's
  // text, and let them choose.
  const explainConflict = async (action) => {
    const current = await api("GET", path);
    const mine = editor.value;
    conflict.replaceChildren();
    message.textContent = "";
    if (current.status === 404) {
      conflict.append(el("p", {}, el("strong", { text: "Conflict: " }),
        `this document was deleted since you opened version ${doc.version}. Your text is still in the editor.`));
      if (action === "save") {
        conflict.append(el("div", { class: "row" },
          el("button", { type: "button", class: "primary", onclick: () => save({ "If-None-Match": "*" }) }, "Create it again with my text")));
      }
    } else if (current.ok) {
      const theirs = current.json;
      conflict.append(el("p", {}, el("strong", { text: "Conflict: " }),
        `someone changed this document since you opened version ${doc.version}: it is now version ${theirs.version} (updated ${when(theirs.updated_at)}). ` +
        (action === "save" ? "Your edit was not saved and is still in the editor." : "It was not deleted.")));
      conflict.append(el("div", { class: "row" },
        el("button", { type: "button", onclick: () => { render(theirs); editor.value = JSON.stringify(theirs.data, null, 2); conflict.hidden = true; } }, "Load their version"),
        action === "save"
          ? el("button", { type: "button", class: "primary", onclick: () => { render(theirs, true); editor.value = mine; save({ "If-Match": `"${theirs.version}"` }); } }, "Overwrite with mine")
          : el("button", { type: "button", class: "danger", onclick: () => { render(theirs, true); remove(); } }, "Delete it anyway")));
    } else {
      conflict.append(el("p", { class: "error", text: `Conflict, and the current version could not be read: ${problem(current)}` }));
    }
    conflict.hidden = false;
    conflict.querySelector("button")?.focus();
  };

  const remove = async () => {
    if (!confirm(`Delete ${collection}/${id} (version ${doc.version})?`)) return;
    const result = await api("DELETE", path, { headers: { "If-Match": `"${doc.version}"` } });
    if (result.status === 204) {
      toast(`Deleted ${collection}/${id}`);
      go(`#/c/${enc(collection)}`);
    } else if (result.status === 412) {
      await explainConflict("delete");
    } else {
      message.className = "error";
      message.textContent = `Not deleted: ${problem(result)}`;
    }
  };

  editor.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "s" && writable) { e.preventDefault(); save({ "If-Match": `"${doc.version}"` }); }
  });
  show(
    el("p", {}, el("a", { href: `#/c/${enc(collection)}`, text: `← ${collection}` })),
    el("h2", { text: `${collection}/${id}` }),
    meta,
    el("div", { class: "card" },
      editor,
      conflict,
      message,
      el("div", { class: "row" },
        writable && el("button", { type: "button", class: "primary", id: "save", onclick: () => save({ "If-Match": `"${doc.version}"` }) }, "Save"),
        el("button", { type: "button", id: "reload", onclick: () => documentView(collection, id).catch(report) }, "Reload"),
        writable && el("button", { type: "button", class: "danger", id: "delete", onclick: remove }, "Delete")),
      writable ? el("p", { class: "hint", text: "Saving replaces the whole document, and only if it is still at the version shown (Ctrl+S saves)." })
        : el("p", { class: "hint", text: "Your key may read this collection, not change it." })));
}

function newDocumentView(collection) {
  if (!canWrite(collection)) {
    show(el("h2", { text: "Not allowed" }), el("p", { class: "error", text: `Your key may not write to ${collection}.` }));
    return;
  }
  const id = el("input", { id: "new-id", placeholder: "leave empty for a fresh id", "aria-label": "Id" });
  const editor = el("textarea", { id: "new-json", spellcheck: "false", "aria-label": "Document JSON" });
  editor.value = "{\n  \n}";
  const message = el("p", { id: "new-message", role: "alert", class: "error" });
  const create = async (e) => {
    e.preventDefault();
    let data;
    try { data = JSON.parse(editor.value); } catch (err) { message.textContent = `Not valid JSON: ${err.message}`; return; }
    const chosen = id.value.trim();
    const result = chosen
      ? await api("PUT", `/v1/collections/${enc(collection)}/docs/${enc(chosen)}`, { body: data, headers: { "If-None-Match": "*" } })
      : await api("POST", `/v1/collections/${enc(collection)}/docs`, { body: data });
    if (result.ok) {
      toast(`Created ${collection}/${result.json.id}`);
      go(`#/c/${enc(collection)}/doc/${enc(result.json.id)}`);
    } else if (result.status === 412) {
      message.textContent = `A document ${chosen} already exists in ${collection}: open it to change it, or choose another id.`;
    } else {
      message.textContent = `Not created: ${problem(result)}`;
    }
  };
  show(
    el("p", {}, el("a", { href: `#/c/${enc(collection)}`, text: `← ${collection}` })),
    el("h2", { text: `New document in ${collection}` }),
    el("form", { class: "card", onsubmit: create },
      el("label", { for: "new-id", text: "Id" }), id,
      el("label", { for: "new-json", text: "JSON" }), editor,
      message,
      el("div", { class: "row" }, el("button", { type: "submit", class: "primary", id: "create" }, "Create"))));
}

// --- changes ----------------------------------------------------------------------------

function stopWatching() {
  if (state.watch) {
    state.watch.abort.abort();
    state.watch = null;
  }
}

async function changesView() {
  const answer = await api("GET", "/v1/collections");
  if (!answer.ok) throw new Error(problem(answer));
  const select = el("select", { id: "watch-collection", "aria-label": "Collection to watch" },
    el("option", { value: "", text: "every collection" }),
    answer.json.collections.map((c) => el("option", { value: c.name, text: c.name })));
  const list = el("ul", { class: "plain changes", id: "changes" });
  const status = el("span", { class: "hint", id: "watch-status" });
  const toggle = el("button", { type: "button", class: "primary", id: "watch-toggle" }, "Watch");
  const update = () => {
    toggle.textContent = state.watch ? "Stop" : "Watch";
    status.textContent = state.watch ? `watching ${state.watch.collection || "every collection"}…` : "";
  };
  toggle.addEventListener("click", () => {
    if (state.watch) stopWatching();
    else watch(select.value, list, update);
    update();
  });
  select.addEventListener("change", () => { if (state.watch) { stopWatching(); watch(select.value, list, update); } update(); });
  show(el("h2", { text: "Changes" }),
    el("div", { class: "row" }, select, toggle, status),
    el("div", { class: "card" }, list,
      el("p", { class: "hint", text: "Each change appears as it commits: creates, replacements, patches, deletes, expiry." })));
}

async function watch(collection, list, update) {
  const abort = new AbortController();
  state.watch = { abort, collection };
  const base = collection ? `/v1/collections/${enc(collection)}/changes` : "/v1/changes";
  let since = "now";
  while (state.watch && state.watch.abort === abort) {
    try {
      const answer = await api("GET", `${base}?since=${enc(since)}&wait=25`, { signal: abort.signal });
      if (answer.status === 410) { since = "now"; continue; }
      if (!answer.ok) throw new Error(problem(answer));
      for (const change of answer.json.changes) {
        const line = el("li", { class: `kind-${change.kind}` },
          `${when(change.updated_at)}  ${change.kind}  `,
          el("a", { href: `#/c/${enc(change.collection)}/doc/${enc(change.id)}`, text: `${change.collection}/${change.id}` }),
          `  v${change.version}`);
        list.prepend(line);
        while (list.children.length > CHANGES_KEPT) list.lastChild.remove();
      }
      since = answer.json.cursor;
    } catch (err) {
      if (abort.signal.aborted) return;
      const status = document.getElementById("watch-status");
      if (status) status.textContent = `connection lost (${err.message}); retrying…`;
      await new Promise((resolve) => setTimeout(resolve, 2000));
      if (update) update();
    }
  }
}

// --- health -------------------------------------------------------------------------------

function parseMetrics(text) {
  const values = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/);
    if (!match) continue;
    (values[match[1]] = values[match[1]] || []).push({ labels: match[2] || "", value: Number(match[3]) });
  }
  return values;
}

function sum(metrics, name) {
  return (metrics[name] || []).reduce((total, m) => total + (isFinite(m.value) ? m.value : 0), 0);
}

async function healthView() {
  const [ready, metricsAnswer] = await Promise.all([api("GET", "/readyz"), api("GET", "/metrics")]);
  const metrics = parseMetrics(metricsAnswer.text || "");
  const hits = sum(metrics, "exdaas_cache_hits_total");
  const misses = sum(metrics, "exdaas_cache_misses_total");
  const stat = (label, value) => el("div", { class: "stat" }, el("b", { text: value }), label);
  const mib = (bytes) => `${(bytes / 1048576).toFixed(1)} MiB`;
  const shards = (ready.json && ready.json.shards) || [];
  const documents = {};
  for (const m of metrics.exdaas_shard_documents || []) {
    const shard = (m.labels.match(/shard="(\d+)"/) || [])[1];
    if (shard !== undefined) documents[shard] = m.value;
  }
  const rows = shards.map((s) => el("tr", {},
    el("td", { text: String(s.shard) }),
    el("td", {}, el("span", { class: s.ready ? "pill good" : "pill bad", text: s.ready ? "ready" : "not ready" })),
    el("td", { text: documents[s.shard] !== undefined ? String(documents[s.shard]) : "" }),
    el("td", { class: "error", text: s.problem || "" })));
  const backup = el("div", { class: "card", id: "backup-card" });
  if (canBackup()) {
    const result = el("p", { id: "backup-result", role: "status" });
    const button = el("button", { type: "button", class: "primary", id: "backup" }, "Take a backup");
    button.addEventListener("click", async () => {
      button.disabled = true;
      result.className = "hint";
      result.textContent = "Taking a backup…";
      const answer = await api("POST", "/v1/admin/backup");
      button.disabled = false;
      if (answer.ok) {
        result.className = "ok";
        result.textContent = `Backup complete: ${answer.json.documents} documents in ${answer.json.shards} shards, in ${answer.json.name} in the server's backup folder.`;
      } else {
        result.className = "error";
        result.textContent = `No backup: ${problem(answer)}`;
      }
    });
    backup.append(el("h3", { text: "Backup" }), el("p", { class: "hint", text: "A consistent snapshot of every shard, taken while the server runs." }), button, result);
  }
  show(
    el("h2", { text: "Health" }),
    el("p", {}, el("span", { class: ready.ok ? "pill good" : "pill bad", id: "ready-status", text: ready.ok ? "ready" : "NOT ready" })),
    el("div", { class: "stats" },
      stat("documents", String(sum(metrics, "exdaas_shard_documents"))),
      stat("cache hit ratio", hits + misses ? `${((100 * hits) / (hits + misses)).toFixed(1)} %` : "–"),
      stat("cached documents", String(sum(metrics, "exdaas_cache_entries"))),
      stat("cache memory", mib(sum(metrics, "exdaas_cache_bytes"))),
      stat("requests served", String(sum(metrics, "exdaas_http_requests_total"))),
      stat("feed followers", String(sum(metrics, "exdaas_feed_followers")))),
    el("div", { class: "card scroll" }, el("h3", { text: "Shards" }), el("table", {},
      el("thead", {}, el("tr", {}, el("th", { text: "shard" }), el("th", { text: "state" }), el("th", { text: "documents" }), el("th", { text: "problem" }))),
      el("tbody", {}, rows))),
    canBackup() ? backup : null,
    el("div", { class: "row" }, el("button", { type: "button", id: "refresh", onclick: () => healthView().catch(report) }, "Refresh")));
}

function report(err) {
  if (err && err.message !== "not signed in") toast(String(err.message || err));
}

// --- start ----------------------------------------------------------------------------------

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("signout").addEventListener("click", () => signOut("Signed out."));
  document.getElementById("signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = document.getElementById("key").value.trim();
    try {
      if (await signIn(key)) route();
      else document.getElementById("signin-error").textContent = "This key is not accepted by the server.";
    } catch (err) {
      document.getElementById("signin-error").textContent = `Cannot reach the server: ${err.message}`;
    }
  });
  try {
    // A kept key (or an open server, which needs none) signs in at once.
    if (await signIn(state.key)) route();
    else signOut(state.key ? "The kept key is no longer accepted." : "");
  } catch (err) {
    signOut(`Cannot reach the server: ${err.message}`);
  }
});
