// bgtasks dashboard. Task data only ever reaches the page through textContent
// and attributes set from code: nothing a task says is parsed as HTML.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const url = (path) => new URL(path, document.baseURI);
  const POLL_MS = 3000;
  const LABELS = {
    id: "Id", name: "Name", state: "State", created_at: "Created",
    started_at: "Started", finished_at: "Finished", progress: "Progress",
    message: "Message", attempt: "Attempt", cancel_requested: "Cancel requested",
    error: "Error", result: "Result", worker: "Worker", next_attempt_at: "Next attempt",
  };
  const view = {
    filters: { state: "", name: "", id: "", limit: 50 },
    cursors: [null], // the cursor of each page visited; the last is shown
    next: null, nextStale: false,
    rows: new Map(), // task id -> { tr, cells, task }
    states: [], finished: new Set(),
    paused: false, source: null, poll: 0, quiet: 0, detailId: null,
    inflight: new Set(), // changes that arrive while a page is being fetched
  };

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function setStatus(text, kind) {
    const status = $("status");
    status.textContent = text;
    status.className = "status" + (kind ? " " + kind : "");
  }

  function when(iso) {
    return iso ? new Date(iso) : null;
  }

  function shortTime(iso) {
    const date = when(iso);
    return date ? date.toLocaleTimeString() : "–";
  }

  function longTime(iso) {
    const date = when(iso);
    return date ? date.toLocaleString() + " (" + iso + ")" : "–";
  }

  function seconds(value) {
    if (value === null || value === undefined) return "–";
    if (value < 1) return Math.round(value * 1000) + " ms";
    if (value < 60) return value.toFixed(value < 10 ? 2 : 1) + " s";
    const minutes = Math.floor(value / 60);
    if (minutes < 60) return minutes + " min " + Math.round(value % 60) + " s";
    return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }

  function duration(task) {
    const start = when(task.started_at);
    if (!start) return null;
    const end = when(task.finished_at) || new Date();
    return Math.max(0, (end - start) / 1000);
  }

  function isFinished(task) {
    return view.finished.has(task.state) || Boolean(task.finished_at);
  }

  function stateClass(value) {
    return "state state-" + String(value).replace(/[^a-z0-9_-]/gi, "");
  }

  async function getJSON(path) {
    const response = await fetch(url(path), {
      headers: { Accept: "application/json" }, cache: "no-store", credentials: "same-origin",
    });
    if (!response.ok) throw new Error("HTTP " + response.status);
    return response.json();
  }

  // -- statistics -------------------------------------------------------

  function renderStats(stats) {
    const known = stats.states.map((s) => s.value);
    view.finished = new Set(stats.states.filter((s) => s.finished).map((s) => s.value));
    const values = known.concat(Object.keys(stats.counts).filter((v) => !known.includes(v)));
    if (values.join() !== view.states.join()) {
      view.states = values;
      const select = $("f-state");
      const chosen = select.value;
      while (select.options.length > 1) select.remove(1);
      for (const value of values) select.add(new Option(value, value));
      select.value = chosen;
      const list = $("counts");
      list.replaceChildren();
      for (const value of values) {
        const button = el("button", "count");
        button.type = "button";
        button.dataset.state = value;
        button.append(el("span", "n", "0"), el("span", stateClass(value), value));
        button.addEventListener("click", () => {
          const next = view.filters.state === value ? "" : value;
          $("f-state").value = next;
          applyFilters();
        });
        const item = el("li");
        item.append(button);
        list.append(item);
      }
    }
    for (const button of $("counts").querySelectorAll("button")) {
      const value = button.dataset.state;
      const n = stats.counts[value] || 0;
      button.querySelector(".n").textContent = String(n);
      button.setAttribute("aria-label", n + " " + value + (view.filters.state === value ? ", filtered" : ""));
      button.setAttribute("aria-pressed", String(view.filters.state === value));
    }
    $("success-rate").textContent =
      stats.success_rate === null ? "–" : (stats.success_rate * 100).toFixed(1) + " %";
    $("p50").textContent = seconds(stats.duration_p50);
    $("p95").textContent = seconds(stats.duration_p95);
    $("total").textContent = String(stats.total);
    // Whose tasks: every worker's (shared backend) or this worker's alone.
    const scope = $("scope");
    scope.textContent = stats.scope === "all" ? "all workers" : "this process";
    scope.title = stats.degraded
      ? "The shared task state backend is unreachable: these counts are this worker's own."
      : "";
    scope.classList.toggle("degraded", Boolean(stats.degraded));
  }

  // -- the table ----------------------------------------------------------

  function makeRow(task) {
    const tr = el("tr");
    tr.dataset.id = task.id;
    const cells = {};
    for (const key of ["task", "state", "progress", "attempt", "created", "started", "finished", "duration", "worker", "actions"]) {
      cells[key] = el("td", key === "progress" ? "progress" : key === "worker" ? "worker" : "");
      tr.append(cells[key]);
    }
    const name = el("button", "name");
    name.type = "button";
    name.addEventListener("click", () => openDetail(tr.dataset.id));
    cells.task.append(name, el("span", "id"));
    cells.state.append(el("span", "state"), el("span", "flag"));
    const bar = el("progress");
    bar.max = 1;
    cells.progress.append(bar, el("span", "pct"), el("span", "msg"));
    const cancel = el("button", "", "Cancel…");
    cancel.type = "button";
    cancel.addEventListener("click", () => confirmCancel(view.rows.get(tr.dataset.id)?.task || task));
    cells.actions.append(cancel);
    return { tr, cells, task };
  }

  function updateRow(row, task) {
    // A finished task never goes back. A reply taken before it ended (the
    // cancel request's snapshot, a page fetched meanwhile) can arrive after
    // the event that ended it, and must not bring back "running" and the
    // Cancel button. A new task under a reused id is newer: it is shown.
    if (isFinished(row.task) && !isFinished(task) && task.created_at === row.task.created_at) return;
    row.task = task;
    const c = row.cells;
    const name = c.task.firstChild;
    name.textContent = task.name;
    name.title = task.name;
    name.setAttribute("aria-label", "Details of " + task.name + " " + task.id);
    c.task.lastChild.textContent = task.id;
    const badge = c.state.firstChild;
    badge.textContent = task.state;
    badge.className = stateClass(task.state);
    const flags = [];
    if (task.cancel_requested && !isFinished(task)) flags.push("cancel requested");
    if (task.error) flags.push(task.error.type);
    c.state.lastChild.textContent = flags.join(" · ");
    const [bar, pct, msg] = c.progress.children;
    bar.hidden = pct.hidden = task.progress === null;
    if (task.progress !== null) {
      bar.value = task.progress;
      pct.textContent = Math.round(task.progress * 100) + " %";
      bar.setAttribute("aria-label", "Progress of " + task.name);
    }
    msg.textContent = task.message || "";
    c.attempt.textContent = String(task.attempt);
    for (const [key, field] of [["created", "created_at"], ["started", "started_at"], ["finished", "finished_at"]]) {
      c[key].textContent = shortTime(task[field]);
      c[key].title = task[field] || "";
    }
    c.duration.textContent = seconds(duration(task));
    const worker = task.worker;
    c.worker.textContent = worker === undefined || worker === null ? "–" : String(worker);
    if (worker !== undefined && worker !== null) showWorkers();
    c.worker.hidden = !document.querySelector("th.worker:not([hidden])");
    const cancel = c.actions.firstChild;
    cancel.hidden = isFinished(task);
    cancel.setAttribute("aria-label", "Cancel " + task.name + " " + task.id);
  }

  function showWorkers() {
    for (const node of document.querySelectorAll(".worker")) node.hidden = false;
  }

  function renderTable(tasks) {
    const body = $("rows");
    const keep = new Map();
    tasks.forEach((task, index) => {
      const row = view.rows.get(task.id) || makeRow(task);
      updateRow(row, task);
      keep.set(task.id, row);
      // Move only what is out of place, so a focused button keeps its focus.
      if (body.children[index] !== row.tr) body.insertBefore(row.tr, body.children[index] || null);
    });
    for (const [id, row] of view.rows) if (!keep.has(id)) row.tr.remove();
    view.rows = keep;
    $("empty").hidden = tasks.length > 0;
    updatePager();
  }

  function matches(task) {
    const f = view.filters;
    return (!f.state || task.state === f.state) &&
      (!f.name || task.name.toLowerCase().includes(f.name.toLowerCase())) &&
      (!f.id || task.id.startsWith(f.id));
  }

  function applyChanges(tasks) {
    for (const missed of view.inflight) missed.push(...tasks);
    const fresh = [];
    const newest = $("rows").firstChild;
    const top = newest ? view.rows.get(newest.dataset.id).task.created_at : "";
    for (const task of tasks) {
      const row = view.rows.get(task.id);
      if (row && matches(task)) updateRow(row, task);
      else if (row) {
        // It left the filter (a "running" task that finished, say).
        row.tr.remove();
        view.rows.delete(task.id);
        $("empty").hidden = view.rows.size > 0;
      } else if (view.cursors.length === 1 && matches(task) && (!top || when(task.created_at) > when(top))) fresh.push(task);
    }
    if (detailChanged(tasks)) openDetail(view.detailId, true);
    if (!fresh.length) return;
    fresh.sort((a, b) => when(b.created_at) - when(a.created_at));
    const list = fresh.concat(Array.from(view.rows.values(), (r) => r.task));
    if (list.length > view.filters.limit) view.nextStale = true;
    renderTable(list.slice(0, view.filters.limit));
  }

  function detailChanged(tasks) {
    return view.detailId !== null && $("detail").open && tasks.some((t) => t.id === view.detailId);
  }

  function updatePager() {
    $("newest").disabled = $("newer").disabled = view.cursors.length === 1;
    $("older").disabled = !view.next && !view.nextStale;
    $("page-info").textContent = "Page " + view.cursors.length;
  }

  function query(cursor) {
    const q = new URLSearchParams();
    const f = view.filters;
    if (f.state) q.set("state", f.state);
    if (f.name) q.set("name", f.name);
    if (f.id) q.set("id", f.id);
    q.set("limit", String(f.limit));
    if (cursor) q.set("cursor", cursor);
    return "api/tasks?" + q.toString();
  }

  async function loadPage() {
    // The answer may predate changes the stream already brought: replay them.
    const missed = [];
    view.inflight.add(missed);
    try {
      const data = await getJSON(query(view.cursors[view.cursors.length - 1]));
      view.inflight.delete(missed);
      view.next = data.next_cursor;
      view.nextStale = false;
      renderTable(data.tasks);
      if (missed.length) applyChanges(missed);
    } finally {
      view.inflight.delete(missed);
    }
  }

  async function refresh() {
    try {
      const [stats] = await Promise.all([getJSON("api/stats"), loadPage()]);
      renderStats(stats);
    } catch (error) {
      setStatus("Cannot reach the server (" + error.message + ")", "warn");
    }
  }

  function applyFilters() {
    const limit = Number($("f-limit").value) || 50;
    view.filters = {
      state: $("f-state").value, name: $("f-name").value.trim(), id: $("f-id").value.trim(), limit,
    };
    view.cursors = [null];
    refresh();
  }

  // -- details and cancel ------------------------------------------------

  function value(key, data) {
    const v = data[key];
    if (v === null || v === undefined) return el("span", "", "–");
    if (key.endsWith("_at")) return el("span", "", longTime(v));
    if (key === "state") return el("span", stateClass(v), v);
    if (key === "progress") return el("span", "", Math.round(v * 100) + " %");
    if (key === "error") {
      const box = el("span", "", v.type);
      if (v.message !== null && v.message !== undefined) box.append(el("pre", "", v.message));
      else box.append(el("span", "flag", "message hidden (expose_error_messages=False)"));
      return box;
    }
    if (typeof v === "object" || key === "result") return el("pre", "", JSON.stringify(v, null, 2));
    return el("span", "", String(v));
  }

  async function openDetail(id, quiet) {
    let data;
    try {
      data = await getJSON("api/tasks/" + encodeURIComponent(id));
    } catch (error) {
      if (!quiet) setStatus("Task " + id + " is gone (" + error.message + ")", "warn");
      return;
    }
    view.detailId = id;
    const fields = $("detail-fields");
    fields.replaceChildren();
    const keys = Object.keys(LABELS).filter((k) => k in data).concat(Object.keys(data).filter((k) => !(k in LABELS)));
    if (!("result" in data) && data.state === "succeeded") keys.push("result");
    for (const key of keys) {
      fields.append(el("dt", "", LABELS[key] || key.replace(/_/g, " ")));
      const dd = el("dd");
      dd.append(key in data ? value(key, data) : el("span", "flag", "not JSON, not shown"));
      fields.append(dd);
    }
    $("detail-title").textContent = data.name;
    const cancel = $("detail-cancel");
    cancel.hidden = isFinished(data);
    cancel.onclick = () => confirmCancel(data);
    const dialog = $("detail");
    if (!dialog.open) dialog.showModal();
  }

  function confirmCancel(task) {
    $("confirm-text").textContent =
      "“" + task.name + "” (" + task.id + ") will be asked to stop. Async tasks stop at once; sync tasks at their next checkpoint().";
    const dialog = $("confirm");
    $("confirm-yes").onclick = async () => {
      dialog.close();
      await cancelTask(task.id);
    };
    dialog.showModal();
    $("confirm-no").focus();
  }

  async function cancelTask(id) {
    const response = await fetch(url("api/tasks/" + encodeURIComponent(id) + "/cancel"), {
      method: "POST", headers: { "X-Bgtasks-Action": "cancel", Accept: "application/json" },
      cache: "no-store", credentials: "same-origin",
    });
    const data = await response.json().catch(() => ({}));
    if (response.status === 202) {
      setStatus("Cancel requested for " + id, "ok");
      applyChanges([data]);
    } else {
      setStatus("Not cancelled: " + (data.detail || "HTTP " + response.status), "warn");
    }
    if (view.detailId === id && $("detail").open) openDetail(id, true);
  }

  // -- live updates ---------------------------------------------------

  function stopPolling() {
    clearInterval(view.poll);
    view.poll = 0;
  }

  function startPolling() {
    if (view.poll || view.paused) return;
    setStatus("Polling every " + POLL_MS / 1000 + " s", "warn");
    view.poll = setInterval(refresh, POLL_MS);
  }

  function connect() {
    if (view.paused) return;
    if (!window.EventSource) {
      startPolling();
      return;
    }
    const source = new EventSource(url("api/events"));
    view.source = source;
    source.addEventListener("hello", () => {
      clearTimeout(view.quiet);
      stopPolling();
      setStatus("Live", "ok");
      refresh(); // whatever changed while no stream was open
    });
    source.addEventListener("tasks", (event) => {
      const data = JSON.parse(event.data);
      if (data.resync) refresh();
      else applyChanges(data.tasks);
    });
    source.addEventListener("stats", (event) => renderStats(JSON.parse(event.data)));
    source.addEventListener("resync", refresh);
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (no manager, or a proxy): poll, and try the stream again later.
        source.close();
        startPolling();
        view.quiet = setTimeout(() => view.source === source && connect(), 30000);
        return;
      }
      // Streams end on purpose every few seconds; only a long gap is news.
      clearTimeout(view.quiet);
      view.quiet = setTimeout(() => {
        if (source.readyState !== EventSource.OPEN) startPolling();
      }, 5000);
    });
  }

  function disconnect() {
    if (view.source) view.source.close();
    view.source = null;
    clearTimeout(view.quiet);
    stopPolling();
  }

  function togglePause() {
    view.paused = !view.paused;
    const button = $("pause");
    button.setAttribute("aria-pressed", String(view.paused));
    button.textContent = view.paused ? "Resume updates" : "Pause updates";
    if (view.paused) {
      disconnect();
      setStatus("Paused");
    } else {
      setStatus("Connecting…");
      connect();
    }
  }

  function tickDurations() {
    for (const row of view.rows.values()) {
      if (row.task.started_at && !row.task.finished_at && !view.paused) {
        row.cells.duration.textContent = seconds(duration(row.task));
      }
    }
  }

  // -- wiring -------------------------------------------------------------

  function start() {
    $("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      applyFilters();
    });
    $("filters").addEventListener("reset", () => setTimeout(applyFilters));
    $("f-state").addEventListener("change", applyFilters);
    $("f-limit").addEventListener("change", applyFilters);
    let typing = 0;
    for (const id of ["f-name", "f-id"]) {
      $(id).addEventListener("input", () => {
        clearTimeout(typing);
        typing = setTimeout(() => $(id).checkValidity() && applyFilters(), 350);
      });
    }
    $("pause").addEventListener("click", togglePause);
    $("newest").addEventListener("click", () => {
      view.cursors = [null];
      refresh();
    });
    $("newer").addEventListener("click", () => {
      if (view.cursors.length > 1) view.cursors.pop();
      refresh();
    });
    $("older").addEventListener("click", async () => {
      if (view.nextStale) await loadPage();
      if (!view.next) return;
      view.cursors.push(view.next);
      refresh();
    });
    $("detail-close").addEventListener("click", () => $("detail").close());
    $("detail").addEventListener("close", () => { view.detailId = null; });
    $("confirm-no").addEventListener("click", () => $("confirm").close());
    setInterval(tickDurations, 1000);
    refresh();
    connect();
  }

  start();
})();
