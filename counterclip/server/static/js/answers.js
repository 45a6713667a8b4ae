// The counterfactual answers of one query: the question, the original's own reading (settled first), the
// rule, the answers each beside the original (verdict, numbers each named, why not verified), the
// baselines (what they are; an answer already shown is named, not drawn again), and what the numbers mean.
// The sentences come from the API (`reading`, `numbers`, `baseline_words`): the report's words.

import { imageUrl } from "./api.js";
import { answerQuality } from "./quality.js";
import { el, fmt, imageLabel, numbersLegend, quoted, signed } from "./render.js";

const VERDICTS = {
  verified: { image: "Passes the rule, was re-scored from its file, and the calibration agrees it really is what was asked.", caption: "Passes the rule, was re-scored from its text, and the calibration agrees it really is what was asked." },
  weak: { image: "Passes the rule only relative to what this index holds: the calibration does not call it a real match.", caption: "Passes the rule only relative to what this index holds: the calibration does not call it a real match." },
  unverifiable: { image: "Passes the rule on the stored vector, but there is no file to re-score it from.", caption: "Passes the rule on the stored vector, but it could not be re-scored." },
  unverified: { image: "Not re-scored from its file.", caption: "Not re-scored from its text." },
};

/** The verdict of an item: the engine's `verdict` when present, else its `verified` flag. */
export function verdictOf(item) {
  if (typeof item.verdict === "string") return item.verdict;
  return item.verified ? "verified" : "unverified";
}

function sentence(text) {
  return text ? text.charAt(0).toUpperCase() + text.slice(1) : text;
}

function targetOf(result) {
  return (result.validity && result.validity.target) || (result.query && result.query.target) || "";
}

function goalSentence(result) {
  const text = result.text ? quoted(result.text) : "";
  const what = result.side === "text" ? "Captions" : "Images";
  if (result.mode === "flip") {
    const predicted = result.query && result.query.predicted ? ` (the original is predicted ${quoted(result.query.predicted)})` : "";
    return `Images close to the original that the model labels ${quoted(targetOf(result))} instead${predicted}.`;
  }
  const more = result.mode === "increase" ? "more" : "less";
  const closeTo = result.side === "text" ? `close to ${text}` : "close to the original";
  return `${what} ${closeTo} that the model finds ${more} like ${result.side === "text" ? "the image" : text}.`;
}

function numbers(item, result) {
  const flip = result.mode === "flip";
  const digits = flip ? 3 : 2;
  const delta = item.score_after - (item.score_before ?? 0);
  const words = result.numbers || {};
  const name = flip ? `class probability of ${quoted(targetOf(result))}` : "score";
  return el(
    "div",
    { class: "numbers", title: flip ? words["class probability"] : words.score },
    `${name} ${fmt(item.score_before, digits)} → `,
    el("b", {}, fmt(item.score_after, digits)),
    " ",
    el("span", { class: delta >= 0 ? "up" : "down" }, `(${signed(delta, digits)})`),
  );
}

function matchLine(item, result) {
  if (item.p_match === null || item.p_match === undefined) return null;
  const name = result.mode === "flip" ? `p(match) of ${quoted(targetOf(result))}` : "p(match)";
  return el("div", { class: "pmatch", title: (result.numbers || {})["p(match)"] }, `${name} `, el("b", {}, fmt(item.p_match)));
}

function details(item, result) {
  const parts = [`#${item.rank}`, `distance ${fmt(item.distance, 3)}`];
  if (item.kind === "image") parts.push(`index id ${item.id}`);
  if (item.word_edits !== null && item.word_edits !== undefined) parts.push(`${item.word_edits} word(s) changed`);
  return el("span", { class: "muted", title: (result.numbers || {}).distance }, parts.join(" · "));
}

