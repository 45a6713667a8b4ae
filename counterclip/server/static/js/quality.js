// The quality card: five numbers (faithfulness, understandability, completeness, stability,
// contrastivity), each beside its reference, explained on hover. Self-contained: the page calls
// installQualityToggle once, withQuality on each query body, answerQuality per answer and qualityCard
// per map; everything else (the numbers, the sentences, the definitions) comes from the server.

const QUALITIES = ["faithfulness", "understandability", "completeness", "stability", "contrastivity"];
const QUESTIONS = {
  faithfulness: "Does it reflect what the model really does?",
  understandability: "Can a person grasp it: how few things changed, how concentrated?",
  completeness: "Does it cover all that matters?",
  stability: "Do small changes of the input leave it the same?",
  contrastivity: "Does it say why this and not the alternative?",
};
const TOGGLE_ID = "cf-quality";

function node(tag, className, text) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined && text !== null) element.textContent = String(text);
  return element;
}

function number(value) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(2) : "n/a";
}

/** Adds the "quality cards" checkbox to the counterfactual form (once). */
export function installQualityToggle(form) {
  if (!form || document.getElementById(TOGGLE_ID)) return;
  const label = node("label", "quality-toggle");
  label.title = "Also measure the five qualities of every answer and map (a few more model passes, counted in the card).";
  const box = node("input");
  box.type = "checkbox";
  box.id = TOGGLE_ID;
  label.append(box, " quality cards");
  const actions = form.querySelector(".actions");
  (actions || form).prepend(label);
}

/** The query body with quality asked for when the checkbox is ticked. */
export function withQuality(body) {
  const box = document.getElementById(TOGGLE_ID);
  return box && box.checked ? { ...body, quality: true } : body;
}

/** One card: a row per quality (value, reference); hover a row for its question, definition and sentence. */
export function qualityCard(card, title) {
  const box = node("div", "qcard");
  box.append(node("div", "qcard-title", title || card.subject || "quality"));
  for (const name of QUALITIES) {
    const measure = card[name] || {};
    const row = node("div", "qcard-row");
    const direction = measure.higher_is_better === false ? "lower is better" : "higher is better";
    const against = measure.reference_name ? `\nreference: ${measure.reference_name} ${number(measure.reference)}` : "";
    row.title = `${name}: ${QUESTIONS[name]}\n${measure.definition || ""} (${direction})${against}\n${measure.sentence || ""}`;
    const value = node("span", "qcard-value", number(measure.value));
    if (measure.beats_reference === true) value.classList.add("qcard-better");
    const tied = typeof measure.value === "number" && Math.abs(measure.value - measure.reference) < 1e-9;
    if (measure.beats_reference === false && !tied) value.classList.add("qcard-worse");
    const reference = node("span", "qcard-ref");
    if (measure.reference !== null && measure.reference !== undefined) {
      reference.append(`vs ${number(measure.reference)} `, node("span", "qcard-refname", measure.reference_name || ""));
    }
    row.append(node("span", "qcard-name", name), value, reference);
    box.append(row);
  }
  if (card.forward_passes) box.append(node("div", "qcard-cost", `${card.forward_passes} extra forward passes`));
  return box;
}

function idOf(card) {
  const match = /\(id (\d+)\)$/.exec(card.subject || "");
  return match ? Number(match[1]) : null;
}

/** The card of one answer of a result (null when the result has none). */
export function answerQuality(result, item) {
  const quality = result && result.quality;
  if (!quality) return null;
  const cards = [...(quality.answers || []), ...Object.values(quality.references || {})];
  const card = cards.find((c) => idOf(c) === item.id);
  return card ? qualityCard(card, "Quality (hover for what each number means)") : null;
}
