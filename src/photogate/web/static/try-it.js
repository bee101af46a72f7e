// The try-it page: upload, poll the task, compare before and after, download.
// The same public API the mini program uses: POST /api/v1/enhance, GET /api/v1/status/{id}.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("upload"), fileInput = $("file"), go = $("go");
  let beforeUrl = null;

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = false;
    go.disabled = false;
  }

  function setProgress(fraction, text) {
    $("progress").hidden = false;
    $("progress-bar").style.width = Math.round(fraction * 100) + "%";
    $("status").textContent = text;
  }

  async function errorText(resp) {
    try {
      const body = await resp.json();
      if (body && body.error) return body.error;
    } catch (e) { /* not JSON */ }
    return "HTTP " + resp.status;
  }

  // The gateway's estimate: the place in the queue, when it starts, how long until done.
  function describe(task) {
    const eta = task.eta_seconds;
    const about = (s) => (s < 10 ? s.toFixed(1) : Math.round(s)) + " s";
    if (task.status === "queued") {
      let words = "Waiting for a GPU server";
      if (task.queue_position != null) words += " (#" + task.queue_position + " in the queue)";
      if (task.estimated_start_seconds != null) words += ", starts in about " + about(task.estimated_start_seconds);
      return words;
    }
    const words = "Enhancing on " + (task.server_id || "a GPU server") + " " + Math.round((task.progress || 0) * 100) + "%";
    return eta == null ? words : words + ", about " + about(eta) + " left";
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  async function poll(taskId, started) {
    for (;;) {
      const resp = await fetch("/api/v1/status/" + encodeURIComponent(taskId), { cache: "no-store" });
      if (!resp.ok) throw new Error(await errorText(resp));
      const task = await resp.json();
      const seconds = ((Date.now() - started) / 1000).toFixed(1);
      if (task.status === "completed") return task;
      if (task.status === "failed") throw new Error(task.error || "the enhancement failed");
      setProgress(Math.max(task.progress || 0, 0.02), describe(task) + " · " + seconds + " s");
      await sleep(400);
    }
  }

  function setSlider(value) {
    $("after-clip").style.clipPath = "inset(0 0 0 " + value + "%)";
    $("divider").style.left = value + "%";
  }

  function loaded(img) {
    return img.complete && img.naturalWidth ? Promise.resolve() : new Promise((resolve, reject) => {
      img.onload = () => resolve();
      img.onerror = () => reject(new Error("the image could not be shown"));
    });
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = fileInput.files[0];
    if (!file) return;
    $("error").hidden = true;
    $("result").hidden = true;
    go.disabled = true;
    const started = Date.now();
    setProgress(0.02, "Uploading…");
    try {
      const data = new FormData();
      data.append("file", file);
      const resp = await fetch("/api/v1/enhance", { method: "POST", body: data });
      if (!resp.ok) throw new Error(await errorText(resp));
      const accepted = await resp.json();
      const task = await poll(accepted.task_id, started);
      setProgress(1, "Done in " + ((Date.now() - started) / 1000).toFixed(1) + " s");
      if (beforeUrl) URL.revokeObjectURL(beforeUrl);
      beforeUrl = URL.createObjectURL(file);
      const before = $("before"), after = $("after");
      before.src = beforeUrl;
      after.src = task.result_url;
      $("download").href = task.result_url;
      $("result").hidden = false;
      setSlider($("slider").value);
      await Promise.all([loaded(before), loaded(after)]);
      $("sizes").textContent = "Original " + before.naturalWidth + "×" + before.naturalHeight +
        " → enhanced " + after.naturalWidth + "×" + after.naturalHeight;
      $("result").dataset.ready = "1";
    } catch (e) {
      showError(e.message || String(e));
    } finally {
      go.disabled = false;
    }
  });

  $("slider").addEventListener("input", (e) => setSlider(e.target.value));
})();
