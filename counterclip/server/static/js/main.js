// The page: search (text, upload, click), pick an original, counterfactuals, maps, report, deep links.

import { ApiError, download, getJSON, postJSON, signIn } from "./api.js";
import { readLink, splitLabels, writeLink } from "./link.js";
import * as render from "./render.js";
import { installQualityToggle, withQuality } from "./quality.js";

const $ = (id) => document.getElementById(id);

const state = {
  info: null,
  original: null, // {kind: "id", id, name, captions} | {kind: "upload", dataUrl, base64, name}
  lastQuery: null, // the body of the last counterfactual request (for maps and the report)
  lastResult: null,
  search: { q: null, find: "images" },
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

async function guarded(statusId, label, work) {
  clearError();
  busy(statusId, label);
  try {
    await work();
  } catch (err) {
    status(statusId, err.message || String(err), true);
    showError(err);
  }
}

// --- the link in the address bar -----------------------------------------------------------------------

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

function updateLink(withQuery) {
  const form = currentForm();
  const image = state.original && state.original.kind === "id" ? state.original.id : null;
  writeLink({
    q: state.search.q,
    find: state.search.find,
    image,
    ...(withQuery ? form : { text: null, side: null, mode: null }),
  });
}

// --- search ----------------------------------------------------------------------------------------------

const handlers = {
  pick: (id, info) => pickIndexed(id, info),
  similar: (id) => searchBy({ image: { id } }, `images like #${id}`),
  useText: (text) => {
    $("cf-text").value = text;
    $("cf-text").focus();
  },
  maps: (item) => openMaps(item),
};

async function searchBy(body, label) {
  const find = body.text !== undefined ? $("search-find").value : "images";
  await guarded("search-status", `Searching for ${label}…`, async () => {
    const result = await postJSON("search", { ...body, k: 24, collection: find });
    const picked = state.original && state.original.kind === "id" ? state.original.id : null;
    $("search-results").replaceChildren(...render.searchResults(result, handlers, picked));
    status("search-status", `${result.items.length} result(s) for ${label}.`);
    state.search = body.text !== undefined ? { q: body.text, find } : { q: null, find: "images" };
    updateLink(state.lastQuery !== null);
  });
}

function onSearch(event) {
  event.preventDefault();
  const q = $("search-text").value.trim();
  if (!q) {
    status("search-status", "Type what to look for first.", true);
    return;
  }
  searchBy({ text: q }, `\u201c${q}\u201d`);
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

async function onUpload() {
  const file = $("upload").files[0];
  if (!file) return;
  const limit = state.info ? state.info.limits.max_upload_bytes : Infinity;
  if (file.size > limit) {
    showError(new Error(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB; this server takes uploads up to ${(limit / 1048576).toFixed(1)} MB`));
    return;
  }
  const dataUrl = await readFile(file);
  const base64 = dataUrl.slice(dataUrl.indexOf(",") + 1);
  setOriginal({ kind: "upload", dataUrl, base64, name: file.name });
  await searchBy({ image: { base64 } }, file.name);
}

// --- the original ----------------------------------------------------------------------------------------

function setOriginal(original) {
  state.original = original;
  const box = $("original");
  box.classList.toggle("empty", !original);
  box.replaceChildren(...(render.originalView(original) || ["No original yet: click a picture from step 1, or upload one."]));
  for (const card of document.querySelectorAll("#search-results .card")) {
    card.classList.toggle("picked", original && original.kind === "id" && card.dataset.id === String(original.id));
  }
  $("report").disabled = true;
  updateLink(false);
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
  $("cf-panel").scrollIntoView({ behavior: "smooth", block: "start" });
}

function imageRef() {
  if (!state.original) return null;
  return state.original.kind === "id" ? { id: state.original.id } : { base64: state.original.base64 };
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
  const keep = wanted || select.value;
  select.replaceChildren(...labels.map((l) => render.el("option", { value: l }, l)));
  if (labels.includes(keep)) select.value = keep;
  else if (labels.length) select.value = labels[labels.length - 1];
}

function queryBody() {
  const form = currentForm();
  const image = imageRef();
  if (!image) throw new Error("Pick an original first: click a picture in step 1, or upload one.");
  const body = { image, side: form.side, mode: form.mode, k: Math.min(Math.max(form.k, 1), 20) };
  if (form.mode === "flip") {
    if (form.labels.length < 2) throw new Error("Flip needs at least two labels, separated by commas.");
    body.labels = form.labels;
    body.target = form.target || form.labels[form.labels.length - 1];
  } else {
    if (!form.text) throw new Error("Type the text whose score should change.");
    body.text = form.text;
  }
  return withQuality(body);
}

async function runCounterfactuals() {
  let body;
  try {
    body = queryBody();
  } catch (err) {
    status("cf-status", err.message, true);
    return;
  }
  $("cf-go").disabled = true;
  await guarded("cf-status", "Finding counterfactuals… (the model re-scores every candidate)", async () => {
    const result = await postJSON("counterfactual", body);
    state.lastQuery = body;
    state.lastResult = result;
    const queried = result.query && result.query.image;
    if (state.original.kind === "upload" && queried && Number.isInteger(queried.id)) {
      // the upload is a file of the index: treat it as that image (so the link can carry it)
      const info = (result.images || {})[String(queried.id)];
      setOriginal({ kind: "id", id: queried.id, name: info ? info.name : queried.path, captions: info ? info.captions : [] });
      body.image = { id: queried.id };
    }
    $("cf-results").replaceChildren(...render.counterfactualResults(result, state.original, handlers).filter(Boolean));
    const seconds = result.timings && result.timings.total ? ` in ${result.timings.total.toFixed(1)} s` : "";
    status("cf-status", `Done${seconds}: ${result.candidates} candidates re-scored.`);
    $("report").disabled = false;
    updateLink(true);
  });
  $("cf-go").disabled = false;
}

async function downloadReport() {
  if (!state.lastQuery) return;
  $("report").disabled = true;
  await guarded("cf-status", "Writing the report (with a map per answer)…", async () => {
    const name = await download("report", { ...state.lastQuery, maps: true }, "counterclip-report.html");
    status("cf-status", `Report saved as ${name}.`);
  });
  $("report").disabled = false;
}

// --- maps --------------------------------------------------------------------------------------------------

async function openMaps(item) {
  const dialog = $("maps-dialog");
  const query = state.lastQuery.mode === "flip" ? state.lastQuery.target : state.lastQuery.text;
  $("maps-title").textContent = item.kind === "caption"
    ? `Why \u201c${item.text}\u201d? Maps for this image`
    : `Why ${item.path}? Maps for \u201c${query}\u201d`;
  $("maps-body").replaceChildren();
  if (!dialog.open) dialog.showModal();
  if (state.info && !state.info.maps) {
    status("maps-status", "This index's model has no ViT image tower, so no relevance maps can be drawn.", true);
    return;
  }
  busy("maps-status", "Computing the maps…");
  try {
    const answer = await postJSON("maps", { ...state.lastQuery, k: undefined, item: item.id });
    $("maps-body").replaceChildren(...answer.maps.map(render.mapFigure));
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

async function start() {
  $("search-form").addEventListener("submit", onSearch);
  $("upload").addEventListener("change", () => onUpload().catch(showError));
  $("cf-form").addEventListener("submit", (e) => {
    e.preventDefault();
    runCounterfactuals();
  });
  $("report").addEventListener("click", downloadReport);
  installQualityToggle($("cf-form"));
  $("message-close").addEventListener("click", clearError);
  $("maps-close").addEventListener("click", () => $("maps-dialog").close());
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
  await boot();
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
      showError(err);
    }
  }
  if (link.q) await searchBy({ text: link.q }, `\u201c${link.q}\u201d`);
  else if (link.image !== null && state.original) await searchBy({ image: { id: link.image } }, `images like #${link.image}`);
  if (state.original && (link.text || link.mode === "flip")) await runCounterfactuals();
}

start();
