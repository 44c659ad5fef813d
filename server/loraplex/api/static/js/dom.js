// Building DOM nodes without HTML strings: every string becomes a Text node, so model output,
// adapter names and descriptions can never turn into markup, whatever they contain.

/**
 * el("td", {class: "num", dataset: {name}, onclick: fn}, "text", otherNode) -> HTMLElement.
 * Props: "class", "dataset", "on<event>" (a listener), anything else an attribute. Children:
 * nodes, or strings/numbers (as text); null/false are skipped; arrays are flattened.
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** Replace all of ``node``'s children. */
export function fill(node, ...children) {
  node.replaceChildren();
  for (const child of children.flat()) {
    if (child != null && child !== false) node.append(child instanceof Node ? child : String(child));
  }
}

/** Show ``text`` in a message line; ``kind`` "error" or "ok" colours it. */
export function say(node, text, kind = "") {
  node.textContent = text;
  node.dataset.kind = kind;
}

/** A number for people: 3 significant digits at most, no exponent. */
export function fmt(value, digits = 3) {
  if (value == null || !Number.isFinite(value)) return "—";
  return Number(value.toPrecision(digits)).toLocaleString("en-US");
}

/** Bytes as KiB/MiB/GiB. */
export function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${fmt(n)} ${units[i]}`;
}
