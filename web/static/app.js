// workflow-graph dashboard. Plain JavaScript, no build step, public REST API only.
//
// Safety rule of this file: text from the API (names, commands, log lines, errors)
// only ever reaches the page through textContent, createTextNode or setAttribute.
// Nothing here assigns innerHTML.
"use strict";

(() => {
  const STATUSES = ["queued", "running", "success", "failure", "skipped", "cancelled"];
  const TERMINAL = new Set(["success", "failure", "skipped", "cancelled"]);
  // A run is `queued` (waiting for its concurrency group) or `running` until it ends.
  const RUN_ACTIVE = new Set(["queued", "running"]);
  // What "Re-run failed jobs" runs again: anything that did not succeed.
  const RERUNNABLE = new Set(["failure", "cancelled", "skipped"]);
  const TOKEN_KEY = "wfg.apiToken";
  const PAGE_SIZES = [25, 50, 100, 200];
  const RUNS_PAGE = 20;
  // Older runs that are still queued or running change without the latest run changing;
  // the history is refetched for them no more often than this.
  const HISTORY_ACTIVE_MS = 3000;
  const MAX_LOG_CHARS = 2_000_000; // older output is dropped beyond this, so a chatty job stays light

  // --- DOM helpers ---------------------------------------------------------

  /** An element; `props` are attributes (via setAttribute), `text`, `class`, or `on<event>`. */
  function h(tag, props = {}, ...children) {
    const el = document.createElement(tag);
    applyProps(el, props);
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function s(tag, props = {}, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    applyProps(el, props);
    for (const child of children) el.append(child);
    return el;
  }

  function applyProps(el, props) {
    for (const [key, value] of Object.entries(props)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") el.textContent = String(value);
      else if (key === "class") el.setAttribute("class", value);
      else if (key.startsWith("on") && typeof value === "function") {
        el.addEventListener(key.slice(2), value);
      } else el.setAttribute(key, value === true ? "" : String(value));
    }
  }

  const enc = encodeURIComponent;

  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }

  // Small inline icons, one per status, so no icon font or image is needed.
  const ICON_PATHS = {
    queued: ["M8 4.8V8l2.2 1.4"],
    running: [],
    success: ["M4.8 8.3l2.2 2.2 4.3-4.6"],
    failure: ["M5.6 5.6l4.8 4.8M10.4 5.6l-4.8 4.8"],
    skipped: ["M5 8h5.5M8.5 5.8L10.7 8l-2.2 2.2"],
    cancelled: ["M4.6 11.4l6.8-6.8"],
    never: ["M5.2 8h5.6"],
  };

  function statusIcon(status) {
    const svg = s("svg", {
      class: `icon icon-${status}`,
      viewBox: "0 0 16 16",
      width: 16,
      height: 16,
      "aria-hidden": "true",
      focusable: "false",
    });
    if (status === "running") {
      svg.append(s("circle", { cx: 8, cy: 8, r: 6, class: "track" }));
      svg.append(s("path", { d: "M8 2a6 6 0 0 1 6 6", class: "arc" }));
    } else {
      svg.append(s("circle", { cx: 8, cy: 8, r: 6.5, class: "disc" }));
      for (const d of ICON_PATHS[status] || []) svg.append(s("path", { d, class: "mark" }));
    }
    return svg;
  }

  /** A status chip: icon and word, so the status never rests on colour alone. */
  function statusChip(status, text = status, title = null) {
    return h("span", { class: `chip status-${status}`, title }, statusIcon(status), text);
  }

  // --- time ------------------------------------------------------------------

  function formatSecs(total) {
    total = Math.max(0, Math.floor(total));
    const h_ = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const sec = total % 60;
    if (h_) return `${h_}h ${String(m).padStart(2, "0")}m`;
    if (m) return `${m}m ${String(sec).padStart(2, "0")}s`;
    return `${sec}s`;
  }

  function ago(ms) {
    if (!ms) return "never";
    const secs = (Date.now() - ms) / 1000;
    return secs < 2 ? "just now" : `${formatSecs(secs)} ago`;
  }

  const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  const RELATIVE_UNITS = [["year", 31536000], ["month", 2592000], ["week", 604800],
    ["day", 86400], ["hour", 3600], ["minute", 60]];

  /** "3 minutes ago", "yesterday": how GitHub and most CI pages say when. */
  function whenText(ms) {
    const secs = (ms - Date.now()) / 1000;
    if (Math.abs(secs) < 45) return "just now";
    for (const [unit, size] of RELATIVE_UNITS) {
      if (Math.abs(secs) >= size) return relative.format(Math.round(secs / size), unit);
    }
    return relative.format(Math.round(secs / 60), "minute");
  }

  const exactFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

  /** A <time> showing the relative time, the exact one on hover; `tick` refreshes its text. */
  function timeElement(ms) {
    const el = h("time", { datetime: new Date(ms).toISOString(), title: exactFormat.format(ms) });
    el.tick = () => setText(el, whenText(ms));
    el.tick();
    return el;
  }

  /** How long a run took, or has been going; empty before it started. */
  function runDuration(run) {
    if (!run.started_at_ms) return run.finished_at_ms ? "—" : "";
    return formatSecs(((run.finished_at_ms || Date.now()) - run.started_at_ms) / 1000);
  }

  // --- toasts and connection ------------------------------------------------

  function toast(message, kind = "info") {
    const box = document.getElementById("toasts");
    const el = h("div", { class: `toast toast-${kind}`, text: message });
    box.append(el);
    setTimeout(() => el.remove(), kind === "error" ? 8000 : 4000);
  }

  function setConnection(ok) {
    const el = document.getElementById("connection");
    setText(el, ok ? "" : "server unreachable, retrying…");
    el.classList.toggle("down", !ok);
  }

  // --- the API, with an optional bearer token ------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function storedToken() {
    try {
      return localStorage.getItem(TOKEN_KEY) || "";
    } catch {
      return "";
    }
  }

  let tokenPrompt = null;

  /** Ask for the token once; every request that got a 401 meanwhile waits for the same answer. */
  function askForToken() {
    if (tokenPrompt) return tokenPrompt;
    tokenPrompt = new Promise((resolve) => {
      const form = document.getElementById("token-form");
      const input = document.getElementById("token-input");
      form.hidden = false;
      input.focus();
      form.onsubmit = (event) => {
        event.preventDefault();
        const token = input.value.trim();
        if (!token) return;
        try {
          localStorage.setItem(TOKEN_KEY, token);
        } catch {
          /* private mode: the token lives until the page goes */
        }
        memoryToken = token;
        input.value = "";
        form.hidden = true;
        tokenPrompt = null;
        resolve(token);
      };
    });
    return tokenPrompt;
  }

  let memoryToken = "";
  const currentToken = () => storedToken() || memoryToken;

  async function api(path, { method = "GET", body } = {}, retried = false) {
    const headers = { Accept: "application/json" };
    const token = currentToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let resp;
    try {
      resp = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch {
      setConnection(false);
      throw new ApiError(0, "server unreachable");
    }
    setConnection(true);
    if (resp.status === 401 && !retried) {
      if (token) {
        try {
          localStorage.removeItem(TOKEN_KEY);
        } catch {
          /* ignore */
        }
        memoryToken = "";
      }
      await askForToken();
      return api(path, { method, body }, true);
    }
    const text = await resp.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!resp.ok) {
      const reason = data && typeof data.error === "string" ? data.error : `HTTP ${resp.status}`;
      throw new ApiError(resp.status, reason);
    }
    return data;
  }

  function streamUrl(path) {
    // EventSource cannot send headers, so the token travels in the query string.
    const token = currentToken();
    return token ? `${path}?access_token=${enc(token)}` : path;
  }

  // --- polling that slows down when nothing happens or the tab is hidden ---

  class Poller {
    /** `tick` returns true while things are moving (poll fast), false when idle. */
    constructor(tick, { fast = 1000, slow = 10000, hidden = 30000 } = {}) {
      this.tick = tick;
      this.fast = fast;
      this.slow = slow;
      this.hidden = hidden;
      this.idle = 0;
      this.errors = 0;
      this.timer = null;
      this.running = false;
      this.again = false;
      this.stopped = false;
      Poller.all.add(this);
    }

    start() {
      this.run();
      return this;
    }

    kick() {
      this.idle = 0;
      if (this.running) this.again = true;
      else this.run();
    }

    stop() {
      this.stopped = true;
      clearTimeout(this.timer);
      Poller.all.delete(this);
    }

    async run() {
      if (this.stopped) return;
      clearTimeout(this.timer);
      this.running = true;
      let busy = false;
      try {
        busy = await this.tick();
        this.errors = 0;
      } catch (err) {
        this.errors += 1;
        if (err.status !== 0) console.warn(err);
      }
      this.running = false;
      if (this.stopped) return;
      if (this.again) {
        this.again = false;
        this.run();
        return;
      }
      this.idle = busy ? 0 : this.idle + 1;
      let delay = Math.min(this.slow, this.fast * 2 ** Math.floor(this.idle / 3));
      if (this.errors) delay = Math.min(this.slow, 1000 * 2 ** this.errors);
      if (document.hidden) delay = this.hidden;
      this.timer = setTimeout(() => this.run(), delay);
    }
  }
  Poller.all = new Set();
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) for (const p of Poller.all) p.kick();
  });

  // --- workflow and run summaries -------------------------------------------

  function counts(jobs) {
    const c = Object.fromEntries(STATUSES.map((st) => [st, 0]));
    for (const job of jobs) c[job.status] = (c[job.status] || 0) + 1;
    return c;
  }

  /**
   * A workflow list entry's state: its latest run's status, or "never" before its
   * first run (its jobs then read `queued` though nothing waits for a worker).
   */
  function workflowState(wf) {
    if (wf.run) return wf.run.status;
    const c = counts(wf.jobs);
    if (c.queued === wf.jobs.length) return "never";
    return c.cancelled ? "cancelled" : "queued"; // cancelled before any run
  }

  const isActive = (wf) => !!wf.run && RUN_ACTIVE.has(wf.run.status);

  /** Why a queued job waits (the `waiting` extension), in a few words; "" if it does not. */
  function waitingText(waiting) {
    if (!waiting) return "";
    if (waiting.reason === "no_worker") {
      const labels = waiting.labels && waiting.labels.length ? ` with ${waiting.labels.join(", ")}` : "";
      return `waiting: no worker${labels}`;
    }
    if (waiting.reason === "delayed") {
      return `retry at ${new Date(waiting.until_ms).toLocaleTimeString()}`;
    }
    if (waiting.reason === "concurrency") return "waiting for its concurrency group";
    return `waiting: ${waiting.reason}`;
  }

  function summaryChips(jobs) {
    const c = counts(jobs);
    const chips = STATUSES.filter((st) => c[st]).map((st) => statusChip(st, `${c[st]} ${st}`, `${c[st]} ${st}`));
    if (!jobs.length) chips.push(h("span", { class: "chip", text: "no jobs" }));
    return chips;
  }

  function neverRunChip() {
    return h("span", { class: "chip status-never", title: "This workflow has not run yet" },
      statusIcon("never"), "never run");
  }

  const QUEUED_RUN_HINT = "waiting for its concurrency group";

  /** The chips of a list row or a run: the run's number and status, then its jobs. */
  function workflowChips(wf) {
    const state = workflowState(wf);
    if (state === "never") return [neverRunChip()];
    if (!wf.run) return summaryChips(wf.jobs);
    const run = statusChip(wf.run.status, `#${wf.run.number} ${wf.run.status}`,
      wf.run.status === "queued" ? `Run #${wf.run.number} is ${QUEUED_RUN_HINT}` : `Run #${wf.run.number}`);
    run.classList.add("run-chip");
    if (wf.run.status === "queued") return [run, h("span", { class: "muted", text: QUEUED_RUN_HINT })];
    return [run, ...summaryChips(wf.jobs)];
  }

  function chipsKey(wf) {
    const c = counts(wf.jobs);
    return JSON.stringify([wf.run, STATUSES.map((st) => c[st])]);
  }

  // --- starting, cancelling and re-running runs -------------------------------

  /** How the notification of a run's end to one URL went, for the run's meta line. */
  function notificationText(note) {
    const attempts = `${note.attempts} attempt${note.attempts === 1 ? "" : "s"}`;
    let state = `${note.state} after ${attempts}`;
    if (note.state === "pending") {
      state = note.attempts ? `retrying (${attempts}; ${note.last_error || "failed"})` : "sending";
    } else if (note.state === "failed") {
      state = `given up after ${attempts} (${note.last_error || "failed"})`;
    }
    return h("span", { class: `notification notification-${note.state}`, title: note.url },
      "notified ", h("code", { text: new URL(note.url).host }), `: ${state}`);
  }

  function runStartedMessage(name, accepted) {
    return accepted.status === "queued"
      ? `Run #${accepted.number} of ${name} queued: ${QUEUED_RUN_HINT}`
      : `Run #${accepted.number} of ${name} started`;
  }

  function runError(name, err) {
    return err.status === 409 ? `${name}: a run is already active` : `Run failed: ${err.message}`;
  }

  /**
   * Start a run of `workflow`: at once when it declares no inputs, else through the
   * run form. `inputs` is the declaration when known (null: it is fetched). Resolves
   * to the server's answer, or null when nothing was started.
   */
  async function requestRun(workflow, inputs) {
    if (inputs === null) {
      try {
        inputs = (await api(`/api/workflows/${enc(workflow.id)}/layout`)).inputs || [];
      } catch (err) {
        toast(`Run failed: ${err.message}`, "error");
        return null;
      }
    }
    if (inputs.length) return runForm.open(workflow, inputs);
    try {
      const accepted = await api(`/api/workflows/${enc(workflow.id)}/run`, { method: "POST" });
      toast(runStartedMessage(workflow.name, accepted));
      return accepted;
    } catch (err) {
      toast(runError(workflow.name, err), "error");
      return null;
    }
  }

  async function cancelWorkflow(workflow) {
    try {
      await api(`/api/workflows/${enc(workflow.id)}/cancel`, { method: "POST" });
      toast(`Cancelled: ${workflow.name}`);
    } catch (err) {
      toast(`Cancel failed: ${err.message}`, "error");
    }
  }

  async function cancelRun(workflowId, number) {
    try {
      await api(`/api/workflows/${enc(workflowId)}/runs/${number}/cancel`, { method: "POST" });
      toast(`Run #${number} cancelled`);
    } catch (err) {
      toast(`Cancel failed: ${err.message}`, "error");
    }
  }

  async function rerun(workflowId, number, failedOnly) {
    try {
      const accepted = await api(`/api/workflows/${enc(workflowId)}/runs/${number}/rerun`, {
        method: "POST",
        body: failedOnly ? { failed_only: true } : undefined,
      });
      toast(`Run #${accepted.number} re-runs ${failedOnly ? "the failed jobs of " : ""}run #${number}`);
      return accepted;
    } catch (err) {
      toast(`Re-run failed: ${err.message}`, "error");
      return null;
    }
  }

  /** A button that stays disabled while its action is in flight. */
  function actionButton(text, props, action) {
    const button = h("button", { type: "button", class: "btn", text, ...props });
    button.addEventListener("click", async () => {
      if (button.dataset.busy) return;
      button.dataset.busy = "1";
      button.disabled = true;
      try {
        await action();
      } finally {
        delete button.dataset.busy;
        button.disabled = !!button.dataset.off;
      }
    });
    /** Enable or disable it, without cutting short an action in flight. */
    button.enable = (on) => {
      if (on) delete button.dataset.off;
      else button.dataset.off = "1";
      if (!button.dataset.busy) button.disabled = !on;
    };
    return button;
  }

  // --- the run form ------------------------------------------------------------

  /** A modal form for a workflow's declared run inputs, as GitHub's "Run workflow" asks. */
  class RunForm {
    constructor() {
      this.title = h("h2", { id: "run-form-title" });
      this.fields = h("div", { class: "fields" });
      this.error = h("p", { class: "form-error", role: "alert", hidden: true });
      this.submit = h("button", { type: "submit", class: "btn primary", text: "Run workflow" });
      const dismiss = h("button", { type: "button", class: "btn", text: "Cancel" });
      // The server checks the inputs (and names the bad one); the browser's own checks
      // would only sometimes agree with it.
      this.form = h("form", { class: "run-form", novalidate: true },
        this.title, this.fields, this.error,
        h("div", { class: "row" }, dismiss, this.submit));
      this.dialog = h("dialog", { class: "run-dialog", "aria-labelledby": "run-form-title" }, this.form);
      dismiss.addEventListener("click", () => this.dialog.close());
      this.dialog.addEventListener("close", () => this.finish(null));
      this.form.addEventListener("submit", (event) => {
        event.preventDefault();
        this.send();
      });
      this.resolve = null;
    }

    open(workflow, inputs) {
      if (!this.dialog.isConnected) document.body.append(this.dialog);
      this.finish(null);
      this.workflow = workflow;
      setText(this.title, `Run ${workflow.name}`);
      this.controls = new Map();
      this.fields.replaceChildren(...inputs.map((input, i) => this.field(input, i)));
      this.showError("");
      this.submit.disabled = false;
      this.dialog.showModal();
      const first = this.fields.querySelector("input, select");
      if (first) first.focus();
      return new Promise((resolve) => {
        this.resolve = resolve;
      });
    }

    finish(answer) {
      const resolve = this.resolve;
      this.resolve = null;
      if (resolve) resolve(answer);
    }

    field(input, i) {
      const id = `run-input-${i}`;
      const described = [];
      const help = input.description ? h("p", { class: "help muted", id: `${id}-help`, text: input.description }) : null;
      if (help) described.push(help.id);
      const error = h("p", { class: "field-error", id: `${id}-error`, hidden: true });
      described.push(error.id);
      const common = { id, name: input.name, "aria-describedby": described.join(" "), "aria-required": input.required ? "true" : null };
      let control;
      if (input.type === "boolean") {
        control = h("input", { ...common, type: "checkbox" });
        control.checked = input.default === true || input.default === "true";
      } else if (input.type === "choice") {
        control = h("select", common);
        if (input.default === null || input.default === undefined) {
          control.append(h("option", { value: "", text: input.required ? "Choose…" : "(none)" }));
        }
        for (const option of input.options) control.append(h("option", { value: option, text: option }));
        control.value = input.default === null || input.default === undefined ? "" : String(input.default);
      } else {
        const kind = input.type === "number" ? { type: "number", step: "any" } : { type: "text" };
        control = h("input", { ...common, ...kind, autocomplete: "off" });
        control.value = input.default === null || input.default === undefined ? "" : String(input.default);
      }
      this.controls.set(input.name, { input, control, error });
      const label = h("label", { for: id },
        h("span", { class: "input-name", text: input.name }),
        input.required ? h("span", { class: "required", text: "required" }) : null,
        h("span", { class: "input-type muted", text: input.type }));
      const box = input.type === "boolean"
        ? h("div", { class: "field field-check" }, control, label, help, error)
        : h("div", { class: "field" }, label, control, help, error);
      box.dataset.input = input.name;
      return box;
    }

    values() {
      const values = {};
      for (const [name, { input, control }] of this.controls) {
        if (input.type === "boolean") values[name] = control.checked;
        else if (input.type === "number") {
          // Empty: the server fills the default, or says the input is required.
          if (control.value !== "") values[name] = Number(control.value);
        } else if (control.value !== "" || !input.required) {
          if (input.type !== "choice" || control.value !== "") values[name] = control.value;
        }
      }
      return values;
    }

    showError(message) {
      setText(this.error, message);
      this.error.hidden = !message;
      // The server names the input it refused: `input 'name' ...` or `unknown input 'name'`.
      const named = /input '([^']+)'/.exec(message);
      for (const [name, { control, error }] of this.controls) {
        const bad = !!named && named[1] === name;
        setText(error, bad ? message : "");
        error.hidden = !bad;
        if (bad) control.setAttribute("aria-invalid", "true");
        else control.removeAttribute("aria-invalid");
      }
      if (named && this.controls.has(named[1])) this.controls.get(named[1]).control.focus();
    }

    async send() {
      this.submit.disabled = true;
      const workflow = this.workflow;
      try {
        const accepted = await api(`/api/workflows/${enc(workflow.id)}/run`, {
          method: "POST",
          body: { inputs: this.values() },
        });
        toast(runStartedMessage(workflow.name, accepted));
        this.finish(accepted);
        this.dialog.close();
      } catch (err) {
        this.showError(err.status === 422 ? err.message : runError(workflow.name, err));
        this.submit.disabled = false;
      }
    }
  }

  const runForm = new RunForm();

  // --- workers -------------------------------------------------------------

  class WorkersSection {
    constructor() {
      this.rows = new Map();
      this.list = h("ul", { class: "workers", role: "list" });
      this.loading = h("p", { class: "muted loading", text: "Loading workers…" });
      this.empty = h("p", { class: "empty", hidden: true, text: "No workers registered. Start one with: wfg worker --server URL" });
      this.el = h("section", { class: "card", id: "workers", "aria-labelledby": "workers-title", "aria-busy": "true" },
        h("h2", { id: "workers-title", text: "Workers" }), this.loading, this.empty, this.list);
    }

    async refresh() {
      const workers = await api("/api/workers");
      this.loading.hidden = true;
      this.el.removeAttribute("aria-busy");
      this.empty.hidden = workers.length > 0;
      const seen = new Set();
      let busy = false;
      for (const w of workers) {
        seen.add(w.worker_id);
        busy ||= w.status === "busy";
        let row = this.rows.get(w.worker_id);
        if (!row) {
          row = { el: h("li", { class: "worker" }), key: "" };
          this.rows.set(w.worker_id, row);
        }
        this.list.append(row.el); // keeps server order; a no-op move when already in place
        const key = JSON.stringify([w.status, w.labels, w.current_job]);
        if (row.key !== key) {
          row.key = key;
          row.heard = h("span", { class: "muted" });
          row.el.replaceChildren(
            h("span", { class: `chip worker-${w.status}`, text: w.status }),
            h("span", { class: "worker-id", text: w.worker_id }),
            h("span", { class: "labels" }, w.labels.length
              ? w.labels.map((l) => h("span", { class: "label", text: l }))
              : h("span", { class: "muted", text: "no labels" })),
            h("span", { class: "current" }, w.current_job
              ? ["running ", h("code", { text: w.current_job })]
              : h("span", { class: "muted", text: "no job" })),
            row.heard,
          );
        }
        setText(row.heard, `heard ${ago(w.last_heartbeat_ms)}`);
      }
      for (const [id, row] of this.rows) {
        if (!seen.has(id)) {
          row.el.remove();
          this.rows.delete(id);
        }
      }
      return busy;
    }
  }

  // --- the workflow list ---------------------------------------------------

  class ListView {
    constructor() {
      const params = new URLSearchParams(location.search);
      this.status = STATUSES.includes(params.get("status")) ? params.get("status") : "";
      this.limit = PAGE_SIZES.includes(Number(params.get("limit"))) ? Number(params.get("limit")) : 25;
      this.offset = Math.max(0, Math.floor(Number(params.get("offset")) || 0));
      this.rows = new Map();
      this.workers = new WorkersSection();
    }

    mount(main) {
      document.title = "Workflows · workflow-graph";
      const filter = h("select", { id: "status-filter", "aria-label": "Filter workflows by job status" },
        h("option", { value: "", text: "any status" }),
        STATUSES.map((st) => h("option", { value: st, text: `has ${st} jobs` })));
      filter.value = this.status;
      filter.addEventListener("change", () => {
        this.status = filter.value;
        this.offset = 0;
        this.changed();
      });
      const size = h("select", { id: "page-size", "aria-label": "Workflows per page" },
        PAGE_SIZES.map((n) => h("option", { value: n, text: `${n} per page` })));
      size.value = String(this.limit);
      size.addEventListener("change", () => {
        this.limit = Number(size.value);
        this.offset = 0;
        this.changed();
      });
      this.prev = h("button", { type: "button", class: "btn", "aria-label": "Previous page", text: "‹ Prev" });
      this.next = h("button", { type: "button", class: "btn", "aria-label": "Next page", text: "Next ›" });
      this.pageInfo = h("span", { class: "muted page-info" });
      this.prev.addEventListener("click", () => {
        this.offset = Math.max(0, this.offset - this.limit);
        this.changed();
      });
      this.next.addEventListener("click", () => {
        this.offset += this.limit;
        this.changed();
      });
      this.list = h("ul", { class: "workflows", role: "list", "aria-label": "Workflows" });
      // Until the first answer nothing is known: neither "no workflows" nor an empty list.
      this.loading = h("p", { class: "muted loading", text: "Loading workflows…" });
      this.empty = h("p", { class: "empty", hidden: true });
      this.pager = h("div", { class: "pager", hidden: true }, this.prev, this.pageInfo, this.next);
      this.section = h("section", { class: "card", "aria-labelledby": "workflows-title", "aria-busy": "true" },
        h("div", { class: "section-head" },
          h("h1", { id: "workflows-title", text: "Workflows" }),
          h("div", { class: "controls" }, filter, size)),
        this.loading,
        this.empty,
        this.list,
        this.pager);
      main.replaceChildren(this.section, this.workers.el);
      this.poller = new Poller(() => this.refresh(), { fast: 2000, slow: 15000 }).start();
    }

    destroy() {
      this.poller.stop();
    }

    changed() {
      const params = new URLSearchParams();
      if (this.status) params.set("status", this.status);
      if (this.limit !== 25) params.set("limit", this.limit);
      if (this.offset) params.set("offset", this.offset);
      const query = params.toString();
      history.replaceState(null, "", `/${query ? `?${query}` : ""}${location.hash}`);
      this.poller.kick();
    }

    async refresh() {
      const query = `limit=${this.limit + 1}&offset=${this.offset}${this.status ? `&status=${this.status}` : ""}`;
      const [page, workersBusy] = await Promise.all([
        api(`/api/workflows?${query}`).catch((err) => {
          if (!this.loading.hidden) setText(this.loading, `Could not load workflows (${err.message}); retrying…`);
          throw err;
        }),
        this.workers.refresh().catch(() => false),
      ]);
      if (!page.length && this.offset > 0) {
        // The page emptied (say, a filter now matches less): step back.
        this.offset = Math.max(0, this.offset - this.limit);
        this.changed();
        return true;
      }
      this.loading.hidden = true;
      this.section.removeAttribute("aria-busy");
      this.pager.hidden = false;
      const hasNext = page.length > this.limit;
      const workflows = page.slice(0, this.limit);
      this.prev.disabled = this.offset === 0;
      this.next.disabled = !hasNext;
      const first = workflows.length ? this.offset + 1 : 0;
      setText(this.pageInfo, `${first}–${this.offset + workflows.length}${hasNext ? "+" : ""}`);
      this.empty.hidden = workflows.length > 0;
      setText(this.empty, this.status
        ? `No workflow has ${this.status} jobs.`
        : "No workflows yet. Put definition files in WORKFLOWS_DIR or POST /api/workflows.");
      const seen = new Set();
      let busy = workersBusy;
      workflows.forEach((wf, i) => {
        seen.add(wf.id);
        busy ||= isActive(wf);
        let row = this.rows.get(wf.id);
        if (!row) row = this.createRow(wf);
        row.workflow = wf;
        if (this.list.children[i] !== row.el) this.list.insertBefore(row.el, this.list.children[i] || null);
        this.updateRow(row);
      });
      for (const [id, row] of this.rows) {
        if (!seen.has(id)) {
          row.el.remove();
          this.rows.delete(id);
        }
      }
      return busy;
    }

    createRow(wf) {
      const row = { workflow: wf, summary: "" };
      const href = `/workflows/${enc(wf.id)}`;
      row.name = h("a", { href, "data-route": true, class: "wf-name" });
      row.trigger = h("span", { class: "trigger" });
      row.chips = h("span", { class: "chips" });
      row.jobsCount = h("span", { class: "muted" });
      const after = () => this.poller.kick();
      row.runButton = actionButton("Run", { class: "btn primary" }, async () => {
        if (await requestRun(row.workflow, null)) after();
      });
      row.cancel = actionButton("Cancel", {}, async () => {
        await cancelWorkflow(row.workflow);
        after();
      });
      row.el = h("li", { class: "wf-row", "data-workflow-id": wf.id },
        h("div", { class: "wf-main" }, row.name,
          h("span", { class: "wf-id" }, h("span", { class: "muted", text: "id " }), h("code", { text: wf.id })),
          row.trigger),
        h("div", { class: "wf-status" }, row.chips, row.jobsCount),
        h("div", { class: "wf-actions" }, row.runButton, row.cancel));
      this.rows.set(wf.id, row);
      return row;
    }

    updateRow(row) {
      const wf = row.workflow;
      setText(row.name, wf.name);
      setText(row.trigger, wf.trigger || "");
      row.trigger.hidden = !wf.trigger;
      setText(row.jobsCount, `${wf.jobs.length} job${wf.jobs.length === 1 ? "" : "s"}`);
      row.el.dataset.status = workflowState(wf);
      const key = chipsKey(wf);
      if (row.summary !== key) {
        row.summary = key;
        row.chips.replaceChildren(...workflowChips(wf));
      }
      row.runButton.setAttribute("aria-label", `Run workflow ${wf.name}`);
      row.cancel.setAttribute("aria-label", `Cancel workflow ${wf.name}`);
      row.cancel.enable(isActive(wf));
      row.cancel.title = isActive(wf) ? "Cancel every queued or running run" : "No run is queued or running";
    }
  }

  // --- the log panel -------------------------------------------------------

  class LogPanel {
    constructor(workflowId, onClose) {
      this.workflowId = workflowId;
      this.job = null;
      this.run = null; // the run number whose log is shown; null before the first run
      this.source = null;
      this.pending = [];
      this.flushTimer = null;
      this.chars = 0;
      this.received = 0;
      this.generation = 0;
      this.title = h("h2", { id: "log-title" });
      this.status = h("span", { class: "chip" });
      this.meta = h("div", { class: "log-meta muted" });
      this.command = h("pre", { class: "command" });
      this.outputBox = h("div", { class: "failure-output", hidden: true },
        h("h3", { text: "Failure output" }), (this.output = h("pre", { class: "output" })));
      this.log = h("pre", { class: "log", tabindex: 0, "aria-label": "Job log" });
      this.placeholder = h("p", { class: "muted log-empty", text: "No log output yet." });
      const close = h("button", { type: "button", class: "btn icon-btn", "aria-label": "Close logs", text: "✕" });
      close.addEventListener("click", () => onClose());
      this.el = h("aside", { class: "log-panel card", "aria-labelledby": "log-title", hidden: true },
        h("div", { class: "section-head" }, h("div", { class: "log-heading" }, this.title, this.status), close),
        this.meta,
        h("details", { class: "command-box" }, h("summary", { text: "Command" }), this.command),
        this.outputBox,
        h("div", { class: "log-legend muted" },
          h("span", { class: "legend-stdout", text: "stdout" }), " ",
          h("span", { class: "legend-stderr", text: "stderr" })),
        this.placeholder,
        this.log);
    }

    open(job, run) {
      this.close();
      this.job = job;
      this.run = run;
      this.el.hidden = false;
      this.update(job, true);
      this.start();
    }

    close() {
      this.generation += 1;
      this.stopStream();
      this.job = null;
      this.el.hidden = true;
    }

    get jobId() {
      return this.job && this.job.id;
    }

    update(job, first = false) {
      const before = this.job;
      this.job = job;
      setText(this.title, job.name);
      setText(this.status, job.status);
      this.status.className = `chip status-${job.status}`;
      const bits = [`id ${job.id}`];
      if (this.run !== null) bits.push(`run #${this.run}`);
      if (job.attempt) bits.push(`attempt ${job.attempt + 1} of ${job.max_retries + 1}`);
      if (job.required_labels.length) bits.push(`labels ${job.required_labels.join(", ")}`);
      if (job.duration_secs !== null && job.duration_secs !== undefined) bits.push(`took ${formatSecs(job.duration_secs)}`);
      setText(this.meta, bits.join(" · "));
      setText(this.command, job.command);
      this.outputBox.hidden = !job.output;
      setText(this.output, job.output || "");
      if (first || !before) return;
      const wasDone = TERMINAL.has(before.status);
      const isDone = TERMINAL.has(job.status);
      if (!wasDone && isDone) {
        if (!this.source) this.fetchAll(); // else the stream ends by itself after the last chunk
      } else if (wasDone && !isDone) this.start();
      else if (before.attempt !== job.attempt && !this.source) this.start();
    }

    base() {
      return `/api/workflows/${enc(this.workflowId)}/runs/${enc(this.run)}/jobs/${enc(this.job.id)}/logs`;
    }

    clear() {
      this.pending = [];
      this.chars = 0;
      this.received = 0;
      this.lastAttempt = null;
      this.lastSequence = null;
      this.log.replaceChildren();
      this.placeholder.hidden = false;
      setText(this.placeholder, this.run === null ? "This job has not run yet." : "No log output yet.");
    }

    start() {
      this.stopStream();
      this.clear();
      if (this.run === null) return;
      if (TERMINAL.has(this.job.status)) this.fetchAll();
      else this.stream();
    }

    stream() {
      const generation = ++this.generation;
      const source = new EventSource(streamUrl(`${this.base()}/stream`));
      this.source = source;
      source.addEventListener("log", (event) => {
        if (generation !== this.generation) return;
        try {
          this.push(JSON.parse(event.data));
        } catch {
          /* not a chunk */
        }
      });
      // The server closes the stream once the job is over; EventSource would then
      // reconnect and replay everything, so we close it and settle with one fetch.
      source.addEventListener("error", () => {
        source.close();
        if (generation !== this.generation) return;
        this.source = null;
        setTimeout(() => this.afterStream(generation), 300);
      });
    }

    async afterStream(generation) {
      if (generation !== this.generation || !this.job) return;
      let job = this.job;
      try {
        const run = await api(`/api/workflows/${enc(this.workflowId)}/runs/${enc(this.run)}`);
        job = run.jobs.find((j) => j.id === this.job.id) || job;
      } catch {
        /* keep what we know */
      }
      if (generation !== this.generation) return;
      if (TERMINAL.has(job.status)) this.fetchAll();
      else setTimeout(() => generation === this.generation && this.start(), 1500);
    }

    async fetchAll() {
      const generation = this.generation;
      let chunks;
      try {
        chunks = await api(this.base());
      } catch (err) {
        if (generation === this.generation) toast(`Logs: ${err.message}`, "error");
        return;
      }
      if (generation !== this.generation) return;
      if (chunks.length === this.received + this.pending.length) return; // already complete
      this.clear();
      for (const chunk of chunks) this.push(chunk);
    }

    stopStream() {
      if (this.source) this.source.close();
      this.source = null;
      clearTimeout(this.flushTimer);
      this.flushTimer = null;
    }

    push(chunk) {
      this.pending.push(chunk);
      if (!this.flushTimer) this.flushTimer = setTimeout(() => this.flush(), 50);
    }

    /**
     * The attempt a chunk belongs to: its `attempt` key, or (from a server that does not
     * send one) counted from the sequence numbers, which start again at 0 each attempt.
     */
    attemptOf(chunk) {
      if (Number.isInteger(chunk.attempt)) return chunk.attempt;
      const previous = this.lastAttempt ?? 0;
      if (this.lastSequence !== null && chunk.sequence <= this.lastSequence) return previous + 1;
      return previous;
    }

    attemptMark(attempt) {
      const total = this.job && this.job.max_retries ? ` of ${this.job.max_retries + 1}` : "";
      const text = `Attempt ${attempt + 1}${total}`;
      this.chars += text.length;
      return h("span", { class: "attempt-mark", "data-attempt": attempt, text });
    }

    flush() {
      this.flushTimer = null;
      if (!this.pending.length) return;
      const log = this.log;
      const follow = log.scrollHeight - log.scrollTop - log.clientHeight < 24;
      for (const chunk of this.pending) {
        const attempt = this.attemptOf(chunk);
        if (attempt !== this.lastAttempt) {
          // A single attempt needs no heading; once a second one starts, both get one.
          if (this.lastAttempt === null && attempt > 0) log.append(this.attemptMark(attempt));
          else if (this.lastAttempt !== null) {
            if (!log.querySelector(".attempt-mark")) log.prepend(this.attemptMark(this.lastAttempt));
            log.append(this.attemptMark(attempt));
          }
          this.lastAttempt = attempt;
        }
        this.lastSequence = chunk.sequence;
        const stream = chunk.stream === "stderr" ? "stderr" : "stdout";
        const last = log.lastElementChild;
        if (last && last.dataset.stream === stream) last.append(chunk.data);
        else log.append(h("span", { class: stream, "data-stream": stream }, chunk.data));
        this.chars += chunk.data.length;
        this.received += 1;
      }
      this.pending = [];
      while (this.chars > MAX_LOG_CHARS && log.firstElementChild) {
        this.chars -= log.firstElementChild.textContent.length;
        log.firstElementChild.remove();
      }
      this.placeholder.hidden = log.childNodes.length > 0;
      if (follow) log.scrollTop = log.scrollHeight;
    }
  }

  // --- one workflow: its run history ------------------------------------------

  /**
   * The runs of a workflow, newest first, a page at a time. It is refetched only when
   * the latest run changes (the status poll tells) or, now and then, while an older
   * run is still queued or running: never the whole history on every poll.
   */
  class RunHistory {
    constructor(workflowId, onChange) {
      this.workflowId = workflowId;
      this.onChange = onChange;
      this.runs = new Map(); // number -> Run; always the newest runs, without gaps
      this.rows = new Map();
      this.key = null;
      this.fetchedAt = 0;
      this.loaded = false;
      this.exhausted = false;
      this.latest = 0;
      this.selected = null;
      this.body = h("tbody");
      this.loading = h("p", { class: "muted loading", text: "Loading runs…" });
      this.empty = h("p", { class: "empty", hidden: true, text: "No runs yet." });
      this.table = h("table", { class: "runs", hidden: true },
        h("thead", {}, h("tr", {},
          ["Run", "Status", "Trigger", "When", "Duration"].map((t) => h("th", { scope: "col", text: t })),
          h("th", { scope: "col" }, h("span", { class: "visually-hidden", text: "Actions" })))),
        this.body);
      this.more = h("button", { type: "button", class: "btn", hidden: true, text: "Load more runs" });
      this.more.addEventListener("click", async () => {
        this.more.disabled = true;
        try {
          await this.loadMore();
        } catch (err) {
          toast(`Runs: ${err.message}`, "error");
        }
        this.more.disabled = false;
      });
      this.el = h("section", { class: "card", id: "runs", "aria-labelledby": "runs-title" },
        h("h2", { id: "runs-title", text: "Runs" }), this.loading, this.empty, this.table,
        h("div", { class: "pager" }, this.more));
    }

    get active() {
      for (const run of this.runs.values()) if (RUN_ACTIVE.has(run.status)) return true;
      return false;
    }

    base() {
      return `/api/workflows/${enc(this.workflowId)}/runs`;
    }

    /** Bring the history up to date with `latest` (the status's `run`); true when it fetched. */
    async refresh(latest) {
      const key = latest ? `${latest.number}:${latest.status}` : "none";
      this.latest = latest ? latest.number : 0;
      const olderActive = [...this.runs.values()].some((r) => RUN_ACTIVE.has(r.status) && r.number !== this.latest);
      const due = !this.loaded || key !== this.key || (olderActive && Date.now() - this.fetchedAt >= HISTORY_ACTIVE_MS);
      if (!due) return false;
      const page = await api(`${this.base()}?limit=${RUNS_PAGE}`);
      this.key = key;
      this.fetchedAt = Date.now();
      const newest = this.newest();
      const oldestOfPage = page.length ? page[page.length - 1].number : Infinity;
      if (!this.loaded || oldestOfPage > newest + 1) {
        // First page, or more new runs than a page: what we held no longer joins on.
        this.runs = new Map();
        this.exhausted = page.length < RUNS_PAGE;
      }
      for (const run of page) this.runs.set(run.number, run);
      // Older runs beyond the first page that were still going: ask for each.
      for (const run of [...this.runs.values()]) {
        if (run.number < oldestOfPage && RUN_ACTIVE.has(run.status)) {
          try {
            this.runs.set(run.number, await api(`${this.base()}/${run.number}`));
          } catch (err) {
            if (err.status !== 404) throw err;
            this.runs.delete(run.number);
          }
        }
      }
      this.loaded = true;
      this.render();
      return true;
    }

    newest() {
      let n = 0;
      for (const number of this.runs.keys()) n = Math.max(n, number);
      return n;
    }

    async loadMore() {
      // Runs started since the last refresh push everything down the server's list.
      const offset = this.runs.size + Math.max(0, this.latest - this.newest());
      const page = await api(`${this.base()}?limit=${RUNS_PAGE}&offset=${offset}`);
      for (const run of page) this.runs.set(run.number, run);
      this.exhausted = page.length < RUNS_PAGE;
      this.render();
    }

    /** A fresher copy of a run the page fetched for itself. */
    upsert(run) {
      if (!this.runs.has(run.number)) return;
      this.runs.set(run.number, run);
      this.render();
    }

    select(number) {
      this.selected = number;
      for (const [n, row] of this.rows) {
        row.el.classList.toggle("selected", n === number);
        if (n === number) row.el.setAttribute("aria-current", "true");
        else row.el.removeAttribute("aria-current");
      }
    }

    render() {
      const numbers = [...this.runs.keys()].sort((a, b) => b - a);
      numbers.forEach((n, i) => {
        const run = this.runs.get(n);
        let row = this.rows.get(n);
        if (!row) {
          row = { el: h("tr", { "data-run": n }), key: "" };
          this.rows.set(n, row);
        }
        const key = JSON.stringify([run.status, run.trigger, run.started_at_ms, run.finished_at_ms, run.rerun_of]);
        if (row.key !== key) {
          row.key = key;
          this.fill(row, run);
        }
        if (this.body.children[i] !== row.el) this.body.insertBefore(row.el, this.body.children[i] || null);
      });
      for (const [n, row] of this.rows) {
        if (!this.runs.has(n)) {
          row.el.remove();
          this.rows.delete(n);
        }
      }
      this.loading.hidden = true;
      this.empty.hidden = numbers.length > 0;
      this.table.hidden = numbers.length === 0;
      this.more.hidden = this.exhausted;
      this.select(this.selected);
      this.tick();
    }

    fill(row, run) {
      const href = `/workflows/${enc(this.workflowId)}/runs/${run.number}`;
      row.run = run;
      row.when = timeElement(run.created_at_ms);
      row.duration = h("td", { class: "duration" });
      const status = h("td", { class: "run-status" }, statusChip(run.status));
      if (run.status === "queued") status.append(" ", h("span", { class: "muted", text: QUEUED_RUN_HINT }));
      const actions = h("td", { class: "run-actions" });
      if (RUN_ACTIVE.has(run.status)) {
        actions.append(actionButton("Cancel", { "aria-label": `Cancel run #${run.number}` }, async () => {
          await cancelRun(this.workflowId, run.number);
          this.onChange();
        }));
      }
      row.el.replaceChildren(
        h("th", { scope: "row" },
          h("a", { href, "data-route": true, "aria-label": `Run #${run.number}`, text: `#${run.number}` }),
          run.rerun_of ? h("span", { class: "muted rerun-of", text: ` re-run of #${run.rerun_of}` }) : null),
        status,
        h("td", { class: "run-trigger", text: run.trigger }),
        h("td", {}, row.when),
        row.duration,
        actions);
      row.el.dataset.status = run.status;
    }

    tick() {
      for (const row of this.rows.values()) {
        row.when.tick();
        setText(row.duration, runDuration(row.run));
      }
    }
  }

  // --- one workflow: a run's DAG ---------------------------------------------

  class WorkflowView {
    /** `runNumber`: the run the URL names, or null to follow the latest run. */
    constructor(workflowId, runNumber) {
      this.workflowId = workflowId;
      this.runNumber = runNumber;
      this.workflow = null;
      this.layout = null;
      this.record = null; // the shown run, as GET .../runs/{number} answered
      this.recordAt = 0; // when it was asked for (ms)
      this.recordKey = "";
      this.recordError = "";
      this.shown = undefined; // the number of the run drawn; null before the first run
      this.boxes = new Map();
      this.edges = [];
      this.workers = new WorkersSection();
      this.history = new RunHistory(workflowId, () => this.kick());
      this.panel = new LogPanel(workflowId, () => this.select(null));
    }

    mount(main) {
      this.title = h("h1", { text: this.workflowId });
      this.trigger = h("span", { class: "trigger" });
      this.nextRun = h("span", { class: "next-run muted", hidden: true });
      this.nextRunWhen = null;
      this.schedulesAt = 0; // when the schedules were last asked for (ms)
      this.chips = h("div", { class: "chips" });
      this.summary = "";
      this.runButton = actionButton("Run workflow", { class: "btn primary", "aria-label": `Run workflow ${this.workflowId}` },
        async () => {
          const workflow = this.workflow || { id: this.workflowId, name: this.workflowId };
          const accepted = await requestRun(workflow, this.layout ? this.layout.inputs || [] : null);
          if (accepted) this.showRun(accepted.number);
        });
      this.runButton.disabled = true;

      this.runTitle = h("h2", { id: "run-title", text: "Run" });
      this.runStatus = h("span", { class: "run-state", "aria-live": "polite" });
      this.runMeta = h("div", { class: "run-meta muted" });
      this.runInputs = h("div", { class: "run-inputs", hidden: true });
      this.cancelRunButton = actionButton("Cancel run", { hidden: true }, async () => {
        await cancelRun(this.workflowId, this.shown);
        this.kick();
      });
      this.rerunFailedButton = actionButton("Re-run failed jobs", { hidden: true }, () => this.rerun(true));
      this.rerunAllButton = actionButton("Re-run all jobs", { hidden: true }, () => this.rerun(false));
      this.runBar = h("div", { class: "run-bar", "aria-labelledby": "run-title", role: "group" },
        h("div", { class: "run-summary" },
          h("div", { class: "run-heading" }, this.runTitle, this.runStatus),
          this.runMeta, this.runInputs),
        h("div", { class: "run-buttons" }, this.cancelRunButton, this.rerunFailedButton, this.rerunAllButton));

      this.canvas = h("div", { class: "dag-canvas" });
      this.sizer = h("div", { class: "dag-sizer" }, this.canvas);
      this.scroller = h("div", { class: "dag-scroll", tabindex: 0, "aria-label": "Workflow graph" }, this.sizer);
      this.zoom = 1;
      const zoomButton = (text, label, next) => {
        const b = h("button", { type: "button", class: "btn icon-btn", "aria-label": label, title: label, text });
        b.addEventListener("click", () => this.setZoom(next()));
        return b;
      };
      this.zoomBar = h("div", { class: "zoom", role: "group", "aria-label": "Zoom" },
        zoomButton("−", "Zoom out", () => this.zoom / 1.25),
        zoomButton("100%", "Actual size", () => 1),
        zoomButton("+", "Zoom in", () => this.zoom * 1.25),
        zoomButton("Fit", "Fit graph to view", () => this.fitZoom()));
      this.message = h("p", { class: "muted loading", text: "Loading…" });
      this.dagArea = h("div", { class: "dag-area", hidden: true }, this.scroller, this.panel.el);
      this.dagBar = h("div", { class: "dag-bar", hidden: true }, this.chips, this.zoomBar);
      this.runBar.hidden = true;
      this.ident = h("p", { class: "wf-ident" },
        h("span", { class: "wf-id" }, h("span", { class: "muted", text: "id " }), h("code", { text: this.workflowId })),
        this.trigger, this.nextRun);
      main.replaceChildren(
        h("section", { class: "card" },
          h("div", { class: "section-head wf-head" },
            h("div", {},
              h("a", { href: "/", "data-route": true, class: "back", text: "‹ All workflows" }),
              this.title, this.ident),
            h("div", { class: "wf-actions" }, this.runButton)),
          this.runBar,
          this.dagBar,
          this.message,
          this.dagArea),
        this.history.el,
        this.workers.el,
      );
      this.load();
      this.clock = setInterval(() => this.tickClock(), 1000);
    }

    destroy() {
      if (this.poller) this.poller.stop();
      clearInterval(this.clock);
      this.panel.close();
      this.stopped = true;
    }

    kick() {
      if (this.poller) this.poller.kick();
    }

    /** Show run `number` (null: follow the latest), and say so in the address bar. */
    showRun(number, push = true) {
      if (push) {
        const path = `/workflows/${enc(this.workflowId)}${number === null ? "" : `/runs/${number}`}`;
        if (location.pathname !== path) history.pushState(null, "", path);
      }
      this.runNumber = number;
      this.kick();
    }

    async rerun(failedOnly) {
      const accepted = await rerun(this.workflowId, this.shown, failedOnly);
      if (accepted) this.showRun(accepted.number);
    }

    async load() {
      let layout;
      try {
        layout = await api(`/api/workflows/${enc(this.workflowId)}/layout`);
      } catch (err) {
        setText(this.message, err.status === 404 ? `No workflow with id “${this.workflowId}”.` : `Could not load: ${err.message}`);
        if (err.status !== 404 && !this.stopped) setTimeout(() => !this.stopped && this.load(), 3000);
        return;
      }
      if (this.stopped) return;
      this.layout = layout;
      this.build(layout);
      this.runButton.disabled = false;
      this.poller = new Poller(() => this.refresh(), { fast: 1000, slow: 10000 }).start();
    }

    /** Whether the drawn graph has exactly these jobs and edges. */
    drawnFor(jobs) {
      if (jobs.length !== this.boxes.size || !jobs.every((j) => this.boxes.has(j.id))) return false;
      const edges = new Set(this.edges.map((e) => `${e.source}\n${e.target}`));
      const wanted = jobs.flatMap((j) => j.depends_on.map((d) => `${d}\n${j.id}`));
      return wanted.length === edges.size && wanted.every((e) => edges.has(e));
    }

    build(layout) {
      this.canvas.style.width = `${layout.width}px`;
      this.canvas.style.height = `${layout.height}px`;
      this.layoutSize = [layout.width, layout.height];
      this.setZoom(1);
      const svg = s("svg", {
        class: "edges",
        width: layout.width,
        height: layout.height,
        viewBox: `0 0 ${layout.width} ${layout.height}`,
        "aria-hidden": "true",
      });
      svg.append(s("defs", {},
        s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
          s("path", { d: "M0 1L10 5L0 9z" }))));
      for (const edge of layout.edges) {
        const path = s("path", { d: edgePath(edge.points), class: "edge", "marker-end": "url(#arrow)" });
        svg.append(path);
        this.edges.push({ el: path, source: edge.source, target: edge.target });
      }
      const nodes = h("div", { class: "nodes" });
      for (const node of layout.nodes) nodes.append(this.createBox(node).el);
      this.canvas.replaceChildren(svg, nodes);
    }

    setZoom(zoom) {
      if (!this.layoutSize) return;
      this.zoom = Math.min(2, Math.max(0.05, zoom));
      this.canvas.style.transform = this.zoom === 1 ? "" : `scale(${this.zoom})`;
      this.sizer.style.width = `${this.layoutSize[0] * this.zoom}px`;
      this.sizer.style.height = `${this.layoutSize[1] * this.zoom}px`;
    }

    fitZoom() {
      if (!this.layoutSize) return 1;
      const [w, hgt] = this.layoutSize;
      const fit = Math.min((this.scroller.clientWidth - 4) / w, (this.scroller.clientHeight - 4) / hgt);
      return Math.min(1, fit);
    }

    /** A job's box; its text and status come with the run's jobs (`apply`). */
    createBox(node) {
      const box = { job: null, key: "" };
      box.icon = h("span", { class: "job-icon" });
      box.name = h("span", { class: "job-name", text: node.id });
      box.time = h("span", { class: "job-time" });
      box.attempt = h("span", { class: "job-attempt", hidden: true });
      box.labels = h("span", { class: "job-labels" });
      box.wait = h("span", { class: "job-wait", hidden: true });
      box.el = h("button", { type: "button", class: "job", "data-job-id": node.id, disabled: true },
        h("span", { class: "job-head" }, box.icon, box.name),
        h("span", { class: "job-meta" }, box.time, box.attempt, box.labels),
        box.wait);
      Object.assign(box.el.style, {
        left: `${node.x}px`,
        top: `${node.y}px`,
        width: `${node.width}px`,
        height: `${node.height}px`,
      });
      box.el.addEventListener("click", () => this.select(node.id));
      this.boxes.set(node.id, box);
      return box;
    }

    async refresh() {
      const [workflow] = await Promise.all([
        api(`/api/workflows/${enc(this.workflowId)}/status`),
        this.workers.refresh().catch(() => false),
      ]);
      if (this.stopped) return false;
      this.workflow = workflow;
      this.applyHeader(workflow);
      await this.refreshSchedules(workflow).catch((err) => console.warn(err));
      if (this.stopped) return false;
      const latest = workflow.run || null;
      const target = this.runNumber ?? (latest ? latest.number : null);
      const isLatest = !!latest && target === latest.number;
      let jobs = workflow.jobs;
      let status = latest ? latest.status : null;
      if (target !== null) {
        // The latest run's jobs come with the status; its record (times, inputs) is
        // fetched when its status changes. Another run is fetched while it is going.
        const key = isLatest ? `${latest.number}:${latest.status}` : "";
        const record = this.record && this.record.number === target ? this.record : null;
        // A notification still being sent is asked after every few seconds.
        const sending = !!record && (record.notifications || []).some((n) => n.state === "pending")
          && Date.now() - this.recordAt > 5000;
        const stale = !record || sending
          || (isLatest ? this.recordKey !== key : RUN_ACTIVE.has(record.status));
        // A run the server said does not exist is not asked for again, unless it is
        // the latest now (a link to a run opened before it started).
        const missing = this.recordErrorFor === target && !isLatest;
        if (stale && !missing) {
          try {
            this.record = await api(`/api/workflows/${enc(this.workflowId)}/runs/${enc(target)}`);
            this.recordAt = Date.now();
            this.recordKey = key;
            this.recordError = "";
            this.recordErrorFor = null;
            this.history.upsert(this.record);
          } catch (err) {
            if (err.status !== 404 && err.status !== 400) throw err;
            this.record = null;
            this.recordError = err.status === 404 ? `Run #${target} does not exist (or is no longer kept).` : err.message;
            this.recordErrorFor = target;
          }
          if (this.stopped) return false;
        }
        if (this.recordErrorFor !== target) this.recordError = "";
        if (!isLatest) {
          jobs = this.record && this.record.number === target ? this.record.jobs : null;
          status = jobs ? this.record.status : null;
        }
      }
      await this.history.refresh(latest).catch((err) => console.warn(err));
      if (this.stopped) return false;
      if (jobs && !this.drawnFor(jobs)) {
        // A matrix expands into other jobs in each run: draw the run's own graph.
        const query = target === null ? "" : `?run=${enc(target)}`;
        const layout = await api(`/api/workflows/${enc(this.workflowId)}/layout${query}`);
        if (this.stopped) return false;
        this.layout = layout;
        this.boxes = new Map();
        this.edges = [];
        this.build(layout);
        this.shown = undefined; // every box is new: apply the run in full
      }
      const changed = this.applyRun(target, status, jobs);
      return changed || RUN_ACTIVE.has(status) || this.history.active;
    }

    applyHeader(workflow) {
      setText(this.title, workflow.name);
      setText(this.trigger, workflow.trigger || "");
      this.trigger.hidden = !workflow.trigger;
      this.runButton.setAttribute("aria-label", `Run workflow ${workflow.name}`);
    }

    /** "next scheduled run in 5 minutes", for a workflow with `on.schedule` (asked for
     * at most every 30 s, and once the shown time has passed). */
    async refreshSchedules(workflow) {
      if (!/\bschedule\b/.test(workflow.trigger || "")) return;
      const due = this.nextRunAt && this.nextRunAt <= Date.now();
      if (!due && Date.now() - this.schedulesAt < 30000) return;
      this.schedulesAt = Date.now();
      const schedules = await api(`/api/workflows/${enc(this.workflowId)}/schedules`);
      if (this.stopped || !schedules.length) return;
      const next = schedules.reduce((a, b) => (b.next_at_ms < a.next_at_ms ? b : a));
      this.nextRunAt = next.next_at_ms;
      this.nextRunWhen = timeElement(next.next_at_ms);
      this.nextRun.replaceChildren("next scheduled run ", this.nextRunWhen,
        h("span", { class: "trigger", text: ` (${next.cron}, ${next.timezone})` }));
      this.nextRun.hidden = false;
    }

    /** Draw run `target` (`status`, `jobs`); true when anything changed. */
    applyRun(target, status, jobs) {
      const workflow = this.workflow;
      document.title = `${workflow.name}${target === null ? "" : ` · run #${target}`} · workflow-graph`;
      this.history.select(target);
      let changed = false;
      if (target !== this.shown) {
        this.shown = target;
        this.summary = "";
        for (const box of this.boxes.values()) box.key = "";
        changed = true;
      }
      this.message.hidden = !!jobs;
      setText(this.message, jobs ? "" : this.recordError || "Loading…");
      this.dagArea.hidden = !jobs;
      this.dagBar.hidden = !jobs;
      this.runBar.hidden = false;
      this.updateRunBar(target, status, jobs);
      if (!jobs) {
        if (this.selected) this.select(null);
        return changed;
      }
      const key = JSON.stringify([target, counts(jobs)]);
      if (key !== this.summary) {
        this.summary = key;
        this.chips.replaceChildren(...(target === null ? [] : summaryChips(jobs)));
        changed = true;
      }
      const statusOf = new Map();
      for (const job of jobs) {
        statusOf.set(job.id, job.status);
        const box = this.boxes.get(job.id);
        if (!box) continue;
        const jobKey = JSON.stringify([job.status, job.attempt, job.started_at, job.duration_secs, job.name, job.required_labels, job.waiting]);
        box.job = job;
        if (jobKey === box.key) continue;
        box.key = jobKey;
        changed = true;
        box.el.disabled = false;
        box.el.dataset.status = job.status;
        // Before the first run every job reads `queued`, though nothing waits for a worker.
        const look = target === null ? "never" : job.status;
        box.el.className = `job status-${look}${this.selected === job.id ? " selected" : ""}`;
        box.el.title = `${job.name}\n${job.command}`;
        if (box.icon.dataset.status !== look) {
          box.icon.dataset.status = look;
          box.icon.replaceChildren(statusIcon(look));
        }
        setText(box.name, job.name);
        if (box.labels.dataset.key !== job.required_labels.join("\n")) {
          box.labels.dataset.key = job.required_labels.join("\n");
          box.labels.replaceChildren(...job.required_labels.map((l) => h("span", { class: "label", text: l })));
        }
        box.attempt.hidden = !job.attempt;
        setText(box.attempt, job.attempt ? `attempt ${job.attempt + 1}/${job.max_retries + 1}` : "");
        const waiting = target === null ? "" : waitingText(job.waiting);
        box.wait.hidden = !waiting;
        setText(box.wait, waiting);
        if (waiting) box.el.title += `\n${waiting}`;
        this.updateTime(box);
        const retry = job.attempt ? `, attempt ${job.attempt + 1}` : "";
        const state = target === null ? "not run yet" : job.status;
        const why = waiting ? `, ${waiting}` : "";
        box.el.setAttribute("aria-label", `Job ${job.name}: ${state}${retry}${why}. Show logs`);
      }
      if (this.panel.jobId) {
        const job = jobs.find((j) => j.id === this.panel.jobId);
        if (!job) this.select(null);
        else if (this.panel.run !== target) this.panel.open(job, target); // another run: its own log
        else this.panel.update(job);
      }
      for (const edge of this.edges) {
        const src = statusOf.get(edge.source);
        const dst = statusOf.get(edge.target);
        const cls = `edge from-${src} to-${dst}${this.selected && (this.selected === edge.source || this.selected === edge.target) ? " highlight" : ""}`;
        if (edge.el.getAttribute("class") !== cls) edge.el.setAttribute("class", cls);
      }
      return changed;
    }

    updateRunBar(target, status, jobs) {
      const record = this.record && this.record.number === target ? this.record : null;
      const key = JSON.stringify([target, status, this.recordError, jobs && counts(jobs),
        record && [record.status, record.started_at_ms, record.finished_at_ms, record.reason]]);
      if (key === this.runBarKey) return;
      this.runBarKey = key;
      this.runWhen = null;
      this.runDuration = null;
      const finished = !!status && !RUN_ACTIVE.has(status);
      if (target === null) {
        setText(this.runTitle, "Not run yet");
        this.runStatus.replaceChildren(neverRunChip());
        this.runMeta.replaceChildren(h("span", { text: "Start it with “Run workflow”." }));
      } else {
        setText(this.runTitle, `Run #${target}`);
        this.runStatus.replaceChildren(...(status ? [statusChip(status)] : []));
        const meta = [];
        if (status === "queued") {
          const group = this.layout && this.layout.concurrency_group;
          meta.push(h("span", { class: "queued-hint" },
            "Waiting for its concurrency group", group ? [" ", h("code", { text: group })] : null));
        }
        if (record) {
          meta.push(h("span", {}, "trigger ", h("strong", { class: "run-trigger", text: record.trigger })));
          meta.push(h("span", {}, "created ", (this.runWhen = timeElement(record.created_at_ms))));
          this.runDuration = h("span", { class: "run-duration" });
          meta.push(this.runDuration);
          if (record.rerun_of) {
            meta.push(h("span", {}, "re-run of ",
              h("a", { href: `/workflows/${enc(this.workflowId)}/runs/${record.rerun_of}`, "data-route": true, text: `#${record.rerun_of}` })));
          }
          if (record.reason) meta.push(h("span", { class: "run-reason", text: record.reason }));
          for (const note of record.notifications || []) meta.push(notificationText(note));
        } else if (this.recordError) meta.push(h("span", { text: this.recordError }));
        this.runMeta.replaceChildren(...meta); // the CSS puts the dots between them
      }
      const inputs = record ? Object.entries(record.inputs || {}) : [];
      this.runInputs.hidden = !inputs.length;
      this.runInputs.replaceChildren(h("span", { class: "muted", text: "Inputs " }),
        ...inputs.map(([name, value]) => h("code", { class: "run-input", text: `${name}=${typeof value === "string" ? value : JSON.stringify(value)}` })));
      const active = RUN_ACTIVE.has(status);
      this.cancelRunButton.hidden = !active;
      this.cancelRunButton.enable(active);
      this.cancelRunButton.setAttribute("aria-label", `Cancel run #${target}`);
      const failed = finished && !!jobs && jobs.some((j) => RERUNNABLE.has(j.status));
      this.rerunFailedButton.hidden = !failed;
      this.rerunFailedButton.enable(failed);
      this.rerunAllButton.hidden = !finished;
      this.rerunAllButton.enable(finished);
      this.tickRunBar();
    }

    tickRunBar() {
      const record = this.record && this.record.number === this.shown ? this.record : null;
      if (this.runWhen) this.runWhen.tick();
      if (this.nextRunWhen) this.nextRunWhen.tick();
      if (this.runDuration && record) {
        const took = runDuration(record);
        let text = "";
        if (took) text = record.finished_at_ms ? `took ${took}` : `running for ${took}`;
        setText(this.runDuration, text);
        this.runDuration.hidden = !text;
      }
    }

    updateTime(box) {
      const job = box.job;
      let text = "";
      if (job.status === "running" && job.started_at) text = formatSecs((Date.now() - job.started_at) / 1000);
      else if (job.duration_secs !== null && job.duration_secs !== undefined && TERMINAL.has(job.status)) {
        text = formatSecs(job.duration_secs);
      }
      setText(box.time, text);
    }

    tickClock() {
      for (const box of this.boxes.values()) if (box.job && box.job.status === "running") this.updateTime(box);
      this.tickRunBar();
      this.history.tick();
    }

    select(jobId) {
      const previous = this.selected;
      this.selected = jobId;
      if (previous && this.boxes.has(previous)) this.boxes.get(previous).el.classList.remove("selected");
      if (!jobId) {
        this.panel.close();
        if (previous && this.boxes.has(previous)) this.boxes.get(previous).el.focus();
      } else {
        const box = this.boxes.get(jobId);
        box.el.classList.add("selected");
        this.panel.open(box.job, this.shown);
      }
      for (const edge of this.edges) {
        edge.el.classList.toggle("highlight", !!jobId && (edge.source === jobId || edge.target === jobId));
      }
    }
  }

  function edgePath(points) {
    const [x0, y0] = points[0];
    let d = `M${x0},${y0}`;
    for (let i = 1; i < points.length; i += 1) {
      const [x1, y1] = points[i - 1];
      const [x2, y2] = points[i];
      const mx = (x1 + x2) / 2;
      d += ` C${mx},${y1} ${mx},${y2} ${x2},${y2}`;
    }
    return d;
  }

  // --- routing -------------------------------------------------------------

  let view = null;

  /** The workflow id and run number (null: none) of a page path, or null for the list. */
  function parsePath(pathname) {
    const match = pathname.match(/^\/workflows\/([^/]+)(?:\/runs\/([^/]+))?\/?$/);
    if (!match) return null;
    const decode = (part) => {
      try {
        return decodeURIComponent(part);
      } catch {
        return part;
      }
    };
    let run = null;
    if (match[2] !== undefined) {
      const raw = decode(match[2]);
      run = /^\d{1,15}$/.test(raw) ? Number(raw) : raw; // anything else: the server says why not
    }
    return { id: decode(match[1]), run };
  }

  function route() {
    const target = parsePath(location.pathname);
    if (target && view instanceof WorkflowView && view.workflowId === target.id) {
      view.showRun(target.run, false); // another run of the same workflow: keep the drawing
      return;
    }
    if (view) view.destroy();
    const main = document.getElementById("main");
    view = target ? new WorkflowView(target.id, target.run) : new ListView();
    view.mount(main);
    if (location.hash === "#workers") {
      requestAnimationFrame(() => document.getElementById("workers").scrollIntoView());
    }
  }

  function navigate(href) {
    const url = new URL(href, location.href);
    if (url.pathname === location.pathname && url.search === location.search && url.hash) {
      history.replaceState(null, "", url.href);
      const target = document.getElementById(url.hash.slice(1));
      if (target) target.scrollIntoView();
      return;
    }
    const sameWorkflow = view instanceof WorkflowView && parsePath(url.pathname)?.id === view.workflowId;
    history.pushState(null, "", url.href);
    route();
    if (!sameWorkflow) window.scrollTo(0, 0);
  }

  document.addEventListener("click", (event) => {
    const link = event.target.closest && event.target.closest("a[data-route]");
    if (!link || event.defaultPrevented || event.button !== 0) return;
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    navigate(link.getAttribute("href"));
  });

  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || document.querySelector("dialog[open]")) return;
    if (view instanceof WorkflowView && view.selected) view.select(null);
  });

  window.addEventListener("popstate", route);
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", route);
  else route();
})();
