// Errors of the page. `kind` picks the message shown to the person (see messages.js):
// empty, heic, unsupported_format, not_an_image, too_large, rejected, network, timeout,
// server, upload_expired, not_configured.

export class PageError extends Error {
  constructor(kind, detail = null, status = null) {
    super(typeof detail === "string" ? `${kind}: ${detail}` : kind);
    this.name = "PageError";
    this.kind = kind;
    this.detail = detail;
    this.status = status;
  }
}

// Map an API error body {"error": code, "message": text} with its HTTP status onto a PageError.
export function apiError(status, body) {
  const code = body && typeof body.error === "string" ? body.error : "";
  const message = body && typeof body.message === "string" ? body.message : "";

  if (status === 413 || code === "image_too_large") return new PageError("too_large", message, status);
  if (code === "unsupported_format" || status === 415) {
    return /hei[cf]/i.test(message) ? new PageError("heic", message, status) : new PageError("unsupported_format", message, status);
  }
  if (["not_an_image", "empty_file", "corrupt_image"].includes(code)) return new PageError("not_an_image", message, status);
  if (status >= 500) return new PageError("server", message, status);
  return new PageError("rejected", message, status);
}
