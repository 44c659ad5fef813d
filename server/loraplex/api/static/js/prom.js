// Prometheus' text exposition format, read just far enough for the live panel.

const SAMPLE = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /([A-Za-z_]\w*)="((?:[^"\\]|\\.)*)"/g;

/** "name{a="x"} 1.5" lines -> [{name, labels: {a: "x"}, value: 1.5}]; comments are skipped. */
export function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = SAMPLE.exec(line);
    if (!match) continue;
    const labels = {};
    for (const [, key, raw] of (match[2] ?? "").matchAll(LABEL)) {
      labels[key] = raw.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    }
    const value = match[3] === "+Inf" ? Infinity : match[3] === "-Inf" ? -Infinity : Number(match[3]);
    samples.push({ name: match[1], labels, value });
  }
  return samples;
}

/** The value of the first sample named ``name`` whose labels include ``labels`` (else null). */
export function value(samples, name, labels = {}) {
  const found = samples.find((s) => s.name === name
    && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  return found ? found.value : null;
}
