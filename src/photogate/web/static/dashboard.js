// The fleet dashboard: live state by Server-Sent Events (/dashboard/events), actions
// behind a confirmation. The session is an HttpOnly cookie: this script never sees a token.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let state = null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
    return node;
  }

  const fmtSeconds = (s) => (s == null ? "–" : s < 10 ? s.toFixed(2) + " s" : s.toFixed(1) + " s");
  const fmtMps = (v) => (v == null ? "–" : v.toFixed(v < 10 ? 2 : 1));

  function ago(ts, now) {
    if (!ts) return "never";
    const s = Math.max(0, now - ts);
    if (s < 60) return s.toFixed(0) + " s ago";
    if (s < 3600) return (s / 60).toFixed(0) + " min ago";
    return (s / 3600).toFixed(1) + " h ago";
  }

  function toast(text) {
    const t = $("toast");
    t.textContent = text;
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
  }

  function confirmAction(text) {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.showModal();
    });
  }

  async function act(path, body, done) {
    const resp = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Photogate-Dashboard": "1" },
      body: JSON.stringify(body || {}),
      credentials: "same-origin",
    });
    if (resp.status === 401) { location.reload(); return; }
    let answer = {};
    try { answer = await resp.json(); } catch (e) { /* empty */ }
    if (!resp.ok) { toast("Refused: " + (answer.error || resp.status)); return; }
    toast(done);
    await refresh();
  }

  function renderNodes(s) {
    const body = $("nodes").tBodies[0];
    body.replaceChildren();
    $("no-nodes").hidden = s.nodes.length > 0;
    for (const n of s.nodes) {
      // The node's own speed when it reports one (MP/s per slot), else what it completed lately.
      const mps = fmtMps(n.reported_mps != null ? n.reported_mps : n.mps);
      const button = n.draining
        ? el("button", { class: "secondary", type: "button", textContent: "Undrain" })
        : el("button", { class: "secondary", type: "button", textContent: "Drain" });
      button.dataset.action = n.draining ? "undrain" : "drain";
      button.addEventListener("click", async () => {
        const verb = n.draining ? "undrain" : "drain";
        const text = n.draining
          ? "Undrain " + n.server_id + "? It gets new photos again."
          : "Drain " + n.server_id + "? It gets no new photos; the ones it holds finish.";
        if (await confirmAction(text)) {
          await act("/dashboard/api/nodes/" + encodeURIComponent(n.server_id) + "/" + verb, {}, n.server_id + ": " + verb + "ed");
        }
      });
      body.append(el("tr", { "data-node": n.server_id },
        el("td", {}, el("strong", {}, n.server_id)),
        el("td", {}, n.address),
        el("td", { title: n.last_error || "" }, el("span", { class: "pill " + n.status }, n.status)),
        el("td", {}, n.busy + " / " + n.slots),
        el("td", { title: "completed over the last minute: " + fmtMps(n.mps) + " MP/s" }, mps),
        el("td", {}, ago(n.last_check, s.time)),
        el("td", { class: n.consecutive_failures ? "err" : "" }, String(n.consecutive_failures)),
        el("td", {}, n.completed + " / " + n.failed),
        el("td", {}, button)));
    }
  }

  function renderTasks(s) {
    const body = $("tasks").tBodies[0];
    body.replaceChildren();
    for (const t of s.tasks) {
      body.append(el("tr", {},
        el("td", { title: t.task_id }, el("code", {}, t.task_id.slice(0, 8))),
        el("td", {}, el("span", { class: "pill " + t.status }, t.status)),
        el("td", {}, t.server_id || "–"),
        el("td", {}, t.width + "×" + t.height),
        el("td", {}, String(t.attempts)),
        el("td", {}, fmtSeconds(t.queued_s)),
        el("td", {}, fmtSeconds(t.processing_s)),
        el("td", {}, fmtSeconds(t.total_s)),
        el("td", { class: "eta" }, t.eta_seconds == null ? "–" :
          (t.queue_position != null ? "#" + t.queue_position + ", " : Math.round(t.progress * 100) + "%, ") +
          fmtSeconds(t.eta_seconds)),
        el("td", { class: "err" }, t.error || "")));
    }
  }

  function render(s) {
    state = s;
    const sum = s.summary;
    const serving = s.nodes.filter((n) => n.healthy && !n.draining).length;
    $("t-serving").textContent = serving + " / " + sum.total;
    $("t-queue").textContent = String(s.queue_depth);
    $("t-inflight").textContent = s.in_flight + " / " + sum.slots;
    $("t-mps").textContent = fmtMps(s.throughput_mps) + " MP/s";
    const select = $("strategy");
    if (document.activeElement !== select) {
      select.replaceChildren(...s.strategies.map((name) => el("option", { value: name, textContent: name })));
      if (!s.strategies.includes(s.strategy)) select.append(el("option", { value: s.strategy, textContent: s.strategy }));
      select.value = s.strategy;
    }
    $("multi-state").textContent = s.multi_backend ? "On" : "Off";
    $("multi").textContent = s.multi_backend ? "Turn off" : "Turn on";
    renderNodes(s);
    renderTasks(s);
  }

  async function refresh() {
    const resp = await fetch("/dashboard/state", { cache: "no-store", credentials: "same-origin" });
    if (resp.status === 401) { location.reload(); return; }
    if (resp.ok) render(await resp.json());
  }

  $("strategy").addEventListener("change", async (e) => {
    const name = e.target.value;
    if (state && name !== state.strategy && await confirmAction("Switch the balancing strategy to " + name + "?")) {
      await act("/dashboard/api/strategy", { strategy: name }, "strategy: " + name);
    } else if (state) {
      e.target.value = state.strategy;
    }
    e.target.blur();
  });

  $("multi").addEventListener("click", async () => {
    if (!state) return;
    const on = !state.multi_backend;
    const text = on ? "Turn multi-backend mode on? Work goes to every healthy node."
                    : "Turn multi-backend mode off? All work goes to one primary node.";
    if (await confirmAction(text)) await act("/dashboard/api/multi-backend", { enabled: on }, "multi-backend " + (on ? "on" : "off"));
  });

  function connect() {
    const live = $("live");
    const source = new EventSource("/dashboard/events");
    source.addEventListener("state", (e) => {
      render(JSON.parse(e.data));
      live.textContent = "live";
      live.className = "pill live";
    });
    source.onerror = () => {
      live.textContent = "reconnecting…";
      live.className = "pill stale";
      // A 401 ends the stream for good: check whether the session expired.
      if (source.readyState === EventSource.CLOSED) {
        refresh().finally(() => setTimeout(connect, 3000));
      }
    };
  }

  refresh();
  connect();
})();
