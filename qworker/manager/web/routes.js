// The hash routes: a view and its filters are in the URL, so a link restores them.

// -- hash routes -------------------------------------------------------------

export function currentRoute() {
  const raw = location.hash.replace(/^#/, "") || "/overview";
  const at = raw.indexOf("?");
  let path = (at < 0 ? raw : raw.slice(0, at)).replace(/\/+$/, "") || "/overview";
  try {
    path = decodeURIComponent(path);
  } catch {
    // keep it as typed
  }
  const params = new URLSearchParams(at < 0 ? "" : raw.slice(at + 1));
  return { path, params };
}

export function href(path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") query.set(key, String(value));
  }
  const qs = query.toString();
  return `#${path}${qs ? `?${qs}` : ""}`;
}

export function jobHref(id) {
  return `#/jobs/${encodeURIComponent(id)}`;
}


export function workflowHref(id) {
  return `#/workflows/${encodeURIComponent(id)}`;
}
