// The runly HTTP API, called with the key the user entered. Paths are relative to the page, which the API
// itself serves: the dashboard and the API share one origin (and the page's CSP allows no other).

const KEY_STORAGE = "runly.apiKey";

export class ApiError extends Error {
  constructor(status, body, fallback) {
    super((body && body.message) || fallback || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
    this.field = body && body.field;
  }

  /** The gateway or the function refused the key itself (unknown, revoked), not an operation. */
  get keyRefused() {
    return this.status === 401 || (this.status === 403 && this.message === "Forbidden");
  }
}

export function storedKey() {
  try {
    return localStorage.getItem(KEY_STORAGE);
  } catch {
    return null; // storage disabled: the user signs in for this page only
  }
}

let sessionKey = storedKey();

export function currentKey() {
  return sessionKey;
}

export function signIn(key) {
  sessionKey = key;
  try {
    localStorage.setItem(KEY_STORAGE, key);
  } catch {
    // Kept in memory for this page when storage is not available.
  }
}

export function signOut() {
  sessionKey = null;
  try {
    localStorage.removeItem(KEY_STORAGE);
  } catch {
    // Nothing stored.
  }
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** JSON from the API; an error response throws ApiError with the API's code, message and field. */
export async function api(path, { method = "GET", body, headers = {}, key = sessionKey } = {}) {
  const sent = { Accept: "application/json", ...headers };
  if (key) sent.Authorization = `Bearer ${key}`;
  if (body !== undefined) sent["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path.replace(/^\//, ""), {
      method,
      headers: sent,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch (error) {
    throw new ApiError(0, null, `the API cannot be reached (${error.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, data, text.slice(0, 200));
  return data;
}

export const whoAmI = (key) => api("/me", { key });
