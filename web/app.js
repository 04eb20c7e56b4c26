// The page's flow: check the chosen photo, show a preview, upload it to S3 through a
// presigned POST with a progress bar, identify it by key, then show the ranked species or
// an error message.

import { apiBaseUrl, identify, requestUpload, uploadToS3 } from "./api.js";
import { checkPhoto, checkSize } from "./photo.js";
import { clearOutput, setProgress, setState, setStatus, showError, showPreview, showResults } from "./view.js";

// The upload limit from the last POST /uploads response, checked before the next upload.
let knownMaxBytes = Number.POSITIVE_INFINITY;

async function identifyPhoto(file) {
  const contentType = await checkPhoto(file);
  checkSize(file, knownMaxBytes);
  showPreview(file);

  setStatus("Preparing the upload…");
  const form = await requestUpload(contentType);
  knownMaxBytes = form.max_bytes;
  checkSize(file, form.max_bytes);

  setProgress(0, "Uploading your photo");
  setStatus("Uploading your photo…");
  await uploadToS3(form, file, contentType, (fraction) => setProgress(fraction));

  setProgress(1, "Uploaded");
  setStatus("Identifying the plant…");
  return identify(form.key);
}

async function handleFile(file) {
  clearOutput();
  setState("busy");
  try {
    const body = await identifyPhoto(file);
    setState("results");
    showResults(body);
  } catch (error) {
    if (!error || !error.kind) console.error(error);
    setState("error");
    showError(error);
  }
}

function start() {
  const touch = window.matchMedia("(pointer: coarse)").matches || navigator.maxTouchPoints > 0;
  document.body.classList.toggle("can-capture", touch);

  const inputs = [document.getElementById("photo"), document.getElementById("camera")];
  for (const input of inputs) {
    input.addEventListener("change", () => {
      const file = input.files && input.files[0];
      // Clearing the value lets the same file be chosen again after an error.
      input.value = "";
      if (file) handleFile(file);
    });
  }
  document.getElementById("again").addEventListener("click", () => inputs[0].click());

  try {
    apiBaseUrl();
    setState("ready");
  } catch (error) {
    setState("unconfigured");
    showError(error);
  }
}

start();
