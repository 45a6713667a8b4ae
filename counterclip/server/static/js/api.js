// Calls to the counterclip JSON API. Every failure becomes an ApiError with the server's one-line message.

const TOKEN_KEY = "counterclip.token";

export class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

function headers(json) {
  const out = {};
  if (json) out["Content-Type"] = "application/json";
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) out["Authorization"] = "Bearer " + token;
  return out;
}

async function failure(response) {
  let detail = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.detail) detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) {
    /* not JSON: keep the status line */
  }
  const retry = response.headers.get("Retry-After");
  if (response.status === 503 && retry) detail += ` (retry in ${retry} s)`;
  return new ApiError(response.status, detail, retry ? Number(retry) : null);
}

async function call(method, path, body) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
  } catch (err) {
    throw new ApiError(0, "cannot reach the server: is `counterclip serve` still running?");
  }
  if (!response.ok) throw await failure(response);
  return response;
}

export async function getJSON(path) {
  return (await call("GET", path)).json();
}

export async function postJSON(path, body) {
  return (await call("POST", path, body)).json();
}

/** POST and save the answer as a file (the report); returns the file name. */
export async function download(path, body, fallbackName) {
  const response = await call("POST", path, body);
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="([^"]+)"/.exec(disposition);
  const name = match ? match[1] : fallbackName;
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  return name;
}

/** Keep the token for this tab and exchange it for a same-site cookie (so <img> requests carry it). */
export async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    await call("POST", "auth/session");
  } catch (err) {
    sessionStorage.removeItem(TOKEN_KEY);
    throw err;
  }
}

export function imageUrl(id) {
  return `images/${encodeURIComponent(id)}`;
}
