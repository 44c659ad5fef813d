// The page's only door to the server: the API key (kept in this tab's sessionStorage, sent as
// "Authorization: Bearer", never in a URL), JSON calls, error messages in OpenAI's shape,
// server-sent events read from a fetch() body, and multipart uploads with progress.

const KEY_ITEM = "loraplex.apiKey";

export const apiKey = {
  get: () => sessionStorage.getItem(KEY_ITEM) ?? "",
  set(key) {
    if (key) sessionStorage.setItem(KEY_ITEM, key);
    else sessionStorage.removeItem(KEY_ITEM);
    document.dispatchEvent(new Event("keychange"));
  },
};

/** An HTTP answer that was not 2xx: ``status`` and the server's message as it sent it. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
  toString() { return `${this.status}: ${this.message}`; }
}

function headers(extra = {}) {
  const key = apiKey.get();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

/** The message of an error body: OpenAI's {"error": {"message"}}, else the raw text. */
export function errorMessage(text) {
  try {
    const body = JSON.parse(text);
    if (body?.error?.message) return body.error.message;
    if (typeof body?.detail === "string") return body.detail;
  } catch { /* not JSON: the text itself */ }
  return text || "no message";
}

/** fetch() of an API path (relative to the page), with the key; throws ApiError unless 2xx. */
export async function call(path, { method = "GET", json, signal } = {}) {
  const init = { method, signal, cache: "no-store", headers: headers() };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw new ApiError(response.status, errorMessage(await response.text()));
  return response;
}

export async function getJSON(path) {
  return (await call(path)).json();
}

/**
 * The JSON payloads of a server-sent-events body, as they arrive (fetch + ReadableStream: an
 * EventSource could neither POST nor send the key). Stops at "[DONE]".
 */
export async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replaceAll("\r\n", "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

/**
 * POST a multipart form with upload progress (fetch has none: XMLHttpRequest).
 * Resolves with the parsed 2xx body; rejects with ApiError (the server's message) or an Error.
 */
export function postForm(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", path);
    for (const [name, value] of Object.entries(headers())) request.setRequestHeader(name, value);
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    request.addEventListener("load", () => {
      if (request.status >= 200 && request.status < 300) resolve(JSON.parse(request.responseText));
      else reject(new ApiError(request.status, errorMessage(request.responseText)));
    });
    request.addEventListener("error", () => reject(new Error("the upload failed (network)")));
    request.send(form);
  });
}
