// The text shown for each kind of PageError: a title, what to do, and the service's own
// message (when there is one) as a detail line.

import { formatBytes } from "./photo.js";

export const HEIC_FIX =
  "HEIC photos are not supported; on iPhone choose Settings > Camera > Formats > Most Compatible, or export as JPEG";

const ACCEPTED = "Use a JPEG, PNG or WebP photo.";

function serviceDetail(detail) {
  return typeof detail === "string" && detail ? `The service said: ${detail}` : "";
}

function tooLarge(detail) {
  if (detail && typeof detail === "object") {
    let size = formatBytes(detail.size);
    let limit = formatBytes(detail.maxBytes);
    // Sizes just over the limit round to the same text, so show them in bytes.
    if (size === limit) {
      size = `${detail.size.toLocaleString("en")} bytes`;
      limit = `${detail.maxBytes.toLocaleString("en")} bytes`;
    }
    return {
      title: "Photo too large",
      text: `This photo is ${size}, over the limit of ${limit}. Choose a smaller photo, or take it at a lower resolution.`,
      detail: "",
    };
  }
  return {
    title: "Photo too large",
    text: "This photo is over the size limit of the service. Choose a smaller photo, or take it at a lower resolution.",
    detail: serviceDetail(detail),
  };
}

function unsupported(detail) {
  if (detail && typeof detail === "object") {
    return { title: "Format not supported", text: `${detail.format} files are not supported. ${ACCEPTED}`, detail: "" };
  }
  return { title: "Format not supported", text: `This photo's format is not supported. ${ACCEPTED}`, detail: serviceDetail(detail) };
}

function notAnImage(detail) {
  const name = detail && typeof detail === "object" && detail.name ? `${detail.name} is` : "This file is";
  return {
    title: "Not an image",
    text: `${name} not a photo that can be read, or it is damaged. ${ACCEPTED}`,
    detail: serviceDetail(detail),
  };
}

function server(error) {
  const status = error.status ? ` (HTTP ${error.status})` : "";
  return {
    title: "Service error",
    text: `The identification service had a problem${status}. Try again in a minute.`,
    detail: serviceDetail(error.detail),
  };
}

// Return {title, text, detail} for an error thrown anywhere in the page's flow.
export function describeError(error) {
  const kind = error && error.kind ? error.kind : "unexpected";
  const detail = error ? error.detail : null;

  switch (kind) {
    case "empty":
      return { title: "Empty file", text: `The file is empty (0 bytes). ${ACCEPTED}`, detail: "" };
    case "heic":
      return { title: "HEIC format not supported", text: `${HEIC_FIX}.`, detail: "" };
    case "unsupported_format":
      return unsupported(detail);
    case "not_an_image":
      return notAnImage(detail);
    case "too_large":
      return tooLarge(detail);
    case "rejected":
      return { title: "Photo rejected", text: "The service could not use this photo.", detail: serviceDetail(detail) };
    case "network":
      return {
        title: "No connection",
        text: "The identification service could not be reached. Check your internet connection and try again.",
        detail: "",
      };
    case "timeout":
      return { title: "No response", text: "The identification service did not respond in time. Try again.", detail: "" };
    case "server":
      return server(error);
    case "upload_expired":
      return { title: "Upload expired", text: "The upload form expired before the photo was sent. Choose the photo again.", detail: "" };
    case "not_configured":
      return {
        title: "Page not configured",
        text: "This page does not know the address of the identification service: config.js is missing or has no apiBaseUrl.",
        detail: "",
      };
    default:
      return { title: "Something went wrong", text: "The photo could not be identified. Try again.", detail: String(error && error.message ? error.message : error) };
  }
}
