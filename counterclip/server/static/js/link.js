// Deep links: the page's query lives in the address, e.g. /?image=12&text=a+red+circle&mode=decrease.
// Opening such a link reproduces the query. Uploaded images cannot be put in a link.

const MODES = ["increase", "decrease", "flip"];
const SIDES = ["image", "text"];

function positiveInt(value) {
  return value !== null && /^\d+$/.test(value) ? Number(value) : null;
}

/** The query a link asks for: {q, find, image, text, side, mode, labels, target, k}; absent -> null. */
export function readLink(search = window.location.search) {
  const p = new URLSearchParams(search);
  const labels = p.get("labels");
  return {
    q: p.get("q"),
    find: p.get("find") === "captions" ? "captions" : "images",
    image: positiveInt(p.get("image")),
    text: p.get("text"),
    side: SIDES.includes(p.get("side")) ? p.get("side") : null,
    mode: MODES.includes(p.get("mode")) ? p.get("mode") : null,
    labels: labels ? splitLabels(labels) : null,
    target: p.get("target"),
    k: positiveInt(p.get("k")),
  };
}

export function splitLabels(text) {
  return text.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
}

/** Put the current query in the address bar (no reload, no new history entry). */
export function writeLink(state) {
  const p = new URLSearchParams();
  if (state.q) p.set("q", state.q);
  if (state.q && state.find === "captions") p.set("find", "captions");
  if (state.image !== null && state.image !== undefined) p.set("image", String(state.image));
  if (state.text) p.set("text", state.text);
  if (state.side && state.side !== "image") p.set("side", state.side);
  if (state.mode && state.mode !== "increase") p.set("mode", state.mode);
  if (state.mode === "flip" && state.labels && state.labels.length) p.set("labels", state.labels.join(","));
  if (state.mode === "flip" && state.target) p.set("target", state.target);
  if (state.k && state.k !== 5) p.set("k", String(state.k));
  const query = p.toString();
  window.history.replaceState(null, "", query ? `?${query}` : window.location.pathname);
}
