// The page: search (text, upload, click), pick an original, counterfactuals, maps, report, deep links.
//
// One state model: the answers on the page belong to the query that produced them (`state.shown`: its
// request, its key, its result). Maps and the report always use that query. When the form or the original
// no longer asks that question, the answers are marked stale (dimmed, with a line saying what they
// answer and a button to ask the current question); an upload becomes the original only once it decoded.

import { ApiError, download, getJSON, postJSON, signIn } from "./api.js";
import { counterfactualResults } from "./answers.js";
import { readLink, splitLabels, writeLink } from "./link.js";
import { mapFigure, mapsTitle, wireDialog } from "./maps.js";
import * as render from "./render.js";
import { installQualityToggle, withQuality } from "./quality.js";

const $ = (id) => document.getElementById(id);

const state = {
  info: null,
  original: null, // {kind: "id", id, name, captions} | {kind: "upload", dataUrl, base64, name, upload}
  shown: null, // the answers on the page: {body, key, label, result, mapsBody}
  search: { q: null, find: "images" },
  uploads: 0,
};

// --- messages and busy state ---------------------------------------------------------------------------

function showError(err) {
  const text = err instanceof ApiError || err instanceof Error ? err.message : String(err);
  $("message-text").textContent = text;
  $("message").hidden = false;
  if (err instanceof ApiError && err.status === 401) $("token-form").hidden = false;
}

function clearError() {
  $("message").hidden = true;
}

function busy(statusId, text) {
  const box = $(statusId);
  box.classList.remove("error");
  box.replaceChildren(render.el("span", { class: "spinner", role: "status", "aria-label": "working" }), text);
}

function status(statusId, text, isError = false) {
  const box = $(statusId);
  box.classList.toggle("error", isError);
  box.textContent = text;
}

/** Run ``work`` with a busy line; an error becomes the status line and the message. True on success. */
async function guarded(statusId, label, work, context = "") {
  clearError();
  busy(statusId, label);
  try {
    await work();
    return true;
  } catch (err) {
    const text = context + (err.message || String(err));
    status(statusId, text, true);
    showError(err instanceof ApiError ? new ApiError(err.status, text, err.retryAfter) : new Error(text));
    return false;
  }
}

// --- the form, and the question it asks ------------------------------------------------------------------

function currentForm() {
  const mode = document.querySelector('input[name="mode"]:checked').value;
  return {
    text: $("cf-text").value.trim(),
    side: document.querySelector('input[name="side"]:checked').value,
    mode,
    labels: splitLabels($("cf-labels").value),
    target: $("cf-target").value,
    k: Number($("cf-k").value) || 5,
  };
}

function imageRef() {
  if (!state.original) return null;
  return state.original.kind === "id" ? { id: state.original.id } : { base64: state.original.base64 };
}

/** The request the form asks for now; throws an Error in the user's words when it cannot be asked. */
function queryBody() {
  const form = currentForm();
  const image = imageRef();
  if (!image) throw new Error("Pick an original first: pick a picture in step 1, or upload one.");
  const body = { image, side: form.side, mode: form.mode, k: Math.min(Math.max(form.k, 1), 20) };
  if (form.mode === "flip") {
    if (form.labels.length < 2) throw new Error("Flip needs at least two labels, separated by commas.");
    body.labels = form.labels;
    if (form.target) body.target = form.target; // none: the engine takes the runner-up label
  } else {
    if (!form.text) throw new Error("Type the text whose score should change.");
    body.text = form.text;
  }
  return withQuality(body);
}

/** What identifies a question: the request, with an upload named by its upload number, not its bytes. */
function keyOf(body) {
  const image = body.image.id !== undefined ? { id: body.image.id } : { upload: state.original && state.original.upload };
  return JSON.stringify({ ...body, image });
}

function describeQuestion(body) {
  const original = state.shown && state.shown.originalLabel;
  const goal = { increase: "match the text more", decrease: "match the text less", flip: "change the predicted label" }[body.mode];
  const what = body.mode === "flip" ? `labels ${body.labels.map(render.quoted).join(", ")}` : render.quoted(body.text);
  const side = body.side === "text" ? "other captions" : "other images";
  return `${original}, ${what}, ${side}, ${goal}`;
}

