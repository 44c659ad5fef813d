// Adapters: the list (rank, alpha, targets, owner, version, where each one is now), refreshed
// live; upload by drag and drop or the file input (multipart to /v1/adapters with progress;
// the server's 4xx message shown as is); delete; merge/unmerge (admins; others see the 403).

import { call, getJSON, postForm } from "./api.js";
import { el, fill, say } from "./dom.js";

const $ = (id) => document.getElementById(id);
const ARCHIVE = /\.(zip|tar\.gz|tgz)$/i;
let picked = { config: null, weights: null, archive: null };

/** GET /v1/adapters into the table; a 401/403 hides the upload box and says why. */
export async function loadAdapters() {
  let body;
  try {
    body = await getJSON("v1/adapters");
  } catch (err) {
    fill($("adapter-table").tBodies[0]);
    fill($("refused"));
    $("drop").hidden = err.status === 401 || err.status === 403;
    say($("adapters-msg"), String(err), "error");
    return;
  }
  $("drop").hidden = false;
  say($("adapters-msg"), "");
  fill($("adapter-table").tBodies[0], body.data.length ? body.data.map(row)
    : el("tr", {}, el("td", { colspan: 9, class: "hint" }, "no adapters yet: drop one above")));
  fill($("refused"), body.refused.map((r) => el("li", { class: "refused" }, el("b", {}, r.id), ` refused: ${r.reason}`)));
}

/** Where the adapter is now: device slot, host memory, store; pinned, merged. */
function where(location) {
  if (!location) return [el("span", { class: "badge" }, "replaced")];
  const tags = [];
  if (location.device_slot != null) tags.push(el("span", { class: "badge device" }, `slot ${location.device_slot}`));
  if (location.host_memory) tags.push(el("span", { class: "badge host" }, "host"));
  if (location.store) tags.push(el("span", { class: "badge" }, "store"));
  if (location.pinned) tags.push(el("span", { class: "badge pinned" }, "pinned"));
  if (location.merged) tags.push(el("span", { class: "badge merged" }, "merged"));
  return tags;
}

function row(card) {
  const merged = card.location?.merged;
  return el("tr", { dataset: { adapter: card.id } },
    el("td", {}, el("b", {}, card.id)),
    el("td", { class: "num" }, card.rank),
    el("td", { class: "num" }, card.alpha),
    el("td", { class: "targets" }, card.target_modules.join(", ")),
    el("td", {}, card.owner ?? "public"),
    el("td", { class: "version", title: card.version }, card.version.slice(0, 12)),
    el("td", { class: "where" }, where(card.location)),
    el("td", { class: "desc" }, card.description ?? ""),
    el("td", { class: "actions" },
      el("button", { type: "button", class: "merge", onclick: () => act(card.id, merged ? "unmerge" : "merge") }, merged ? "unmerge" : "merge"),
      el("button", { type: "button", class: "delete", onclick: () => remove(card.id) }, "delete")));
}

/** An adapter's path; a tenant/name id keeps its slash (the route takes {name:path}). */
const path = (id) => `v1/adapters/${id.split("/").map(encodeURIComponent).join("/")}`;

async function act(id, verb) {
  try {
    await call(`${path(id)}/${verb}`, { method: "POST" });
    say($("action-msg"), `${id}: ${verb}d`, "ok");
  } catch (err) {
    say($("action-msg"), `${id}: ${err}`, "error");
  }
  await changed();
}

async function remove(id) {
  if (!window.confirm(`Delete adapter ${id}? Running requests finish; new ones get 404.`)) return;
  try {
    await call(path(id), { method: "DELETE" });
    say($("action-msg"), `${id}: deleted`, "ok");
  } catch (err) {
    say($("action-msg"), `${id}: ${err}`, "error");
  }
  await changed();
}

async function changed() {
  await loadAdapters();
  document.dispatchEvent(new Event("adapterschange"));
}

/** Sort dropped or chosen files into config / weights / archive by their names. */
function pick(files) {
  picked = { config: null, weights: null, archive: null };
  const unknown = [];
  for (const file of files) {
    if (file.name.endsWith(".json")) picked.config = file;
    else if (file.name.endsWith(".safetensors")) picked.weights = file;
    else if (ARCHIVE.test(file.name)) picked.archive = file;
    else unknown.push(file.name);
  }
  if (picked.archive && !$("up-name").value) $("up-name").value = picked.archive.name.replace(ARCHIVE, "");
  fill($("up-files"), [picked.config, picked.weights, picked.archive].filter(Boolean)
    .map((f) => el("li", {}, `${f.name} (${f.size.toLocaleString("en-US")} bytes)`)));
  const ready = picked.archive || (picked.config && picked.weights);
  if (unknown.length) say($("up-msg"), `not an adapter file: ${unknown.join(", ")}`, "error");
  else if (!ready) say($("up-msg"), "need adapter_config.json and adapter_model.safetensors, or one archive", "error");
  else say($("up-msg"), "");
  $("upload").disabled = !ready;
}

async function upload() {
  const form = new FormData();
  form.append("name", $("up-name").value.trim());
  if (picked.archive) form.append("archive", picked.archive);
  else {
    form.append("config", picked.config);
    form.append("weights", picked.weights);
  }
  if ($("up-desc").value.trim()) form.append("description", $("up-desc").value.trim());
  for (const flag of ["replace", "pinned", "public"]) form.append(flag, String($(`up-${flag}`).checked));
  const progress = $("up-progress");
  progress.hidden = false;
  progress.value = 0;
  $("upload").disabled = true;
  try {
    const card = await postForm("v1/adapters", form, (done) => { progress.value = done; });
    say($("up-msg"), `uploaded ${card.id} (version ${card.version.slice(0, 12)})`, "ok");
    picked = { config: null, weights: null, archive: null };
    fill($("up-files"));
    $("files").value = "";
  } catch (err) {
    say($("up-msg"), String(err), "error"); // the server's 4xx message, as is
    $("upload").disabled = false;
  }
  progress.hidden = true;
  await changed();
}

export function initAdapters() {
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    pick([...event.dataTransfer.files]);
  });
  $("files").addEventListener("change", (event) => pick([...event.target.files]));
  $("upload").addEventListener("click", upload);
}