function imagePair(item, result, original, infos) {
  const info = infos[String(item.id)];
  const originalSrc = original.kind === "upload" ? original.dataUrl : imageUrl(original.id);
  const digits = result.mode === "flip" ? 3 : 2;
  return el(
    "div",
    { class: "pair" },
    el(
      "figure",
      { class: "was" },
      originalSrc ? el("img", { src: originalSrc, alt: "original" }) : el("div", { class: "no-preview" }, "your upload"),
      el("figcaption", {}, "original ", el("b", {}, fmt(item.score_before, digits))),
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

function answer(item, result, original, handlers) {
  const infos = result.images || {};
  const verdict = verdictOf(item);
  const kind = item.kind === "caption" ? "caption" : "image";
  const left = kind === "caption" ? textPair(item, result) : imagePair(item, result, original, infos);
  return el(
    "div",
    { class: "answer", dataset: { id: item.id, verdict } },
    left,
    el(
      "div",
      { class: "facts" },
      el("div", {}, el("span", { class: `verdict ${verdict}` }, verdict), " ", details(item, result)),
      numbers(item, result),
      matchLine(item, result),
      item.reason ? el("div", { class: "reason" }, el("b", {}, "Not verified: "), item.reason) : null,
      el("div", { class: "verdict-text" }, (VERDICTS[verdict] || {})[kind] || ""),
      answerQuality(result, item),
      el(
        "div",
        { class: "links" },
        el("button", { type: "button", class: "link maps", onclick: () => handlers.maps(item) }, "Show maps"),
        kind === "image"
          ? el("button", { type: "button", class: "link", onclick: () => handlers.pick(item.id, infos[String(item.id)]) }, "Use as original")
          : el("button", { type: "button", class: "link", onclick: () => handlers.useText(item.text) }, "Use this text"),
        kind === "image"
          ? el("button", { type: "button", class: "link", onclick: () => handlers.similar(item.id, infos[String(item.id)]) }, "Similar")
          : null,
      ),
    ),
  );
}

// --- the baselines -------------------------------------------------------------------------------------

function baselineName(name) {
  const top = /^closest_valid_in_top(\d+)$/.exec(name);
  if (top) return `Closest valid item among the text's top ${top[1]}`;
  if (name === "nearest_unlike_neighbour") return "Nearest unlike neighbour";
  if (name === "first_valid_text_match") return "First valid match of the text";
  return sentence(name.replaceAll("_", " "));
}

function baselineWords(result, name) {
  const words = result.baseline_words || {};
  const key = Object.keys(words).find((k) => name.startsWith(k));
  return key ? sentence(words[key]) + "." : "";
}

/** One baseline item, compact; an item shown already (an answer, or above) is named instead. */
function baselineItem(item, result, answered, seen) {
  const infos = result.images || {};
  const shown = item.kind === "caption" ? quoted(item.text) : imageLabel(item.id, infos[String(item.id)]);
  const numbers = `score ${fmt(item.score_before)} → ${fmt(item.score_after)}`;
  const again = answered.has(item.id) ? `the same as answer #${answered.get(item.id)}` : seen.get(item.id);
  const verdict = verdictOf(item);
  return el(
    "li",
    { class: "baseline-item", dataset: { id: item.id } },
    item.kind === "image" && !again ? el("img", { src: imageUrl(item.id), alt: "", loading: "lazy" }) : null,
    el(
      "span",
      {},
      el("b", {}, shown),
      ` · ${numbers} · `,
      again ? el("i", {}, again) : el("span", { class: `verdict ${verdict}` }, verdict),
    ),
  );
}

function baselines(result) {
  const groups = Object.entries(result.baselines || {});
  if (!groups.length) return null;
  const answered = new Map((result.items || []).map((i) => [i.id, i.rank]));
  const seen = new Map();
  return el(
    "details",
    { class: "baselines" },
    el("summary", {}, "Baselines, for comparison"),
    el("p", { class: "muted" }, "Simpler ways to answer the same question without the gradient path, to judge the answers above against."),
    groups.map(([name, items]) => {
      const rows = items.map((i) => baselineItem(i, result, answered, seen));
      items.forEach((i) => seen.has(i.id) || answered.has(i.id) || seen.set(i.id, `the same as in “${baselineName(name)}” above`));
      return el(
        "section",
        { class: "baseline-group" },
        el("h4", {}, baselineName(name)),
        el("p", { class: "muted" }, baselineWords(result, name)),
        rows.length ? el("ul", { class: "baseline-list" }, rows) : el("p", { class: "muted" }, "none found"),
      );
    }),
  );
}

// --- the whole result ----------------------------------------------------------------------------------

function reading(result) {
  const words = result.reading || {};
  const box = [];
  if (words.original) {
    box.push(el("p", { class: "original-reading" + (words.settled ? " settled" : "") }, words.original));
  }
  if (words.target_note) box.push(el("p", { class: "muted target-note" }, words.target_note));
  return box;
}

export function counterfactualResults(result, original, handlers) {
  const items = result.items || [];
  const settledWords = ((result.original || {}).settled || "").trim().toLowerCase();
  const warnings = (result.warnings || []).filter((w) => w.trim().toLowerCase() !== settledWords); // said first
  const stale = result.stale || [];
  const words = result.reading || {};
  return [
    el("p", { class: "goal" }, goalSentence(result)),
    ...reading(result),
    // the rule in plain words with its numbers (as in the report); the engine's own statement on hover
    el("div", { class: "rule", title: result.validity ? result.validity.rule : null },
      result.rule_in_words || (result.validity ? "Counts as an answer when " + result.validity.rule : "")),
    el("p", { class: "muted" }, result.calibration ? `Verdicts by the ${result.calibration}.` : "No calibration holds for this model and index: no answer can be verified."),
    warnings.length ? el("ul", { class: "warnings" }, warnings.map((w) => el("li", {}, w))) : null,
    el(
      "p",
      { class: items.length ? "heading" : "none" },
      (words.heading || `${items.length} answer(s)`) + (items.length ? ". “Show maps” tells why." : "."),
    ),
    words.left_out ? el("p", { class: "muted left-out" }, words.left_out) : null,
    el("div", { class: "answers" }, items.map((i) => answer(i, result, original, handlers))),
    stale.length
      ? el("p", { class: "warnings" }, `${stale.length} index entr${stale.length === 1 ? "y" : "ies"} changed on disk since indexing and were left out; run counterclip update.`)
      : null,
    baselines(result),
    result.numbers
      ? el("details", { class: "legend-box" }, el("summary", {}, "What the numbers mean"), el("dl", {}, numbersLegend(result.numbers)))
      : null,
  ];
}
