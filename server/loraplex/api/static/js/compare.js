// Compare: one prompt sent at once to the base model, any number of adapters and a weighted
// mix, one streamed request per column (the server batches them into the same steps), with
// time to first token, tokens/s and tokens per column.

import { call, events, getJSON } from "./api.js";
import { el, fill, fmt, say } from "./dom.js";

const $ = (id) => document.getElementById(id);
let models = { base: null, adapters: [] };
let running = null; // the AbortController of the run in flight

/**
 * Fields every request of a run carries besides the prompt and the sampling controls.
 * Structured outputs hook: once the server accepts `response_format`, the JSON-schema box
 * (its place is marked in index.html) returns {response_format: {type: "json_schema", ...}}
 * here, and every column is constrained by the same schema.
 */
function requestExtras() {
  return {};
}

/** The models the caller may use: GET /v1/models, the base first (its parent is null). */
export async function loadModels() {
  const list = $("model-list");
  const kept = selection();
  try {
    const { data } = await getJSON("v1/models");
    models = { base: data.find((m) => m.parent == null)?.id, adapters: data.filter((m) => m.parent != null).map((m) => m.id) };
    say($("compare-msg"), "");
  } catch (err) {
    models = { base: null, adapters: [] };
    say($("compare-msg"), String(err), "error");
  }
  const rows = [];
  if (models.base) rows.push(modelRow(models.base, "base model", kept.checked.get(models.base) ?? true, null));
  for (const id of models.adapters) rows.push(modelRow(id, "adapter", kept.checked.get(id) ?? false, kept.weights.get(id) ?? 0));
  fill(list, rows.length ? rows : el("p", { class: "hint" }, "no models (is a key needed?)"));
  $("run").disabled = !models.base || running !== null;
}

function modelRow(id, kind, checked, weight) {
  return el("div", { class: "model", dataset: { model: id } },
    el("label", {}, el("input", { type: "checkbox", class: "pick", checked }), " ", el("b", {}, id), " ", el("span", { class: "hint" }, kind)),
    weight == null ? null : el("label", { class: "hint" }, "mix weight ",
      el("input", { type: "number", class: "weight", step: "0.1", value: String(weight) })));
}

function selection() {
  const checked = new Map();
  const weights = new Map();
  for (const row of document.querySelectorAll("#model-list .model")) {
    checked.set(row.dataset.model, row.querySelector(".pick").checked);
    const weight = row.querySelector(".weight");
    if (weight) weights.set(row.dataset.model, Number(weight.value) || 0);
  }
  return { checked, weights };
}

/** One column per checked model, plus the weighted mix when any weight is non-zero. */
function targets() {
  const { checked, weights } = selection();
  const list = [...checked].filter(([, on]) => on).map(([id]) => ({ label: id, model: id }));
  const mix = [...weights].filter(([, w]) => w !== 0).map(([name, weight]) => ({ name, weight }));
  if (mix.length && models.base) {
    const label = `mix: ${mix.map((m) => `${m.name}×${m.weight}`).join(" + ")}`;
    list.push({ label, model: models.base, adapters: mix });
  }
  return list;
}

function controls() {
  const seed = $("seed").value.trim();
  return {
    chat: $("mode").value === "chat",
    prompt: $("prompt").value,
    sampling: {
      temperature: Number($("temperature").value),
      max_tokens: Number($("max-tokens").value),
      ...(seed === "" ? {} : { seed: Number(seed) }),
    },
  };
}

/** A column: header, stats line, output (one Text node, appended to), error line. */
function column(label) {
  const text = document.createTextNode("");
  const stats = el("div", { class: "stats" }, "waiting…");
  const error = el("p", { class: "msg", "data-kind": "error" });
  const node = el("article", { class: "column", dataset: { model: label } },
    el("h3", {}, label), stats, el("pre", { class: "out" }, text), error);
  return { node, text, stats, error };
}

/** Stream one request into its column; timing from the page's clock. */
async function stream(target, ctl, col, signal) {
  const body = {
    model: target.model,
    ...(ctl.chat ? { messages: [{ role: "user", content: ctl.prompt }] } : { prompt: ctl.prompt }),
    ...ctl.sampling,
    ...(target.adapters ? { adapters: target.adapters } : {}),
    ...requestExtras(),
    stream: true,
    stream_options: { include_usage: true },
  };
  const start = performance.now();
  let first = null;
  let last = null;
  let tokens = 0;
  let finish = "";
  const show = (state) => {
    const rate = tokens > 1 && last > first ? (tokens - 1) / ((last - first) / 1000) : null;
    const ttft = first == null ? null : first - start;
    fill(col.stats,
      el("span", { class: "ttft" }, `TTFT ${fmt(ttft)} ms`),
      el("span", { class: "rate" }, `${fmt(rate)} tok/s`),
      el("span", { class: "tokens" }, `${tokens} tokens`),
      el("span", { class: "state" }, state));
  };
  try {
    const response = await call(ctl.chat ? "v1/chat/completions" : "v1/completions", { method: "POST", json: body, signal });
    for await (const event of events(response)) {
      if (event.error) throw new Error(event.error.message);
      const now = performance.now();
      for (const choice of event.choices ?? []) {
        finish = choice.finish_reason ?? finish;
        const piece = ctl.chat ? choice.delta?.content : choice.text;
        if (piece == null) continue; // a chat stream's role-only or closing chunk
        // One chunk per token the engine returned (usage below has the exact count); a token
        // may decode to nothing yet (half a UTF-8 character) and still counts for TTFT.
        tokens += 1;
        first ??= now;
        last = now;
        col.text.appendData(piece);
      }
      if (event.usage) tokens = event.usage.completion_tokens;
      show("streaming");
    }
    show(finish || "done");
  } catch (err) {
    show(err.name === "AbortError" ? "stopped" : "failed");
    if (err.name !== "AbortError") say(col.error, String(err), "error");
  }
}

async function run() {
  const list = targets();
  if (!list.length) {
    say($("compare-msg"), "pick at least one model", "error");
    return;
  }
  say($("compare-msg"), "");
  const ctl = controls();
  running = new AbortController();
  $("run").disabled = true;
  $("stop").disabled = false;
  const cols = list.map((t) => column(t.label));
  fill($("columns"), cols.map((c) => c.node));
  $("columns").dataset.state = "running";
  // All at once: the server batches the columns into the same engine steps.
  await Promise.all(list.map((t, i) => stream(t, ctl, cols[i], running.signal)));
  running = null;
  $("columns").dataset.state = "done";
  $("run").disabled = !models.base;
  $("stop").disabled = true;
}

export function initCompare() {
  $("run").addEventListener("click", run);
  $("stop").addEventListener("click", () => running?.abort());
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !$("run").disabled) run();
  });
}
