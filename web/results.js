// Rendering of the ranked species from a POST /identify response. Every value from the
// service goes in through textContent or attributes, never as HTML.

export const NO_CONFIDENT_MATCH = {
  title: "No confident match",
  text: "None of the species looks similar enough to be sure. The closest ones are listed below; try a sharper photo of one leaf, flower or the bark, close up.",
};

// Return true when the response reports that no species matched with confidence, by
// `confident: false` or by `no_confident_match: true`.
export function isNoConfidentMatch(body) {
  return body.confident === false || body.no_confident_match === true;
}

// Return the score (cosine similarity, at most 1) as a percentage from 0 to 100.
export function scorePercent(score) {
  const value = Number(score);
  if (!Number.isFinite(value)) return 0;
  return Math.min(100, Math.max(0, value * 100));
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function displayName(match) {
  return match.scientific_name || match.common_name || `Plant ${match.plant_id}`;
}

function thumbnail(match, thumbnailUrl) {
  const placeholder = element("div", "thumb thumb-missing", "No reference photo");
  placeholder.setAttribute("aria-hidden", "true");
  if (!match.thumbnail_url) return placeholder;

  const image = element("img", "thumb");
  image.alt = `Reference photo of ${displayName(match)}`;
  image.width = 88;
  image.height = 88;
  image.decoding = "async";
  image.addEventListener("error", () => image.replaceWith(placeholder), { once: true });
  image.src = thumbnailUrl(match.thumbnail_url);
  return image;
}

function names(match) {
  const heading = element("p", "match-heading");
  const rank = element("span", "rank", String(match.rank));
  rank.prepend(element("span", "visually-hidden", "Rank "));
  heading.append(rank);

  const nameNode = element("span", match.scientific_name ? "scientific-name" : "common-name-only", displayName(match));
  if (match.scientific_name) nameNode.lang = "la";
  heading.append(nameNode);

  const lines = [heading];
  if (match.scientific_name && match.common_name) lines.push(element("p", "common-name", match.common_name));
  lines.push(element("p", "plant-id", `Plant id ${match.plant_id}`));
  return lines;
}

function scoreRow(match) {
  const percent = scorePercent(match.score);
  const row = element("div", "score");

  const bar = element("span", "score-bar");
  bar.setAttribute("aria-hidden", "true");
  const fill = element("span", "score-fill");
  fill.style.width = `${percent.toFixed(1)}%`;
  bar.append(fill);

  const value = element("span", "score-value", `${percent.toFixed(1)}%`);
  value.prepend(element("span", "visually-hidden", "Similarity "));
  row.append(bar, value);
  return row;
}

// Return one <li> for a match. `thumbnailUrl` turns the relative thumbnail_url into a URL.
export function matchItem(match, thumbnailUrl) {
  const item = element("li", "match");
  item.dataset.plantId = match.plant_id;

  const body = element("div", "match-body");
  body.append(...names(match), scoreRow(match));
  item.append(thumbnail(match, thumbnailUrl), body);
  return item;
}

// Return the line under the list: index version, views, time, and the test model warning.
export function summaryText(body) {
  const parts = [];
  if (body.index_version) parts.push(`Index ${body.index_version}`);
  if (body.views) parts.push(`${body.views} views`);
  if (Number.isFinite(body.elapsed_ms)) parts.push(`${Math.round(body.elapsed_ms)} ms`);
  let text = parts.join(" · ");
  if (body.test_model) text += ". The service runs a small test model, so this ranking is not meaningful.";
  return text;
}
