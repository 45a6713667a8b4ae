// DOM builders for results. Text from the index (file names, captions) is always set as text, never as HTML.

import { imageUrl } from "./api.js";
import { answerQuality, qualityCard } from "./quality.js";

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

function signed(value, digits = 2) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  return (value >= 0 ? "+" : "−") + Math.abs(value).toFixed(digits);
}

function quoted(text) {
  return `\u201c${text}\u201d`;
}

// --- search results -----------------------------------------------------------------------------------

/** One image card: thumbnail (click = use as original), file name, captions, score, "Similar". */
export function imageCard(item, info, handlers, picked) {
  const name = info ? info.name : item.path || `#${item.id}`;
  const captions = info && info.captions ? info.captions : [];
  return el(
    "div",
    { class: "card" + (picked ? " picked" : ""), dataset: { id: item.id } },
    el(
      "button",
      { type: "button", class: "thumb", title: "Use as the original", onclick: () => handlers.pick(item.id, info) },
      el("img", { src: imageUrl(item.id), alt: name, loading: "lazy" }),
    ),
    el("div", { class: "name" }, name),
    captions.length ? el("div", { class: "caption" }, quoted(captions[0])) : null,
    el("div", { class: "score" }, `score ${fmt(item.score_after)}`),
    el(
      "div",
      { class: "links" },
      el("button", { type: "button", class: "link pick", title: "Use as the original in step 2", onclick: () => handlers.pick(item.id, info) }, "Pick"),
      el("button", { type: "button", class: "link similar", title: "Search for images like this one", onclick: () => handlers.similar(item.id) }, "Similar"),
    ),
  );
}

/** One caption row (caption search): the text, its score, and "Use this text". */
export function captionRow(item, handlers) {
  return el(
    "div",
    { class: "caption-row", dataset: { id: item.id } },
    el("span", { class: "text" }, quoted(item.text)),
    el("span", { class: "score" }, fmt(item.score_after)),
    el("button", { type: "button", class: "link", onclick: () => handlers.useText(item.text) }, "Use this text"),
  );
}

export function searchResults(result, handlers, pickedId) {
  const items = result.items || [];
  if (!items.length) return [el("p", { class: "none" }, "Nothing found.")];
  if (items[0].kind === "caption") return [el("div", { class: "caption-list" }, items.map((i) => captionRow(i, handlers)))];
  const infos = result.images || {};
  return items.map((i) => imageCard(i, infos[String(i.id)], handlers, i.id === pickedId));
}

// --- the original ---------------------------------------------------------------------------------------

export function originalView(original) {
  if (!original) return null;
  const src = original.kind === "upload" ? original.dataUrl : imageUrl(original.id);
  const about = el(
    "div",
    { class: "about" },
    el("b", {}, original.name || `image #${original.id}`),
    original.kind === "upload"
      ? el("span", { class: "muted" }, "your upload (not in the index; a link cannot carry it)")
      : el("span", { class: "muted" }, `index id ${original.id}`),
    original.captions && original.captions.length ? el("span", { class: "caption" }, quoted(original.captions[0])) : null,
  );
  return [el("img", { src, alt: "the original image" }), about];
}

// --- counterfactual results ---------------------------------------------------------------------------

const VERDICTS = {
  verified: { image: "Passes the rule, was re-scored from its file, and the calibration agrees it really is what was asked.", caption: "Passes the rule, was re-scored from its text, and the calibration agrees it really is what was asked." },
  weak: { image: "Passes the rule only relative to what this index holds: the calibration does not call it a real match (see the warnings).", caption: "Passes the rule only relative to what this index holds: the calibration does not call it a real match (see the warnings)." },
  unverifiable: { image: "Passes the rule on the stored vector, but there is no file to re-score it from.", caption: "Passes the rule on the stored vector, but it could not be re-scored." },
  unverified: { image: "Not re-scored from its file.", caption: "Not re-scored from its text." },
};

/** The verdict of an item: the engine's `verdict` when present, else its `verified` flag. */
export function verdictOf(item) {
  if (typeof item.verdict === "string") return item.verdict;
  return item.verified ? "verified" : "unverified";
}

