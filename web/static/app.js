// workflow-graph dashboard. Plain JavaScript, no build step, public REST API only.
//
// Safety rule of this file: text from the API (names, commands, log lines, errors)
// only ever reaches the page through textContent, createTextNode or setAttribute.
// Nothing here assigns innerHTML.
"use strict";

(() => {
  const STATUSES = ["queued", "running", "success", "failure", "skipped", "cancelled"];
  const TERMINAL = new Set(["success", "failure", "skipped", "cancelled"]);
  const TOKEN_KEY = "wfg.apiToken";
  const PAGE_SIZES = [25, 50, 100, 200];
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

  // --- workflow summaries ----------------------------------------------------

  function counts(jobs) {
    const c = Object.fromEntries(STATUSES.map((st) => [st, 0]));
    for (const job of jobs) c[job.status] = (c[job.status] || 0) + 1;
    return c;
  }

  /** A run is visibly in progress: something runs, or some jobs are done while others wait. */
  function inProgress(jobs) {
    const c = counts(jobs);
    return c.running > 0 || (c.queued > 0 && c.queued < jobs.length && c.cancelled === 0);
  }

  function overall(jobs) {
    const c = counts(jobs);
    if (inProgress(jobs)) return "running";
    if (c.failure) return "failure";
    if (c.cancelled) return "cancelled";
    if (jobs.length && c.success === jobs.length) return "success";
    if (c.queued === jobs.length) return "queued";
    return "skipped";
  }

  function summaryChips(jobs) {
    const c = counts(jobs);
    const chips = STATUSES.filter((st) => c[st]).map((st) =>
      h("span", { class: `chip status-${st}`, title: `${c[st]} ${st}` }, statusIcon(st), `${c[st]} ${st}`),
    );
    if (!jobs.length) chips.push(h("span", { class: "chip", text: "no jobs" }));
    return chips;
  }

  function summaryKey(jobs) {
    const c = counts(jobs);
    return STATUSES.map((st) => c[st]).join(",");
  }

  async function runWorkflow(workflow, after) {
    try {
      await api(`/api/workflows/${enc(workflow.id)}/run`, { method: "POST" });
      toast(`Run started: ${workflow.name}`);
    } catch (err) {
      toast(err.status === 409 ? `${workflow.name}: a run is already active` : `Run failed: ${err.message}`, "error");
    }
    after();
  }

  async function cancelWorkflow(workflow, after) {
    try {
      await api(`/api/workflows/${enc(workflow.id)}/cancel`, { method: "POST" });
      toast(`Cancelled: ${workflow.name}`);
    } catch (err) {
      toast(`Cancel failed: ${err.message}`, "error");
    }
    after();
  }

  function actionButtons(getWorkflow, after) {
    const run = h("button", { type: "button", class: "btn primary", text: "Run" });
    const cancel = h("button", { type: "button", class: "btn", text: "Cancel" });
    run.addEventListener("click", async () => {
      run.disabled = true;
      await runWorkflow(getWorkflow(), after);
      run.disabled = false;
    });
    cancel.addEventListener("click", async () => {
      cancel.disabled = true;
      await cancelWorkflow(getWorkflow(), after);
      cancel.disabled = false;
    });
    const label = (workflow) => {
      run.setAttribute("aria-label", `Run workflow ${workflow.name}`);
      cancel.setAttribute("aria-label", `Cancel workflow ${workflow.name}`);
    };
    return { run, cancel, label };
  }

  // --- workers -------------------------------------------------------------

  class WorkersSection {
    constructor() {
      this.rows = new Map();
      this.list = h("ul", { class: "workers", role: "list" });
      this.empty = h("p", { class: "empty", text: "No workers registered. Start one with: wfg worker --server URL" });
      this.el = h("section", { class: "card", id: "workers", "aria-labelledby": "workers-title" },
        h("h2", { id: "workers-title", text: "Workers" }), this.empty, this.list);
    }

    async refresh() {
      const workers = await api("/api/workers");
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
      this.empty = h("p", { class: "empty", hidden: true });
      main.replaceChildren(
        h("section", { class: "card", "aria-labelledby": "workflows-title" },
          h("div", { class: "section-head" },
            h("h1", { id: "workflows-title", text: "Workflows" }),
            h("div", { class: "controls" }, filter, size)),
          this.empty,
          this.list,
          h("div", { class: "pager" }, this.prev, this.pageInfo, this.next)),
        this.workers.el,
      );
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
        api(`/api/workflows?${query}`),
        this.workers.refresh().catch(() => false),
      ]);
      if (!page.length && this.offset > 0) {
        // The page emptied (say, a filter now matches less): step back.
        this.offset = Math.max(0, this.offset - this.limit);
        this.changed();
        return true;
      }
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
        busy ||= inProgress(wf.jobs);
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
      row.actions = actionButtons(() => row.workflow, () => this.poller.kick());
      row.el = h("li", { class: "wf-row", "data-workflow-id": wf.id },
        h("div", { class: "wf-main" }, row.name, row.trigger),
        h("div", { class: "wf-status" }, row.chips, row.jobsCount),
        h("div", { class: "wf-actions" }, row.actions.run, row.actions.cancel));
      this.rows.set(wf.id, row);
      return row;
    }

    updateRow(row) {
      const wf = row.workflow;
      setText(row.name, wf.name);
      setText(row.trigger, wf.trigger || "");
      row.trigger.hidden = !wf.trigger;
      setText(row.jobsCount, `${wf.jobs.length} job${wf.jobs.length === 1 ? "" : "s"}`);
      row.el.dataset.status = overall(wf.jobs);
      const key = summaryKey(wf.jobs);
      if (row.summary !== key) {
        row.summary = key;
        row.chips.replaceChildren(...summaryChips(wf.jobs));
      }
      row.actions.label(wf);
    }
  }

  // --- the log panel -------------------------------------------------------

  class LogPanel {
    constructor(workflowId, onClose) {
      this.workflowId = workflowId;
      this.job = null;
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

    open(job) {
      this.close();
      this.job = job;
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
      if (wasDone && !isDone) this.start(); // a new run: its logs start empty
      else if (!wasDone && isDone && !this.source) this.fetchAll();
      else if (before.attempt !== job.attempt && !this.source) this.start();
    }

    base() {
      return `/api/workflows/${enc(this.workflowId)}/jobs/${enc(this.job.id)}/logs`;
    }

    clear() {
      this.pending = [];
      this.chars = 0;
      this.received = 0;
      this.log.replaceChildren();
      this.placeholder.hidden = false;
    }

    start() {
      this.stopStream();
      this.clear();
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
        const wf = await api(`/api/workflows/${enc(this.workflowId)}/status`);
        job = wf.jobs.find((j) => j.id === this.job.id) || job;
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

    flush() {
      this.flushTimer = null;
      if (!this.pending.length) return;
      const log = this.log;
      const follow = log.scrollHeight - log.scrollTop - log.clientHeight < 24;
      for (const chunk of this.pending) {
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

  // --- one workflow: the DAG -----------------------------------------------

  class WorkflowView {
    constructor(workflowId) {
      this.workflowId = workflowId;
      this.workflow = null;
      this.boxes = new Map();
      this.edges = [];
      this.workers = new WorkersSection();
      this.panel = new LogPanel(workflowId, () => this.select(null));
    }

    mount(main) {
      this.title = h("h1", { text: this.workflowId });
      this.trigger = h("span", { class: "trigger" });
      this.chips = h("div", { class: "chips" });
      this.summary = "";
      this.actions = actionButtons(() => this.workflow, () => this.poller.kick());
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
      this.message = h("p", { class: "muted", text: "Loading…" });
      main.replaceChildren(
        h("section", { class: "card" },
          h("div", { class: "section-head wf-head" },
            h("div", {},
              h("a", { href: "/", "data-route": true, class: "back", text: "‹ All workflows" }),
              this.title, this.trigger),
            h("div", { class: "wf-actions" }, this.actions.run, this.actions.cancel)),
          h("div", { class: "dag-bar" }, this.chips, this.zoomBar),
          this.message,
          h("div", { class: "dag-area" }, this.scroller, this.panel.el)),
        this.workers.el,
      );
      this.actions.run.disabled = this.actions.cancel.disabled = true;
      this.load();
      this.clock = setInterval(() => this.tickClock(), 1000);
    }

    destroy() {
      if (this.poller) this.poller.stop();
      clearInterval(this.clock);
      this.panel.close();
      this.stopped = true;
    }

    async load() {
      let workflow;
      let layout;
      try {
        [workflow, layout] = await Promise.all([
          api(`/api/workflows/${enc(this.workflowId)}/status`),
          api(`/api/workflows/${enc(this.workflowId)}/layout`),
        ]);
      } catch (err) {
        setText(this.message, err.status === 404 ? `No workflow with id “${this.workflowId}”.` : `Could not load: ${err.message}`);
        if (err.status !== 404 && !this.stopped) setTimeout(() => !this.stopped && this.load(), 3000);
        return;
      }
      if (this.stopped) return;
      this.message.hidden = true;
      this.actions.run.disabled = this.actions.cancel.disabled = false;
      this.build(layout, workflow);
      this.apply(workflow);
      this.workers.refresh().catch(() => false);
      this.poller = new Poller(() => this.refresh(), { fast: 1000, slow: 10000 });
      setTimeout(() => this.poller.start(), 1000);
    }

    build(layout, workflow) {
      const jobs = new Map(workflow.jobs.map((j) => [j.id, j]));
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
      for (const node of layout.nodes) {
        const job = jobs.get(node.id);
        if (!job) continue;
        const box = this.createBox(job, node);
        nodes.append(box.el);
      }
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

    createBox(job, node) {
      const box = { job: null, key: "" };
      box.icon = h("span", { class: "job-icon" });
      box.name = h("span", { class: "job-name", text: job.name });
      box.time = h("span", { class: "job-time" });
      box.attempt = h("span", { class: "job-attempt", hidden: true });
      box.labels = h("span", { class: "job-labels" },
        job.required_labels.map((l) => h("span", { class: "label", text: l })));
      box.el = h("button", { type: "button", class: "job", "data-job-id": job.id, title: `${job.name}\n${job.command}` },
        h("span", { class: "job-head" }, box.icon, box.name),
        h("span", { class: "job-meta" }, box.time, box.attempt, box.labels));
      Object.assign(box.el.style, {
        left: `${node.x}px`,
        top: `${node.y}px`,
        width: `${node.width}px`,
        height: `${node.height}px`,
      });
      box.el.addEventListener("click", () => this.select(job.id));
      this.boxes.set(job.id, box);
      return box;
    }

    async refresh() {
      const [workflow] = await Promise.all([
        api(`/api/workflows/${enc(this.workflowId)}/status`),
        this.workers.refresh().catch(() => false),
      ]);
      if (this.stopped) return false;
      const changed = this.apply(workflow);
      return changed || inProgress(workflow.jobs);
    }

    /** Patch the page to `workflow`'s state; true when anything changed. */
    apply(workflow) {
      this.workflow = workflow;
      document.title = `${workflow.name} · workflow-graph`;
      setText(this.title, workflow.name);
      setText(this.trigger, workflow.trigger || "");
      this.actions.label(workflow);
      let changed = false;
      const key = summaryKey(workflow.jobs);
      if (key !== this.summary) {
        this.summary = key;
        this.chips.replaceChildren(...summaryChips(workflow.jobs));
        changed = true;
      }
      const statusOf = new Map();
      for (const job of workflow.jobs) {
        statusOf.set(job.id, job.status);
        const box = this.boxes.get(job.id);
        if (!box) continue;
        const jobKey = JSON.stringify([job.status, job.attempt, job.started_at, job.duration_secs, job.name]);
        box.job = job;
        if (jobKey === box.key) continue;
        box.key = jobKey;
        changed = true;
        box.el.dataset.status = job.status;
        box.el.className = `job status-${job.status}${this.selected === job.id ? " selected" : ""}`;
        if (box.icon.dataset.status !== job.status) {
          box.icon.dataset.status = job.status;
          box.icon.replaceChildren(statusIcon(job.status));
        }
        setText(box.name, job.name);
        box.attempt.hidden = !job.attempt;
        setText(box.attempt, job.attempt ? `attempt ${job.attempt + 1}/${job.max_retries + 1}` : "");
        this.updateTime(box);
        const retry = job.attempt ? `, attempt ${job.attempt + 1}` : "";
        box.el.setAttribute("aria-label", `Job ${job.name}: ${job.status}${retry}. Show logs`);
        if (this.panel.jobId === job.id) this.panel.update(job);
      }
      for (const edge of this.edges) {
        const src = statusOf.get(edge.source);
        const dst = statusOf.get(edge.target);
        const cls = `edge from-${src} to-${dst}${this.selected && (this.selected === edge.source || this.selected === edge.target) ? " highlight" : ""}`;
        if (edge.el.getAttribute("class") !== cls) edge.el.setAttribute("class", cls);
      }
      return changed;
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
        this.panel.open(box.job);
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

  function route() {
    if (view) view.destroy();
    const main = document.getElementById("main");
    const match = location.pathname.match(/^\/workflows\/([^/]+)\/?$/);
    let id = null;
    if (match) {
      try {
        id = decodeURIComponent(match[1]);
      } catch {
        id = match[1];
      }
    }
    view = id !== null ? new WorkflowView(id) : new ListView();
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
    history.pushState(null, "", url.href);
    route();
    window.scrollTo(0, 0);
  }

  document.addEventListener("click", (event) => {
    const link = event.target.closest && event.target.closest("a[data-route]");
    if (!link || event.defaultPrevented || event.button !== 0) return;
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    navigate(link.getAttribute("href"));
  });

  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && view instanceof WorkflowView && view.selected) view.select(null);
  });

  window.addEventListener("popstate", route);
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", route);
  else route();
})();
