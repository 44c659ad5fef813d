// The page's entry point: tabs, the API-key field, and the timers that keep the views live.

import { initAdapters, loadAdapters } from "./adapters.js";
import { apiKey } from "./api.js";
import { initCompare, loadModels } from "./compare.js";
import { pollServer } from "./server.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
let view = "compare";

function show(name) {
  view = name;
  for (const tab of document.querySelectorAll("#tabs button")) {
    tab.setAttribute("aria-selected", String(tab.dataset.view === name));
  }
  $("compare-view").hidden = name !== "compare";
  $("adapters-view").hidden = name !== "adapters";
  if (name === "compare") loadModels();
  else loadAdapters();
}

function showKeyState() {
  $("key-state").textContent = apiKey.get() ? "key in use (this tab only)" : "no key";
  $("key").value = "";
  $("key").placeholder = apiKey.get() ? "••••••••" : "none";
}

function initKey() {
  const use = () => apiKey.set($("key").value.trim());
  $("key-use").addEventListener("click", use);
  $("key").addEventListener("keydown", (event) => { if (event.key === "Enter") use(); });
  $("key-forget").addEventListener("click", () => apiKey.set(""));
  document.addEventListener("keychange", () => {
    showKeyState();
    loadModels();
    loadAdapters();
  });
  showKeyState();
}

function tick() {
  if (document.hidden) return;
  pollServer();
  if (view === "adapters") loadAdapters();
}

// A file dropped outside the drop zone must not make the browser navigate away to it.
for (const type of ["dragover", "drop"]) window.addEventListener(type, (event) => event.preventDefault());
for (const tab of document.querySelectorAll("#tabs button")) {
  tab.addEventListener("click", () => show(tab.dataset.view));
}
document.addEventListener("adapterschange", loadModels);
initKey();
initCompare();
initAdapters();
show("compare");
tick();
setInterval(tick, POLL_MS);