/** Mark the answers stale when the form or the original no longer asks their question. */
function refreshStale() {
  const shown = state.shown;
  let current = null;
  try {
    current = keyOf(queryBody());
  } catch (_) {
    current = null;
  }
  const stale = shown !== null && current !== shown.key;
  $("cf-results").classList.toggle("stale", stale);
  $("cf-results").setAttribute("aria-describedby", stale ? "cf-stale-text" : "");
  $("cf-stale").hidden = !stale;
  if (stale) $("cf-stale-text").textContent = `These answers are for an earlier question (${describeQuestion(shown.body)}).`;
  $("cf-rerun").hidden = current === null;
  $("report").disabled = shown === null || stale;
  updateLink();
}

// --- the link in the address bar -----------------------------------------------------------------------

/** The address carries the search, the original and, while they are current, the answers' question. */
function updateLink() {
  const current = state.shown && !$("cf-results").classList.contains("stale") ? state.shown.body : null;
  const image = state.original && state.original.kind === "id" ? state.original.id : null;
  const question = current
    ? { text: current.text, side: current.side, mode: current.mode, labels: current.labels, target: current.target, k: current.k }
    : { text: null, side: null, mode: null };
  writeLink({ q: state.search.q, find: state.search.find, image, ...question });
}

// --- search ----------------------------------------------------------------------------------------------

const handlers = {
  pick: (id, info) => pickIndexed(id, info),
  similar: (id, info) => searchBy({ image: { id } }, `images like ${render.imageLabel(id, info)}`),
  useText: (text) => {
    $("cf-text").value = text;
    $("cf-text").focus();
    refreshStale();
  },
  maps: (item) => openMaps(item),
};

/** Search and show the results; ``pending`` is an upload that becomes the original when it is accepted. */
async function searchBy(body, label, pending = null) {
  const find = body.text !== undefined ? $("search-find").value : "images";
  const started = performance.now();
  return guarded("search-status", `Searching for ${label}…`, async () => {
    const result = await postJSON("search", { ...body, k: 24, collection: find });
    if (pending) setOriginal(pending);
    const picked = state.original && state.original.kind === "id" ? state.original.id : null;
    const shown = render.searchResults(result, handlers, picked);
    const box = $("search-results");
    box.className = shown.layout;
    box.replaceChildren(...shown.nodes);
    $("search-legend-list").replaceChildren(...render.numbersLegend(result.numbers, ["score", "p(match)"]));
    $("search-legend").hidden = !result.numbers;
    status("search-status", `${result.items.length} result(s) for ${label} · ${render.duration(performance.now() - started)}`);
    state.search = body.text !== undefined ? { q: body.text, find } : { q: null, find: "images" };
    updateLink();
  }, pending ? `${pending.name} was not used: ` : "Search failed: ").then((ok) => {
    const earlier = !ok && $("search-results").children.length > 0;
    $("search-results").classList.toggle("stale", earlier);
    if (earlier) $("search-status").append(" The results below are from the earlier search.");
    return ok;
  });
}

