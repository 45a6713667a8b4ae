// The maps dialog: one answer's explanation maps, each titled by what it shows, with its legend. Closes
// by its Close button, a click (or tap) outside it, or Escape.

import { qualityCard } from "./quality.js";
import { el, fmt, imageLabel, quoted } from "./render.js";

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

function luminance(hex) {
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16) / 255);
  return 0.299 * r + 0.587 * g + 0.114 * b;
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

export function mapFigure(map) {
  // at full size; small images are shown at 2x so their detail is visible (never wider than the dialog)
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

/** The dialog's title: which answer, for which text. */
export function mapsTitle(item, query, infos) {
  const text = quoted(query.mode === "flip" ? query.target || "the target label" : query.text);
  return item.kind === "caption"
    ? `Maps for the caption ${quoted(item.text)} and the original image`
    : `Maps for ${imageLabel(item.id, infos[String(item.id)])} and ${text}`;
}

/** Wire the dialog's ways to close: the Close button and a click on the backdrop (outside the box). */
export function wireDialog(dialog, closeButton) {
  closeButton.addEventListener("click", () => dialog.close());
  dialog.addEventListener("click", (event) => {
    if (event.target !== dialog) return;
    const box = dialog.getBoundingClientRect();
    const inside = event.clientX >= box.left && event.clientX <= box.right && event.clientY >= box.top && event.clientY <= box.bottom;
    if (!inside) dialog.close();
  });
}
