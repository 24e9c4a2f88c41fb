// The manager's API with the operator's token, and its live event stream.

import { json } from "./format.js";
import { setText } from "./dom.js";

// -- the API, with the token ---------------------------------------------------

const TOKEN_KEY = "qworker_token"; // in sessionStorage: this origin's, this tab's

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

// The token goes in the Authorization header; no cookie carries it. A link the
// manager prints (#token=...) hands it over once, and leaves no trace in the URL.
function tokenFromLink() {
  const match = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (!match) return "";
  const rest = location.hash.replace(match[0], "").replace(/^#&/, "#");
  history.replaceState(null, "", rest === "#" ? location.pathname : rest);
  return decodeURIComponent(match[1]);
}

let token = "";
let tokenPrompt = null;

async function saveToken(value) {
  token = value;
  sessionStorage.setItem(TOKEN_KEY, value);
  // The event stream cannot send a header: the manager sets an HttpOnly cookie for it.
  await fetch("api/login", { method: "POST", headers: { Authorization: `Bearer ${value}`,
    "X-Qworker-Request": "1" }, credentials: "same-origin" }).catch(() => {});
}

// What this tab's token may do (GET /api/access): a viewer's page shows no control
// that changes anything (CSS hides [data-change]); the manager refuses them anyway.
export const access = { role: "operator", readOnly: false };

export async function loadAccess() {
  Object.assign(access, await api("access"));
  document.body.toggleAttribute("data-read-only", access.readOnly);
  const badge = document.getElementById("read-only");
  if (badge) badge.hidden = !access.readOnly;
}

// The token of this tab: handed over by a link, or kept from an earlier page.
export async function loadToken() {
  const linked = tokenFromLink();
  if (linked) await saveToken(linked);
  else token = sessionStorage.getItem(TOKEN_KEY) || "";
}

export function askToken(refused) {
  if (!tokenPrompt) {
    tokenPrompt = new Promise((resolve) => {
      const overlay = document.getElementById("token-overlay");
      const form = document.getElementById("token-form");
      const input = document.getElementById("token-input");
      const error = document.getElementById("token-error");
      error.hidden = !refused;
      setText(error, refused ? "That token was refused. Try again." : "");
      overlay.hidden = false;
      input.value = "";
      input.focus();
      form.onsubmit = async (event) => {
        event.preventDefault();
        const value = input.value.trim();
        if (!value) return;
        await saveToken(value);
        overlay.hidden = true;
        form.onsubmit = null;
        tokenPrompt = null;
        resolve();
        live.connect();
        loadAccess().catch(() => {});
      };
    });
  }
  return tokenPrompt;
}

export async function api(path, { method = "GET", params, body } = {}) {
  let url = `api/${path}`; // relative: works behind a proxy that adds a path prefix
  if (params) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value !== null && value !== undefined && value !== "") query.set(key, String(value));
    }
    if (query.toString()) url += `?${query}`;
  }
  for (;;) {
    const headers = { Accept: "application/json", "X-Qworker-Request": "1" };
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(url, {
        method, headers, credentials: "same-origin", cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      live.reachable(false);
      throw new ApiError(0, "cannot reach the manager");
    }
    live.reachable(true);
    if (response.status === 401) {
      await askToken(Boolean(token));
      continue;
    }
    if (response.status === 204) return null;
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) {
      const message = (data && (data.error || data.detail)) || `${response.status} ${response.statusText}`;
      throw new ApiError(response.status, typeof message === "string" ? message : json(message), data);
    }
    return data;
  }
}


// -- live events ----------------------------------------------------------------

export const EVENTS = [
  "worker:notification", "worker:initialize", "worker:stop", "worker:terminate",
  "worker:dead", "manager:start", "manager:stop",
];

export const live = {
  source: null,
  streamState: "connecting",
  apiUp: true,
  retryTimer: null,
  listeners: new Set(),

  connect() {
    clearTimeout(this.retryTimer);
    if (this.source) this.source.close();
    const source = new EventSource("api/events", { withCredentials: true });
    this.source = source;
    this.setStream("connecting");
    source.onopen = () => this.setStream("live");
    source.onerror = () => {
      if (source !== this.source) return;
      if (source.readyState === EventSource.CLOSED) {
        // Refused (a 401, a proxy) or the manager is gone: poll, and try again later.
        this.setStream("closed");
        this.retryTimer = setTimeout(() => this.connect(), 5000);
        api("health").catch(() => {});
      } else {
        this.setStream("connecting");
      }
    };
    for (const name of EVENTS) {
      source.addEventListener(name, (event) => {
        let body;
        try {
          body = JSON.parse(event.data);
        } catch {
          return;
        }
        for (const listener of this.listeners) listener(name, body);
      });
    }
  },

  sleep() {
    clearTimeout(this.retryTimer);
    if (this.source) this.source.close();
    this.source = null;
    this.setStream("closed");
  },

  reachable(up) {
    if (up === this.apiUp) return;
    this.apiUp = up;
    this.render();
  },

  setStream(state) {
    this.streamState = state;
    this.render();
  },

  render() {
    const el = document.getElementById("conn");
    let state;
    let text;
    let title;
    if (!this.apiUp) {
      [state, text, title] = ["offline", "Offline", "The manager does not answer; retrying"];
    } else if (this.streamState === "live") {
      [state, text, title] = ["live", "Live", "Receiving the manager's events as they happen"];
    } else if (this.streamState === "connecting") {
      [state, text, title] = ["connecting", "Connecting…", "Connecting to the event stream"];
    } else {
      [state, text, title] = ["polling", "Polling", "No event stream: refreshing every few seconds"];
    }
    el.dataset.state = state;
    el.title = title;
    setText(document.getElementById("conn-text"), text);
  },

  on(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  },
};