function onSearch(event) {
  event.preventDefault();
  const q = $("search-text").value.trim();
  if (!q) {
    status("search-status", "Type what to look for first.", true);
    return;
  }
  searchBy({ text: q }, render.quoted(q));
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

/** Whether this browser can draw the picture (TIFF, say, it cannot; the server may still read it). */
function drawable(dataUrl) {
  return new Promise((resolve) => {
    const image = new Image();
    image.onload = () => resolve(image.naturalWidth > 0);
    image.onerror = () => resolve(false);
    image.src = dataUrl;
  });
}

async function onUpload() {
  const input = $("upload");
  const file = input.files[0];
  if (!file) return;
  const limit = state.info ? state.info.limits.max_upload_bytes : Infinity;
  if (file.size > limit) {
    showError(new Error(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB; this server takes uploads up to ${(limit / 1048576).toFixed(1)} MB`));
    input.value = "";
    return;
  }
  const dataUrl = await readFile(file);
  const base64 = dataUrl.slice(dataUrl.indexOf(",") + 1);
  const shown = (await drawable(dataUrl)) ? dataUrl : null;
  state.uploads += 1;
  const upload = { kind: "upload", dataUrl: shown, base64, name: file.name, upload: state.uploads };
  // the upload becomes the original only when the server read it: a broken file never does
  const ok = await searchBy({ image: { base64 } }, `images like your upload ${file.name}`, upload);
  if (!ok) input.value = "";
}

// --- the original ----------------------------------------------------------------------------------------

function setOriginal(original) {
  state.original = original;
  const box = $("original");
  box.classList.toggle("empty", !original);
  box.replaceChildren(...(render.originalView(original) || ["No original yet: pick a picture from step 1, or upload one."]));
  for (const card of document.querySelectorAll("#search-results .card")) {
    card.classList.toggle("picked", Boolean(original && original.kind === "id" && card.dataset.id === String(original.id)));
  }
  refreshStale();
  updateLink();
}

async function pickIndexed(id, info) {
  if (!info) {
    try {
      info = await getJSON(`images/${id}/meta`);
    } catch (err) {
      showError(err);
      return;
    }
  }
  setOriginal({ kind: "id", id, name: info.name, captions: info.captions });
  if (!$("cf-text").value && info.captions && info.captions.length) $("cf-text").value = info.captions[0];
  refreshStale();
  $("cf-panel").scrollIntoView({ behavior: "smooth", block: "start" });
}

function originalLabel() {
  const original = state.original;
  if (!original) return "";
  return original.kind === "id" ? render.imageLabel(original.id, original) : `your upload ${original.name}`;
}

// --- counterfactuals -------------------------------------------------------------------------------------

function syncModeFields() {
  const mode = document.querySelector('input[name="mode"]:checked').value;
  $("flip-fields").hidden = mode !== "flip";
  $("text-field").hidden = mode === "flip";
  const textSide = document.querySelector('input[name="side"][value="text"]');
  textSide.disabled = mode === "flip" || (state.info && state.info.captions === 0);
  if (textSide.disabled && textSide.checked) document.querySelector('input[name="side"][value="image"]').checked = true;
  syncTargets();
}

function syncTargets(wanted) {
  const labels = splitLabels($("cf-labels").value);
  const select = $("cf-target");
  const keep = wanted !== undefined ? wanted : select.value;
  const runnerUp = render.el("option", { value: "" }, "the runner-up (2nd most likely)");
  select.replaceChildren(runnerUp, ...labels.map((l) => render.el("option", { value: l }, l)));
  select.value = labels.includes(keep) ? keep : "";
}

async function runCounterfactuals() {
  let body;
  try {
    body = queryBody();
  } catch (err) {
    status("cf-status", err.message, true);
    refreshStale();
    return;
  }
  $("cf-go").disabled = true;
  const started = performance.now();
  await guarded("cf-status", "Finding counterfactuals… (the model re-scores every candidate)", async () => {
    const result = await postJSON("counterfactual", body);
    const queried = result.query && result.query.image;
    if (state.original.kind === "upload" && queried && Number.isInteger(queried.id)) {
      // the upload is a file of the index: treat it as that image (so the link can carry it)
      const info = (result.images || {})[String(queried.id)];
      body.image = { id: queried.id };
      setOriginal({ kind: "id", id: queried.id, name: info ? info.name : queried.path, captions: info ? info.captions : [] });
    }
    const target = result.mode === "flip" ? result.query.target : undefined;
    state.shown = { body, key: keyOf(body), result, originalLabel: originalLabel(), mapsBody: { ...body, target } };
    $("cf-results").replaceChildren(...counterfactualResults(result, state.original, handlers).filter(Boolean));
    const server = result.timings && result.timings.total ? ` (the engine: ${render.duration(result.timings.total * 1000)})` : "";
    status("cf-status", `Done in ${render.duration(performance.now() - started)}${server}: ${result.candidates} candidates re-scored.`);
    refreshStale();
    updateLink();
  });
  $("cf-go").disabled = false;
}

async function downloadReport() {
  if (!state.shown) return;
  $("report").disabled = true;
  await guarded("cf-status", "Writing the report (with a map per answer)…", async () => {
    const name = await download("report", { ...state.shown.body, maps: true }, "counterclip-report.html");
    status("cf-status", `Report saved as ${name}.`);
  });
  refreshStale();
}

// --- maps --------------------------------------------------------------------------------------------------

async function openMaps(item) {
  const dialog = $("maps-dialog");
  const shown = state.shown; // the answers' own query, whatever the form says now
  $("maps-title").textContent = mapsTitle(item, shown.mapsBody, shown.result.images || {});
  $("maps-body").replaceChildren();
  if (!dialog.open) dialog.showModal();
  if (state.info && !state.info.maps) {
    status("maps-status", "This index's model has no image tower to explain, so no maps can be drawn.", true);
    return;
  }
  busy("maps-status", "Computing the maps…");
  try {
    const answer = await postJSON("maps", { ...shown.mapsBody, k: undefined, item: item.id });
    $("maps-body").replaceChildren(...answer.maps.map(mapFigure));
    status("maps-status", "");
  } catch (err) {
    status("maps-status", err.message, true);
  }
}

// --- start -------------------------------------------------------------------------------------------------

function applyLink(link) {
  if (link.q) {
    $("search-text").value = link.q;
    $("search-find").value = link.find;
  }
  if (link.text) $("cf-text").value = link.text;
  if (link.side) document.querySelector(`input[name="side"][value="${link.side}"]`).checked = true;
  if (link.mode) document.querySelector(`input[name="mode"][value="${link.mode}"]`).checked = true;
  if (link.labels) $("cf-labels").value = link.labels.join(", ");
  if (link.k) $("cf-k").value = String(link.k);
  syncModeFields();
  if (link.target) syncTargets(link.target);
}

function wire() {
  $("search-form").addEventListener("submit", onSearch);
  $("upload").addEventListener("change", () => onUpload().catch(showError));
  $("cf-form").addEventListener("submit", (e) => {
    e.preventDefault();
    runCounterfactuals();
  });
  $("cf-rerun").addEventListener("click", runCounterfactuals);
  $("cf-form").addEventListener("input", refreshStale);
  $("cf-form").addEventListener("change", refreshStale);
  $("report").addEventListener("click", downloadReport);
  installQualityToggle($("cf-form"));
  $("message-close").addEventListener("click", clearError);
  wireDialog($("maps-dialog"), $("maps-close"));
  $("skip-link").addEventListener("click", (e) => {
    e.preventDefault();
    $("cf-title").focus();
    $("cf-panel").scrollIntoView({ block: "start" });
  });
  for (const input of document.querySelectorAll('input[name="mode"], input[name="side"]')) input.addEventListener("change", syncModeFields);
  $("cf-labels").addEventListener("input", () => syncTargets());
  $("token-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await signIn($("token-input").value);
      $("token-form").hidden = true;
      clearError();
      await boot();
    } catch (err) {
      showError(err);
    }
  });
}

async function boot() {
  try {
    state.info = await getJSON("info");
  } catch (err) {
    $("index-info").textContent = "not connected";
    showError(err);
    return;
  }
  const i = state.info;
  $("index-info").textContent = `index ${i.name}: ${i.images} images, ${i.captions} captions · model ${i.model}`;
  $("cf-text").maxLength = i.limits.max_text_chars;
  $("search-text").maxLength = i.limits.max_text_chars;
  const link = readLink();
  applyLink(link);
  if (link.image !== null) {
    try {
      const info = await getJSON(`images/${link.image}/meta`);
      setOriginal({ kind: "id", id: link.image, name: info.name, captions: info.captions });
    } catch (err) {
      showError(new ApiError(err.status, `The link's image #${link.image}: ${err.message}`));
    }
  }
  if (link.q) await searchBy({ text: link.q }, render.quoted(link.q));
  else if (link.image !== null && state.original) await searchBy({ image: { id: link.image } }, `images like ${originalLabel()}`);
  if (state.original && (link.text || link.mode === "flip")) {
    await runCounterfactuals();
    // one column (a phone): the link asked a question, so show its answers rather than the search
    if (window.matchMedia("(max-width: 900px)").matches) $("cf-panel").scrollIntoView({ block: "start" });
  }
}

wire();
boot();