function goalSentence(result) {
  const text = result.text ? quoted(result.text) : "";
  const what = result.side === "text" ? "Captions" : "Images";
  if (result.mode === "flip") {
    const target = result.validity && result.validity.target ? quoted(result.validity.target) : "the target";
    const predicted = result.query && result.query.predicted ? ` (the original is predicted ${quoted(result.query.predicted)})` : "";
    return `Images close to the original that the model labels ${target} instead${predicted}.`;
  }
  const more = result.mode === "increase" ? "more" : "less";
  const closeTo = result.side === "text" ? `close to ${text}` : "close to the original";
  return `${what} ${closeTo} that the model finds ${more} like ${result.side === "text" ? "the image" : text}.`;
}

function scoreName(result) {
  return result.mode === "flip" ? `probability of ${quoted(result.validity.target || "target")}` : "score";
}

function numbers(item, result) {
  const digits = result.mode === "flip" ? 3 : 2;
  const delta = item.score_after - (item.score_before ?? 0);
  return el(
    "div",
    { class: "numbers" },
    `${scoreName(result)} ${fmt(item.score_before, digits)} → `,
    el("b", {}, fmt(item.score_after, digits)),
    " ",
    el("span", { class: delta >= 0 ? "up" : "down" }, `(${signed(delta, digits)})`),
  );
}

function details(item) {
  const parts = [`#${item.rank}`, `distance to the original ${fmt(item.distance, 3)}`];
  if (item.p_match !== null && item.p_match !== undefined) parts.push(`p(match) ${fmt(item.p_match, 2)}`);
  if (item.word_edits !== null && item.word_edits !== undefined) parts.push(`${item.word_edits} word(s) changed`);
  return el("div", { class: "muted" }, parts.join(" · "));
}

function imagePair(item, result, original, infos) {
  const info = infos[String(item.id)];
  const originalSrc = original.kind === "upload" ? original.dataUrl : imageUrl(original.id);
  return el(
    "div",
    { class: "pair" },
    el(
      "figure",
      { class: "was" },
      el("img", { src: originalSrc, alt: "original" }),
      el("figcaption", {}, "original ", el("b", {}, fmt(item.score_before, result.mode === "flip" ? 3 : 2))),
    ),
    el("span", { class: "arrow", "aria-hidden": "true" }, "→"),
    el(
      "figure",
      { class: "now" },
      el("img", { src: imageUrl(item.id), alt: info ? info.name : item.path }),
      el("figcaption", {}, info ? info.name : item.path),
    ),
  );
}

function textPair(item, result) {
  return el(
    "div",
    { class: "texts" },
    el("span", { class: "was" }, quoted(result.text || "")),
    el("span", { class: "now" }, quoted(item.text)),
  );
}

export function answer(item, result, original, handlers) {
  const infos = result.images || {};
  const verdict = verdictOf(item);
  const left = item.kind === "caption" ? textPair(item, result) : imagePair(item, result, original, infos);
  return el(
    "div",
    { class: "answer", dataset: { id: item.id, verdict } },
    left,
    el(
      "div",
      { class: "facts" },
      el("div", {}, el("span", { class: `verdict ${verdict}` }, verdict), " ", details(item)),
      numbers(item, result),
      el("div", { class: "verdict-text" }, (VERDICTS[verdict] || {})[item.kind === "caption" ? "caption" : "image"] || ""),
      answerQuality(result, item),
      el(
        "div",
        { class: "links" },
        el("button", { type: "button", class: "link maps", onclick: () => handlers.maps(item) }, "Show maps"),
        item.kind === "image"
          ? el("button", { type: "button", class: "link", onclick: () => handlers.pick(item.id, infos[String(item.id)]) }, "Use as original")
          : el("button", { type: "button", class: "link", onclick: () => handlers.useText(item.text) }, "Use this text"),
        item.kind === "image"
          ? el("button", { type: "button", class: "link", onclick: () => handlers.similar(item.id) }, "Similar")
          : null,
      ),
    ),
  );
}

