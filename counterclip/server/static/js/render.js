// DOM builders for the search results and the original. Text from the index (file names, captions) is
// always set as text, never as HTML. Numbers are named with the API's own words (`numbers` in each answer).

import { imageUrl } from "./api.js";

/** el("div", {class: "x", onclick: f}, child, "text", ...) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function fmt(value, digits = 2) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "–";
}

export function signed(value, digits = 2) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  return (value >= 0 ? "+" : "−") + Math.abs(value).toFixed(digits);
}

export function quoted(text) {
  return `\u201c${text}\u201d`;
}

/** A wall time as a person reads it: "85 ms", "1.4 s". */
export function duration(ms) {
  return ms < 1000 ? `${Math.max(1, Math.round(ms))} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** How every message and card names an indexed image: its file name and its index id. */
export function imageLabel(id, info) {
  const name = info && info.name ? info.name : null;
  return name ? `${name} (#${id})` : `image #${id}`;
}

/** The legend of a result's numbers: {name: meaning} as a definition list. */
export function numbersLegend(numbers, names = null) {
  const shown = Object.entries(numbers || {}).filter(([name]) => !names || names.includes(name));
  return shown.flatMap(([name, words]) => [el("dt", {}, name), el("dd", {}, words)]);
}

function pMatch(value, title) {
  return value === null || value === undefined
    ? null
    : el("span", { class: "pmatch", title }, `p(match) ${fmt(value)}`);
}

// --- search results -----------------------------------------------------------------------------------

/** One image card: thumbnail (click = use as original), file name and id, caption, score and p(match). */
export function imageCard(item, info, handlers, picked, numbers = {}) {
  const name = info ? info.name : item.path || `#${item.id}`;
  const captions = info && info.captions ? info.captions : [];
  const label = imageLabel(item.id, info);
  return el(
    "div",
    { class: "card" + (picked ? " picked" : ""), dataset: { id: item.id } },
    // the picture is a mouse target; keyboards use "Pick" (one tab stop less per card)
    el(
      "button",
      { type: "button", class: "thumb", tabindex: "-1", title: `Use ${label} as the original`, onclick: () => handlers.pick(item.id, info) },
      el("img", { src: imageUrl(item.id), alt: name, loading: "lazy" }),
    ),
    el("div", { class: "name-row" }, el("span", { class: "name" }, name), el("span", { class: "id", title: "index id" }, `#${item.id}`)),
    captions.length ? el("div", { class: "caption" }, quoted(captions[0])) : null,
    el(
      "div",
      { class: "card-numbers" },
      el("span", { class: "score", title: numbers.score || "" }, `score ${fmt(item.score_after)}`),
      pMatch(item.p_match, numbers["p(match)"]),
    ),
    el(
      "div",
      { class: "links" },
      el("button", { type: "button", class: "link pick", "aria-label": `Pick ${label} as the original`, onclick: () => handlers.pick(item.id, info) }, "Pick"),
      el("button", { type: "button", class: "link similar", "aria-label": `Search for images like ${label}`, onclick: () => handlers.similar(item.id, info) }, "Similar"),
    ),
  );
}

/** One caption row (caption search): the text, its score (and p(match) by an image), "Use this text". */
export function captionRow(item, handlers, numbers = {}) {
  return el(
    "div",
    { class: "caption-row", dataset: { id: item.id } },
    el("span", { class: "text" }, quoted(item.text)),
    el(
      "span",
      { class: "card-numbers" },
      el("span", { class: "score", title: numbers.score || "" }, `score ${fmt(item.score_after)}`),
      pMatch(item.p_match, numbers["p(match)"]),
    ),
    el("button", { type: "button", class: "link", onclick: () => handlers.useText(item.text) }, "Use this text"),
  );
}

/** The search results: image cards (a grid) or caption rows (a list), and the layout they need. */
export function searchResults(result, handlers, pickedId) {
  const items = result.items || [];
  const numbers = result.numbers || {};
  if (!items.length) return { layout: "list", nodes: [el("p", { class: "none" }, "Nothing found.")] };
  if (items[0].kind === "caption") return { layout: "list", nodes: items.map((i) => captionRow(i, handlers, numbers)) };
  const infos = result.images || {};
  return { layout: "grid", nodes: items.map((i) => imageCard(i, infos[String(i.id)], handlers, i.id === pickedId, numbers)) };
}

// --- the original ---------------------------------------------------------------------------------------

export function originalView(original) {
  if (!original) return null;
  const about = el(
    "div",
    { class: "about" },
    el("b", { class: "name" }, original.name || `image #${original.id}`),
    original.kind === "upload"
      ? el("span", { class: "muted" }, "your upload (not in the index; a link cannot carry it)")
      : el("span", { class: "muted" }, `index id ${original.id}`),
    original.captions && original.captions.length ? el("span", { class: "caption" }, quoted(original.captions[0])) : null,
  );
  const src = original.kind === "upload" ? original.dataUrl : imageUrl(original.id);
  const picture = src
    ? el("img", { src, alt: "the original image" })
    : el("div", { class: "no-preview" }, "this browser cannot show this file type");
  return [picture, about];
}
