// A small client for the router's public GraphQL API.
//  - gql(query, variables): POST /graphql, resolves to `data` or throws an ApiError.
//  - subscribe(query, variables, handlers): graphql-transport-ws over one shared WebSocket,
//    with keep-alive pings and automatic reconnection (exponential backoff with jitter).

import { getToken } from "./session.js";

export const ENDPOINT = "/graphql";

/** An error from the API (or from reaching it), with a message fit to show to a person. */
export class ApiError extends Error {
  constructor(message, { code = null, extensions = {}, errors = [], status = 0 } = {}) {
    super(message);
    this.name = "ApiError";
    this.code = code; // UNAUTHENTICATED, FORBIDDEN, NOT_FOUND, BAD_USER_INPUT, CONFLICT, NETWORK, HTTP…
    this.extensions = extensions;
    this.errors = errors;
    this.status = status;
  }
}

const listeners = { unauthenticated: new Set() };

/** Called with the error whenever the API says the session is no longer valid. */
export function onUnauthenticated(fn) {
  listeners.unauthenticated.add(fn);
  return () => listeners.unauthenticated.delete(fn);
}

function authHeaders() {
  const token = getToken();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function errorFromGraphQL(errors, status) {
  const first = errors[0] || {};
  const extensions = first.extensions || {};
  const message = errors.map((e) => e.message).filter(Boolean).join("; ") || "The API returned an error.";
  return new ApiError(message, { code: extensions.code || null, extensions, errors, status });
}

/**
 * Runs a query or mutation. `options.anonymous` sends no token (used by login);
 * `options.quietAuth` doesn't broadcast UNAUTHENTICATED (also for login).
 */
export async function gql(query, variables = {}, options = {}) {
  let response;
  try {
    response = await fetch(ENDPOINT, {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        Accept: "application/graphql-response+json, application/json",
        ...(options.anonymous ? {} : authHeaders()),
      },
      body: JSON.stringify({ query, variables }),
      signal: options.signal,
    });
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new ApiError(`Cannot reach the router (${err && err.message ? err.message : "network error"}).`, {
      code: "NETWORK",
    });
  }
  let body = null;
  const text = await response.text();
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (body && Array.isArray(body.errors) && body.errors.length) {
    const error = errorFromGraphQL(body.errors, response.status);
    if (error.code === "UNAUTHENTICATED" && !options.quietAuth) {
      listeners.unauthenticated.forEach((fn) => fn(error));
    }
    throw error;
  }
  if (!response.ok || !body || !("data" in body)) {
    const detail = text && text.length < 300 ? `: ${text.trim()}` : "";
    const error = new ApiError(`The router answered HTTP ${response.status}${detail}`, {
      code: response.status === 401 ? "UNAUTHENTICATED" : "HTTP",
      status: response.status,
    });
    if (error.code === "UNAUTHENTICATED" && !options.quietAuth) {
      listeners.unauthenticated.forEach((fn) => fn(error));
    }
    throw error;
  }
  return body.data;
}

// ---------------------------------------------------------------------------------------------
// graphql-transport-ws

const PING_EVERY_MS = 15000;
const PONG_TIMEOUT_MS = 8000;
const IDLE_CLOSE_MS = 3000;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15000;

class SubscriptionClient {
  constructor(url) {
    this.url = url;
    this.ws = null;
    this.acked = false;
    this.subs = new Map(); // our id -> {query, variables, handlers, wireId}
    this.nextId = 1;
    this.attempt = 0;
    this.reconnectTimer = null;
    this.pingTimer = null;
    this.pongTimer = null;
    this.idleTimer = null;
    this.status = "idle"; // idle | connecting | connected | waiting | failed
    this.statusListeners = new Set();
    this.retryAt = null;
    this.downSince = null; // ms: since when there is no connection (a drop, or a failed first try); null while connected
    this.everConnected = false;
  }

  onStatus(fn) {
    this.statusListeners.add(fn);
    fn(this.status, this.statusInfo());
    return () => this.statusListeners.delete(fn);
  }

  statusInfo() {
    return { retryAt: this.retryAt, attempt: this.attempt, downSince: this.downSince, everConnected: this.everConnected };
  }

  setStatus(status, info = {}) {
    this.status = status;
    if (info.retryAt !== undefined) this.retryAt = info.retryAt;
    this.statusListeners.forEach((fn) => fn(status, { ...this.statusInfo(), ...info }));
  }

  subscribe(query, variables, handlers) {
    const id = String(this.nextId++);
    this.subs.set(id, { query, variables, handlers, wireId: null });
    clearTimeout(this.idleTimer);
    if (!this.ws) this.connect();
    else if (this.acked) this.sendSubscribe(id);
    return () => this.unsubscribe(id);
  }

  unsubscribe(id) {
    const sub = this.subs.get(id);
    if (!sub) return;
    this.subs.delete(id);
    if (sub.wireId && this.acked) this.send({ id: sub.wireId, type: "complete" });
    if (this.subs.size === 0) {
      clearTimeout(this.idleTimer);
      this.idleTimer = setTimeout(() => {
        if (this.subs.size === 0) this.close();
      }, IDLE_CLOSE_MS);
    }
  }

  /** Drops the connection for good (sign-out); subscriptions stay registered but get nothing. */
  close() {
    clearTimeout(this.reconnectTimer);
    this.stopPings();
    const ws = this.ws;
    this.ws = null;
    this.acked = false;
    if (ws) {
      ws.onclose = null;
      ws.onmessage = null;
      ws.onerror = null;
      try {
        ws.close(1000, "Normal Closure");
      } catch {
        /* already closed */
      }
    }
    this.downSince = null;
    this.setStatus("idle", { retryAt: null });
  }

