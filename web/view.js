// DOM updates of the page: preview, progress, status line, error message and results.
// Focus moves to the results list or to the error message, so keyboard and screen reader
// users land on the outcome.

import { apiBaseUrl, apiUrl } from "./api.js";
import { describeError } from "./messages.js";
import { formatBytes } from "./photo.js";
import { isNoConfidentMatch, matchItem, NO_CONFIDENT_MATCH, summaryText } from "./results.js";

const byId = (id) => document.getElementById(id);

const view = {
  inputs: [byId("photo"), byId("camera")],
  preview: byId("preview"),
  previewImage: byId("preview-image"),
  previewCaption: byId("preview-caption"),
  progressBlock: byId("progress-block"),
  progressLabel: byId("progress-label"),
  progress: byId("progress"),
  progressText: byId("progress-text"),
  status: byId("status"),
  message: byId("message"),
  messageTitle: byId("message-title"),
  messageText: byId("message-text"),
  messageDetail: byId("message-detail"),
  resultsSection: byId("results-section"),
  results: byId("results"),
  note: byId("results-note"),
  noteTitle: byId("results-note-title"),
  noteText: byId("results-note-text"),
  meta: byId("results-meta"),
};

let previewUrl = null;

// A file that the browser cannot decode gets no preview instead of a broken image.
view.previewImage.addEventListener("error", () => {
  view.preview.hidden = true;
});

// Record the page's state: "ready", "busy", "results", "error" or "unconfigured". The
// photo inputs are disabled while busy and when the page has no API address.
export function setState(state) {
  const busy = state === "busy";
  for (const input of view.inputs) input.disabled = busy || state === "unconfigured";
  document.body.setAttribute("aria-busy", busy ? "true" : "false");
  document.body.dataset.state = state;
}

export function setStatus(text) {
  view.status.textContent = text;
}

// Show the upload progress bar at `fraction` (0 to 1), with an optional new label.
export function setProgress(fraction, label) {
  const percent = Math.round(fraction * 100);
  view.progressBlock.hidden = false;
  if (label) view.progressLabel.textContent = label;
  view.progress.value = percent;
  view.progressText.textContent = `${percent}%`;
}

// Show the chosen photo. The <img> applies the EXIF orientation (image-orientation: from-image).
export function showPreview(file) {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  view.previewImage.src = previewUrl;
  view.previewCaption.textContent = `${file.name || "Photo"} · ${formatBytes(file.size)}`;
  view.preview.hidden = false;
}

export function clearOutput() {
  view.message.hidden = true;
  view.resultsSection.hidden = true;
  view.progressBlock.hidden = true;
  view.preview.hidden = true;
  view.results.replaceChildren();
  setStatus("");
}

// Show the message for `error` (see messages.js) and move focus to it.
export function showError(error) {
  const { title, text, detail } = describeError(error);
  view.messageTitle.textContent = title;
  view.messageText.textContent = text;
  view.messageDetail.textContent = detail;
  view.messageDetail.hidden = !detail;
  view.message.hidden = false;
  view.progressBlock.hidden = true;
  setStatus("");
  view.message.focus();
}

// Show the ranked species of a POST /identify response and move focus to the list.
export function showResults(body) {
  const base = apiBaseUrl();
  const items = body.matches.map((match) => matchItem(match, (path) => apiUrl(path, base)));
  view.results.replaceChildren(...items);

  const uncertain = isNoConfidentMatch(body);
  view.note.hidden = !uncertain;
  view.noteTitle.textContent = NO_CONFIDENT_MATCH.title;
  view.noteText.textContent = NO_CONFIDENT_MATCH.text;
  if (uncertain) view.results.setAttribute("aria-describedby", "results-note");
  else view.results.removeAttribute("aria-describedby");

  view.meta.textContent = summaryText(body);
  view.progressBlock.hidden = true;
  view.resultsSection.hidden = false;

  const count = body.matches.length;
  setStatus(uncertain ? `${NO_CONFIDENT_MATCH.title}. The ${count} closest species are listed.` : `${count} species found.`);
  view.results.focus();
}
