// tuneset web UI: live job progress over Server-Sent Events, and the token view's side panel.
"use strict";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

function followJob(section) {
  const bar = document.getElementById("job-progress");
  const done = document.getElementById("job-done");
  const total = document.getElementById("job-total");
  const stage = document.getElementById("job-stage");
  const status = document.getElementById("job-status");
  const live = document.getElementById("job-live");
  const source = new EventSource(section.dataset.events);  // the /ui cookie goes with it
  source.addEventListener("progress", (e) => {
    const d = JSON.parse(e.data);
    if (d.stage !== undefined) stage.textContent = d.stage;
    if (typeof d.total === "number") { total.textContent = d.total; bar.max = Math.max(d.total, 1); }
    if (typeof d.done === "number") { done.textContent = d.done; bar.value = d.done; }
    bar.textContent = `${done.textContent} / ${total.textContent}`;
  });
  source.addEventListener("status", (e) => {
    const d = JSON.parse(e.data);
    status.innerHTML = "";
    const badge = document.createElement("span");
    badge.className = `status status-${d.status}`;
    badge.textContent = d.status;
    status.appendChild(badge);
    if (TERMINAL.has(d.status)) {
      source.close();
      live.textContent = `The job ${d.status}; loading its results…`;
      setTimeout(() => window.location.reload(), 600);  // the page then shows the files and report
    }
  });
  source.onerror = () => { live.textContent = "Reconnecting to the job's events…"; };
}

function tokenPanel(box) {
  // the segment under the pointer or the focus is described in the side panel next to it
  const browser = box.closest(".browser");
  const detail = browser.querySelector(".detail");
  const show = (seg) => {
    browser.querySelectorAll(".current").forEach((x) => x.classList.remove("current"));
    seg.classList.add("current");
    const row = browser.querySelector(`.side li[data-seg="${seg.dataset.seg}"]`);
    if (row) row.classList.add("current");
    const trained = seg.classList.contains("trained") ? "trained" : "not trained";
    detail.textContent = `Segment ${seg.dataset.seg} · ${seg.dataset.role || "template"} · ` +
      `${seg.dataset.tokens} tokens · ${trained}: ${seg.title}`;
  };
  box.querySelectorAll(".seg").forEach((seg) => {
    seg.addEventListener("mouseenter", () => show(seg));
    seg.addEventListener("focus", () => show(seg));
  });
  browser.querySelectorAll(".side li a").forEach((link) => {
    link.addEventListener("click", (e) => {
      const seg = document.getElementById(link.getAttribute("href").slice(1));
      if (seg) { e.preventDefault(); seg.focus(); }
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const section = document.querySelector("[data-events]");
  if (section) followJob(section);
  document.querySelectorAll(".tokens").forEach(tokenPanel);
});