  /** Drops and re-opens the connection now (e.g. after signing in again). */
  restart() {
    this.close();
    this.attempt = 0;
    if (this.subs.size) this.connect();
  }

  connect() {
    clearTimeout(this.reconnectTimer);
    this.setStatus("connecting", { retryAt: null });
    let ws;
    try {
      ws = new WebSocket(this.url, "graphql-transport-ws");
    } catch (err) {
      this.scheduleReconnect(`cannot open WebSocket: ${err.message}`);
      return;
    }
    this.ws = ws;
    this.acked = false;
    ws.onopen = () => {
      const token = getToken();
      this.send({ type: "connection_init", payload: token ? { Authorization: `Bearer ${token}` } : {} });
    };
    ws.onmessage = (event) => this.handle(event.data);
    ws.onerror = () => {
      /* onclose follows and decides */
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.acked = false;
      this.stopPings();
      for (const sub of this.subs.values()) sub.wireId = null;
      if (event.code === 4401 || event.code === 4403) {
        const error = new ApiError(
          event.code === 4401 ? "The live feed was refused: sign in again." : "The live feed was refused.",
          { code: event.code === 4401 ? "UNAUTHENTICATED" : "FORBIDDEN" },
        );
        if (this.downSince === null) this.downSince = Date.now();
        this.setStatus("failed", { reason: error.message, retryAt: null });
        for (const sub of this.subs.values()) sub.handlers.error && sub.handlers.error(error);
        if (event.code === 4401) listeners.unauthenticated.forEach((fn) => fn(error));
        return;
      }
      if (this.subs.size === 0) {
        this.setStatus("idle", { retryAt: null });
        return;
      }
      this.scheduleReconnect(event.reason || `connection closed (code ${event.code})`);
    };
  }

  scheduleReconnect(reason) {
    if (this.downSince === null) this.downSince = Date.now();
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    const delay = Math.round(base / 2 + Math.random() * (base / 2));
    this.attempt += 1;
    const retryAt = Date.now() + delay;
    this.setStatus("waiting", { reason, retryAt });
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  sendSubscribe(id) {
    const sub = this.subs.get(id);
    if (!sub) return;
    sub.wireId = `${id}.${this.attempt}.${Math.random().toString(36).slice(2, 8)}`;
    this.send({ id: sub.wireId, type: "subscribe", payload: { query: sub.query, variables: sub.variables } });
  }

  findByWireId(wireId) {
    for (const [id, sub] of this.subs) if (sub.wireId === wireId) return [id, sub];
    return [null, null];
  }

  startPings() {
    this.stopPings();
    this.pingTimer = setInterval(() => {
      this.send({ type: "ping" });
      clearTimeout(this.pongTimer);
      this.pongTimer = setTimeout(() => {
        // No answer: the connection is dead even if the socket doesn't know yet.
        if (this.ws) this.ws.close(4000, "pong timeout");
      }, PONG_TIMEOUT_MS);
    }, PING_EVERY_MS);
  }

  stopPings() {
    clearInterval(this.pingTimer);
    clearTimeout(this.pongTimer);
  }

  handle(raw) {
    let message;
    try {
      message = JSON.parse(raw);
    } catch {
      return;
    }
    switch (message.type) {
      case "connection_ack": {
        this.acked = true;
        const reconnected = this.attempt > 0 || this.downSince !== null;
        this.attempt = 0;
        this.downSince = null;
        this.everConnected = true;
        this.setStatus("connected", { retryAt: null });
        for (const [id, sub] of this.subs) {
          this.sendSubscribe(id);
          if (reconnected && sub.handlers.reconnected) sub.handlers.reconnected();
        }
        this.startPings();
        break;
      }
      case "ping":
        this.send({ type: "pong" });
        break;
      case "pong":
        clearTimeout(this.pongTimer);
        break;
      case "next": {
        const [, sub] = this.findByWireId(message.id);
        if (!sub) break;
        const payload = message.payload || {};
        if (payload.errors && payload.errors.length) {
          sub.handlers.error && sub.handlers.error(errorFromGraphQL(payload.errors, 0));
        }
        if (payload.data) sub.handlers.next && sub.handlers.next(payload.data);
        break;
      }
      case "error": {
        const [id, sub] = this.findByWireId(message.id);
        if (!sub) break;
        const errors = Array.isArray(message.payload) ? message.payload : [message.payload || {}];
        const error = errorFromGraphQL(errors, 0);
        this.subs.delete(id);
        sub.handlers.error && sub.handlers.error(error);
        if (error.code === "UNAUTHENTICATED") listeners.unauthenticated.forEach((fn) => fn(error));
        break;
      }
      case "complete": {
        const [id, sub] = this.findByWireId(message.id);
        if (!sub) break;
        this.subs.delete(id);
        sub.handlers.complete && sub.handlers.complete();
        break;
      }
      default:
        break;
    }
  }
}

function wsUrl() {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}${ENDPOINT}`;
}

export const subscriptions = new SubscriptionClient(wsUrl());

/**
 * Subscribes; handlers: {next(data), error(err), complete(), reconnected()}. Returns an unsubscribe
 * function. The subscription survives dropped connections: it is re-sent after every reconnect.
 */
export function subscribe(query, variables, handlers) {
  return subscriptions.subscribe(query, variables, handlers);
}
