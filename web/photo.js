// Client-side checks of a chosen photo: its format from the first bytes, and its size.
// The browser's File.type comes from the file name and is often empty or wrong on phones,
// so the format is read from the file's signature instead.

import { PageError } from "./errors.js";

// Formats that a presigned upload accepts, as the Content-Type that POST /uploads signs.
export const UPLOAD_TYPES = ["image/jpeg", "image/png", "image/webp"];

const HEADER_BYTES = 64;

// ISO base media file brands (bytes 8..12 after "ftyp") of HEIC/HEIF and AVIF photos.
const HEIF_BRANDS = ["heic", "heix", "hevc", "hevx", "heim", "heis", "mif1", "msf1"];
const AVIF_BRANDS = ["avif", "avis"];

function ascii(bytes, start, end) {
  return String.fromCharCode(...bytes.slice(start, end));
}

function startsWith(bytes, signature) {
  return signature.every((value, position) => bytes[position] === value);
}

// Return the format of the bytes: "image/jpeg", "image/png", "image/webp", "heic", "avif",
// "gif", "bmp", "tiff", "svg", or null when no image signature matches.
export function detectFormat(bytes) {
  if (startsWith(bytes, [0xff, 0xd8, 0xff])) return "image/jpeg";
  if (startsWith(bytes, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return "image/png";
  if (ascii(bytes, 0, 4) === "RIFF" && ascii(bytes, 8, 12) === "WEBP") return "image/webp";

  if (ascii(bytes, 4, 8) === "ftyp") {
    const brand = ascii(bytes, 8, 12);
    if (HEIF_BRANDS.includes(brand)) return "heic";
    if (AVIF_BRANDS.includes(brand)) return "avif";
  }

  if (ascii(bytes, 0, 4) === "GIF8") return "gif";
  if (ascii(bytes, 0, 2) === "BM") return "bmp";
  if (ascii(bytes, 0, 4) === "II*\u0000" || ascii(bytes, 0, 4) === "MM\u0000*") return "tiff";

  const text = ascii(bytes, 0, bytes.length).replace(/^\uFEFF?\s*/, "").slice(0, 5).toLowerCase();
  if (text.startsWith("<svg") || text.startsWith("<?xml")) return "svg";
  return null;
}

function looksLikeHeic(file) {
  return /^image\/hei[cf]/i.test(file.type) || /\.hei[cf]$/i.test(file.name);
}

// Return the Content-Type to upload `file` with, or throw a PageError that names the problem.
export async function checkPhoto(file) {
  if (file.size === 0) {
    throw new PageError("empty", { name: file.name });
  }

  const header = new Uint8Array(await file.slice(0, HEADER_BYTES).arrayBuffer());
  const format = detectFormat(header);

  if (UPLOAD_TYPES.includes(format)) return format;
  if (format === "heic" || (format === null && looksLikeHeic(file))) throw new PageError("heic");
  if (format !== null) throw new PageError("unsupported_format", { format: format.toUpperCase() });
  throw new PageError("not_an_image", { name: file.name });
}

// Throw a PageError when `file` is larger than the upload limit of `maxBytes`.
export function checkSize(file, maxBytes) {
  if (Number.isFinite(maxBytes) && file.size > maxBytes) {
    throw new PageError("too_large", { size: file.size, maxBytes });
  }
}

export function formatBytes(count) {
  // A no-break space keeps the number and its unit on one line.
  if (count >= 1024 * 1024) return `${(count / (1024 * 1024)).toFixed(1)}\u00a0MB`;
  if (count >= 1024) return `${Math.round(count / 1024)}\u00a0kB`;
  return `${count}\u00a0bytes`;
}
