// The boards page of `replaylog serve`: every feature's work packages, lanes as columns.
// It reads the server's JSON API and draws it again every few seconds (`?interval=MS`).
// Data from events is shown with textContent only, never as markup.
"use strict";

const LANES = ["planned", "claimed", "in_progress", "for_review", "in_review",
               "approved", "done", "blocked", "canceled"];
const TOKEN_KEY = "replaylog-token";
const params = new URLSearchParams(location.search);
const interval = Math.max(200, Number(params.get("interval")) || 3000);

class Unauthorized extends Error {}

// An answer the server gave on purpose (4xx with its own message), as opposed to a
// server or network that cannot answer now.
class Refused extends Error {
  constructor(path, status, message) {
    super(path + ": " + status + (message ? " " + message : ""));
    this.status = status;
    this.reason = message;
  }
}

async function getJSON(path) {
  const headers = { "Accept": "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = "Bearer " + token;
  // Relative paths: the page keeps working under a path prefix.
  const response = await fetch(path, { headers, cache: "no-store" });
  if (response.status === 401) throw new Unauthorized();
  if (response.status >= 400 && response.status < 500 && response.status !== 408 &&
      response.status !== 429) {
    let message = "";
    try { message = (await response.json()).error || ""; } catch (_) { /* no JSON */ }
    throw new Refused(path, response.status, message);
  }
  if (!response.ok) throw new Error(path + ": " + response.status);
  return response.json();
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const child of children) node.append(child);
  return node;
}

function actorText(actor) {
  if (actor == null) return "";
  if (typeof actor === "string") return actor;
  return [actor.role, actor.profile, actor.tool, actor.model].filter(Boolean).join(" / ");
}

function drawFeature(feature, board) {
  const section = el("section", { "class": "feature", "data-feature": feature });
  const total = board.event_count != null ? board.event_count : "?";
  section.append(el("h2", {}, feature + " (" + total + " events)"));
  const lanes = el("div", { "class": "lanes" });
  const packages = Object.entries(board.work_packages || {}).sort(([a], [b]) => a < b ? -1 : 1);
  for (const lane of LANES) {
    const column = el("div", { "class": "lane", "data-feature": feature, "data-lane": lane });
    column.append(el("h3", {}, lane.replace("_", " ")));
    for (const [wp, state] of packages) {
      if (state.lane !== lane) continue;
      column.append(el("div", { "class": "wp", "data-wp": wp },
        el("div", { "class": "id" }, wp),
        el("div", { "class": "actor" }, actorText(state.actor))));
    }
    lanes.append(column);
  }
  section.append(lanes);
  return section;
}

function drawUnavailable(feature, error) {
  const section = el("section", { "class": "feature unavailable", "data-feature": feature });
  section.append(el("h2", {}, feature));
  section.append(el("p", { "class": "error" },
    "no board: " + (error.reason || "the server answered " + error.status)));
  return section;
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const { features } = await getJSON("api/v1/features");
    const drawn = [];
    for (const { feature } of features) {
      try {
        const board = await getJSON("api/v1/features/" + encodeURIComponent(feature) + "/board");
        drawn.push(drawFeature(feature, board));
      } catch (error) {
        // One feature whose board the server cannot make is shown as such; the others
        // are still drawn.
        if (!(error instanceof Refused)) throw error;
        drawn.push(drawUnavailable(feature, error));
      }
    }
    document.getElementById("boards").replaceChildren(...drawn);
    document.getElementById("login").hidden = true;
    status.className = "";
    status.textContent = features.length + " feature(s), updated " +
      new Date().toLocaleTimeString();
    document.body.dataset.updated = String(Date.now());
  } catch (error) {
    if (error instanceof Unauthorized) {
      sessionStorage.removeItem(TOKEN_KEY);
      document.getElementById("login").hidden = false;
      status.className = "error";
      status.textContent = "a token is needed";
      return; // wait for the form
    }
    status.className = "error";
    status.textContent = "cannot reach the server (" + error.message + "), retrying";
  }
  setTimeout(refresh, interval);
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
  document.getElementById("token").value = "";
  refresh();
});

refresh();
