// The server panel: /ready, and from /metrics the running and waiting sequences, KV-cache use,
// adapter residency, and the recent TTFT / inter-token latency (the mean over the last poll
// interval, from the histograms' _sum and _count deltas). Both routes are open: no key needed.

import { el, fill, fmt, say } from "./dom.js";
import { parseMetrics, value } from "./prom.js";

const $ = (id) => document.getElementById(id);
let previous = null; // the last scrape: {at (ms), samples}
const recent = { ttft: null, itl: null }; // kept while idle, so the panel shows the last seen

/** Mean of a histogram over the interval since ``before``: Δsum / Δcount (null if no sample). */
function intervalMean(before, now, name) {
  const count = value(now, `${name}_count`) - (value(before, `${name}_count`) ?? 0);
  const sum = value(now, `${name}_sum`) - (value(before, `${name}_sum`) ?? 0);
  return count > 0 ? sum / count : null;
}

async function readiness() {
  try {
    const response = await fetch("ready", { cache: "no-store" });
    const body = await response.json();
    return response.ok ? ["ready", "ok"] : [body.status ?? `HTTP ${response.status}`, "error"];
  } catch {
    return ["unreachable", "error"];
  }
}

function residency(samples) {
  const tiers = new Map();
  for (const s of samples) {
    if (s.name !== "loraplex_adapter_resident" || s.value !== 1) continue;
    if (!tiers.has(s.labels.adapter)) tiers.set(s.labels.adapter, []);
    tiers.get(s.labels.adapter).push(s.labels.tier);
  }
  return [...tiers].sort(([a], [b]) => a.localeCompare(b)).map(([name, list]) =>
    el("li", { dataset: { adapter: name } }, el("b", {}, name), " ",
      list.sort().map((tier) => el("span", { class: `badge ${tier}` }, tier))));
}

export async function pollServer() {
  const [state, kind] = await readiness();
  say($("ready"), state, kind);
  let samples;
  try {
    const response = await fetch("metrics", { cache: "no-store" });
    samples = parseMetrics(await response.text());
  } catch {
    return;
  }
  const at = performance.now();
  let rate = null;
  if (previous) {
    recent.ttft = intervalMean(previous.samples, samples, "loraplex_time_to_first_token_seconds") ?? recent.ttft;
    recent.itl = intervalMean(previous.samples, samples, "loraplex_inter_token_latency_seconds") ?? recent.itl;
    const made = value(samples, "loraplex_generation_tokens_total") - value(previous.samples, "loraplex_generation_tokens_total");
    rate = made / ((at - previous.at) / 1000);
  }
  previous = { at, samples };
  const lora = samples.find((s) => s.name === "vllm:lora_requests_info");
  const kv = value(samples, "loraplex_kv_cache_usage_ratio");
  const meter = el("meter", { min: 0, max: 1, low: 0.7, high: 0.9, value: kv ?? 0 });
  const row = (label, ...shown) => [el("dt", {}, label), el("dd", {}, ...shown)];
  fill($("stats"),
    row("running", fmt(value(samples, "loraplex_num_requests_running"))),
    row("waiting", fmt(value(samples, "loraplex_num_requests_waiting"))),
    row("KV cache", meter, ` ${fmt(kv == null ? null : kv * 100)} %`),
    row("adapters in slots", `${fmt(value(samples, "loraplex_adapters_resident"))} / ${lora?.labels.max_lora ?? "?"}`),
    row("merged copies", fmt(value(samples, "loraplex_merged_adapters"))),
    row("generated", `${fmt(rate)} tok/s`),
    row("TTFT (recent)", `${fmt(recent.ttft == null ? null : recent.ttft * 1000)} ms`),
    row("ITL (recent)", `${fmt(recent.itl == null ? null : recent.itl * 1000)} ms`),
    row("running adapters", lora?.labels.running_lora_adapters || "—"));
  fill($("residency"), residency(samples));
}
