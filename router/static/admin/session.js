// The admin session: a token from `login`, kept in localStorage until it expires or the admin signs out.

const KEY = "llm-router.admin-session";

export function loadSession() {
  try {
    const raw = window.localStorage.getItem(KEY);
    if (!raw) return null;
    const session = JSON.parse(raw);
    if (!session || typeof session.token !== "string") return null;
    if (session.expiresAt && Date.parse(session.expiresAt) <= Date.now()) {
      clearSession();
      return null;
    }
    return session;
  } catch {
    return null;
  }
}

export function saveSession(token, expiresAt) {
  window.localStorage.setItem(KEY, JSON.stringify({ token, expiresAt }));
}

export function clearSession() {
  try {
    window.localStorage.removeItem(KEY);
  } catch {
    /* storage disabled */
  }
}

export function getToken() {
  const session = loadSession();
  return session ? session.token : null;
}

/** Milliseconds until the stored session expires (Infinity when it has no expiry), or 0 if none. */
export function msUntilExpiry() {
  const session = loadSession();
  if (!session) return 0;
  if (!session.expiresAt) return Infinity;
  return Math.max(0, Date.parse(session.expiresAt) - Date.now());
}
