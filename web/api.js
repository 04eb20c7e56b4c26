// Calls to the identification API and the presigned upload to S3.
//
// A photo goes straight from the browser to the upload bucket: POST /uploads returns a
// presigned POST form, the photo is sent to S3 with that form, and POST /identify then
// names the uploaded key. The page never uses bucket credentials.

import { apiError, PageError } from "./errors.js";

const REQUEST_TIMEOUT_MS = 30000;
const IDENTIFY_TIMEOUT_MS = 90000;
const UPLOAD_TIMEOUT_MS = 180000;

// Return the API base URL from config.js without a trailing slash ("" means this page's
// origin), or throw PageError("not_configured").
export function apiBaseUrl(config = window.PLANT_ID_CONFIG) {
  if (!config || typeof config.apiBaseUrl !== "string") throw new PageError("not_configured");
  return config.apiBaseUrl.replace(/\/+$/, "");
}

// Return the absolute URL of an API path such as "/identify" or a match's thumbnail_url.
export function apiUrl(path, base = apiBaseUrl()) {
  return `${base}${path.startsWith("/") ? "" : "/"}${path}`;
}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

async function postJson(path, payload, timeoutMs) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  let response;
  try {
    response = await fetch(apiUrl(path), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(payload),
      signal: controller.signal,
    });
  } catch (error) {
    throw new PageError(error.name === "AbortError" ? "timeout" : "network", error.message);
  } finally {
    clearTimeout(timer);
  }

  const body = await readJson(response);
  if (!response.ok) throw apiError(response.status, body);
  if (body === null) throw new PageError("server", "the response is not JSON", response.status);
  return body;
}

// Ask POST /uploads for a presigned form: {url, fields, key, expires_in, max_bytes}.
export function requestUpload(contentType) {
  return postJson("/uploads", { content_type: contentType }, REQUEST_TIMEOUT_MS);
}

// Identify an uploaded photo by its key; returns the POST /identify response body.
export function identify(key) {
  return postJson("/identify", { key }, IDENTIFY_TIMEOUT_MS);
}

// Read S3's XML error code (such as EntityTooLarge) from a failed form upload.
function s3ErrorCode(xhr) {
  const match = /<Code>([^<]+)<\/Code>/.exec(xhr.responseText || "");
  return match ? match[1] : "";
}

function uploadError(xhr) {
  const code = s3ErrorCode(xhr);
  if (code === "EntityTooLarge") return new PageError("too_large", "the upload bucket rejected the photo as too large", xhr.status);
  if (code === "AccessDenied" && /expired/i.test(xhr.responseText)) return new PageError("upload_expired");
  if (xhr.status >= 500) return new PageError("server", `upload failed: ${code || xhr.statusText}`, xhr.status);
  return new PageError("rejected", `upload failed: ${code || `HTTP ${xhr.status}`}`, xhr.status);
}

// Send `file` to S3 with the presigned form. The form's fields go first and unchanged
// (they include the signed Content-Type), then the photo as the last field `file`.
// `onProgress` receives the fraction sent, from 0 to 1.
export function uploadToS3(form, file, contentType, onProgress) {
  return new Promise((resolve, reject) => {
    const body = new FormData();
    for (const [name, value] of Object.entries(form.fields)) body.append(name, value);
    body.append("file", new Blob([file], { type: contentType }), file.name || "photo");

    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.url);
    xhr.timeout = UPLOAD_TIMEOUT_MS;
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        onProgress(1);
        resolve();
      } else {
        reject(uploadError(xhr));
      }
    });
    xhr.addEventListener("error", () => reject(new PageError("network", "the upload to storage failed")));
    xhr.addEventListener("timeout", () => reject(new PageError("timeout", "the upload timed out")));
    xhr.send(body);
  });
}