function baselines(result, original, handlers) {
  const groups = Object.entries(result.baselines || {});
  if (!groups.length) return null;
  return el(
    "details",
    { class: "baselines" },
    el("summary", {}, "Baselines, for comparison"),
    groups.map(([name, items]) =>
      el(
        "div",
        {},
        el("h4", {}, name.replaceAll("_", " ")),
        items.length
          ? el("div", { class: "answers" }, items.map((i) => answer(i, result, original, handlers)))
          : el("p", { class: "muted" }, "none valid"),
      ),
    ),
  );
}

export function counterfactualResults(result, original, handlers) {
  const items = result.items || [];
  const warnings = result.warnings || [];
  const stale = result.stale || [];
  return [
    el("p", { class: "goal" }, goalSentence(result)),
    // the rule in plain words with its numbers (as in the report); the engine's own statement on hover
    el("div", { class: "rule", title: result.validity ? result.validity.rule : null },
      result.rule_in_words || (result.validity ? "Counts as an answer when " + result.validity.rule : "")),
    el("p", { class: "muted" }, result.calibration ? `Verdicts by the ${result.calibration}.` : "No calibration holds for this model and index: no answer can be verified."),
    warnings.length ? el("ul", { class: "warnings" }, warnings.map((w) => el("li", {}, w))) : null,
    items.length
      ? el("p", { class: "muted" }, `${items.length} answer(s), closest to the original first. Click “Show maps” to see why.`)
      : el("p", { class: "none" }, "No answer in this index passes the rule for this query."),
    el("div", { class: "answers" }, items.map((i) => answer(i, result, original, handlers))),
    stale.length
      ? el("p", { class: "warnings" }, `${stale.length} index entr${stale.length === 1 ? "y" : "ies"} changed on disk since indexing and were left out; run counterclip update.`)
      : null,
    baselines(result, original, handlers),
  ];
}

// --- maps ------------------------------------------------------------------------------------------------

function legend(info) {
  if (!info) return null;
  return el(
    "div",
    { class: "legend" },
    el("img", { src: info.bar, alt: "" }),
    el("div", { class: "ends" }, el("span", {}, fmt(info.low, 3)), info.signed ? el("span", {}, "0") : null, el("span", {}, fmt(info.high, 3))),
    el("div", {}, info.reading),
    info.note ? el("div", { class: "map-note" }, info.note) : null,
  );
}

function tokenChips(tokens) {
  return el(
    "div",
    { class: "tokens" },
    tokens.map((t) => {
      const chip = el("span", { class: "tok" }, el("span", { class: "word" }, t.text), el("span", { class: "value" }, fmt(t.value, 2)));
      chip.firstChild.style.background = t.colour; // CSSOM: allowed by the page's CSP, unlike style=""
      chip.firstChild.style.color = luminance(t.colour) > 0.5 ? "#000" : "#fff";
      return chip;
    }),
  );
}

function luminance(hex) {
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16) / 255);
  return 0.299 * r + 0.587 * g + 0.114 * b;
}

export function mapFigure(map) {
  // at full size; small images are shown at 2x so their detail is visible
  const scale = map.kind === "image" && map.width < 256 ? 2 : 1;
  const shown = map.kind === "tokens" && map.tokens
    ? tokenChips(map.tokens)
    : el("img", { class: "shown", src: map.png, width: map.width * scale, height: map.height * scale, alt: map.title });
  const figure = el(
    "figure",
    { class: "map" },
    el("h4", {}, map.title),
    el("p", {}, map.caption + (scale > 1 ? ` (shown at ${scale}×)` : "")),
    shown,
    legend(map.legend),
    map.faithfulness ? el("div", { class: "faithfulness" }, map.faithfulness.text) : null,
    map.quality ? qualityCard(map.quality, "Quality of this map (hover for definitions)") : null,
  );
  if (map.kind === "image") figure.style.width = `${Math.max(map.width * scale, 200)}px`;
  return figure;
}
