// The JavaScript side of wsedge's function API (docs/functions.md, "JavaScript functions").
// Evaluated once per runtime before the user's module, as a script, with `__host` (the
// native bindings of engine/bindings.rs and engine/conn_bindings.rs) in scope; it returns
// the three entry points the engine calls (start a request, deliver a socket event, fire a
// timer) and deletes `__host` from the global object so user code cannot reach it.
(function (host) {
  "use strict";
  const G = globalThis;
  const def = (name, value) =>
    Object.defineProperty(G, name, { value, writable: true, configurable: true, enumerable: false });

  // ----- errors -------------------------------------------------------------------------
  class DOMException extends Error {
    constructor(message = "", name = "Error") {
      super(message);
      this.name = name;
    }
  }
  def("DOMException", DOMException);
  const describe = (e) => {
    if (e instanceof Error) {
      const stack = typeof e.stack === "string" ? e.stack : "";
      return `${e.name}: ${e.message}${stack ? "\n" + stack : ""}`;
    }
    try {
      return `uncaught ${JSON.stringify(e)}`;
    } catch (_) {
      return `uncaught ${String(e)}`;
    }
  };

  // ----- console ------------------------------------------------------------------------
  const format = (v) => {
    if (typeof v === "string") return v;
    if (v instanceof Error) return describe(v);
    if (typeof v === "function") return `[Function ${v.name || "anonymous"}]`;
    if (v === undefined) return "undefined";
    if (typeof v === "bigint") return `${v}n`;
    if (typeof v === "symbol") return v.toString();
    try {
      const s = JSON.stringify(v);
      return s === undefined ? String(v) : s;
    } catch (_) {
      return String(v);
    }
  };
  const logger = (level) => (...args) => {
    if (host.logOn(level)) host.log(level, args.map(format).join(" "));
  };
  def("console", {
    log: logger(2),
    info: logger(2),
    warn: logger(3),
    error: logger(4),
    debug: logger(1),
    trace: logger(0),
  });

  // ----- bytes and text -----------------------------------------------------------------
  // Binary data as a Uint8Array view (what the native side copies), or null.
  const view = (data) => {
    if (data instanceof Uint8Array) return data;
    if (data instanceof ArrayBuffer) return new Uint8Array(data);
    if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    return null;
  };
  class TextEncoder {
    get encoding() {
      return "utf-8";
    }
    encode(input = "") {
      return host.encode(String(input));
    }
  }
  class TextDecoder {
    constructor(label = "utf-8", options = {}) {
      const l = String(label).toLowerCase();
      if (l !== "utf-8" && l !== "utf8" && l !== "unicode-1-1-utf-8") {
        throw new RangeError(`TextDecoder: only utf-8 is supported, not ${label}`);
      }
      this.fatal = !!(options && options.fatal);
    }
    get encoding() {
      return "utf-8";
    }
    decode(input) {
      if (input === undefined) return "";
      const v = view(input);
      if (!v) throw new TypeError("TextDecoder.decode: expected an ArrayBuffer or a view");
      return host.decode(v, this.fatal);
    }
  }
  def("TextEncoder", TextEncoder);
  def("TextDecoder", TextDecoder);

  // ----- Headers ------------------------------------------------------------------------
  class Headers {
    constructor(init) {
      this._h = new Map(); // lower-case name -> [name, value]
      if (init instanceof Headers) {
        for (const [k, v] of init) this.append(k, v);
      } else if (Array.isArray(init)) {
        for (const [k, v] of init) this.append(k, v);
      } else if (init && typeof init === "object") {
        for (const k of Object.keys(init)) this.append(k, init[k]);
      }
    }
    append(name, value) {
      const k = String(name).toLowerCase();
      const v = String(value).trim();
      const had = this._h.get(k);
      this._h.set(k, had ? [had[0], `${had[1]}, ${v}`] : [String(name), v]);
    }
    set(name, value) {
      this._h.set(String(name).toLowerCase(), [String(name), String(value).trim()]);
    }
    get(name) {
      const e = this._h.get(String(name).toLowerCase());
      return e ? e[1] : null;
    }
    has(name) {
      return this._h.has(String(name).toLowerCase());
    }
    delete(name) {
      this._h.delete(String(name).toLowerCase());
    }
    forEach(fn, self) {
      for (const [k, v] of this) fn.call(self, v, k, this);
    }
    *entries() {
      const keys = [...this._h.keys()].sort();
      for (const k of keys) yield [k, this._h.get(k)[1]];
    }
    *keys() {
      for (const [k] of this.entries()) yield k;
    }
    *values() {
      for (const [, v] of this.entries()) yield v;
    }
    [Symbol.iterator]() {
      return this.entries();
    }
  }
  def("Headers", Headers);

  // ----- URL ----------------------------------------------------------------------------
  const PARTS = ["href", "protocol", "username", "password", "host", "hostname", "port", "pathname", "search", "hash", "origin"];
  class URLSearchParams {
    constructor(init) {
      this._p = [];
      this._url = null;
      if (typeof init === "string") this._p = host.formParse(init.startsWith("?") ? init.slice(1) : init);
      else if (init instanceof URLSearchParams) this._p = init._p.map((p) => [p[0], p[1]]);
      else if (Array.isArray(init)) this._p = init.map(([k, v]) => [String(k), String(v)]);
      else if (init && typeof init === "object") this._p = Object.keys(init).map((k) => [k, String(init[k])]);
    }
    _update() {
      if (this._url) this._url._setSearch(this.toString());
    }
    get size() {
      return this._p.length;
    }
    get(name) {
      const p = this._p.find((p) => p[0] === String(name));
      return p ? p[1] : null;
    }
    getAll(name) {
      return this._p.filter((p) => p[0] === String(name)).map((p) => p[1]);
    }
    has(name) {
      return this._p.some((p) => p[0] === String(name));
    }
    append(name, value) {
      this._p.push([String(name), String(value)]);
      this._update();
    }
    set(name, value) {
      const n = String(name);
      const i = this._p.findIndex((p) => p[0] === n);
      if (i < 0) this._p.push([n, String(value)]);
      else {
        this._p[i][1] = String(value);
        this._p = this._p.filter((p, j) => j <= i || p[0] !== n);
      }
      this._update();
    }
    delete(name) {
      this._p = this._p.filter((p) => p[0] !== String(name));
      this._update();
    }
    sort() {
      this._p.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
      this._update();
    }
    forEach(fn, self) {
      for (const [k, v] of this._p) fn.call(self, v, k, this);
    }
    *entries() {
      for (const [k, v] of this._p) yield [k, v];
    }
    *keys() {
      for (const [k] of this._p) yield k;
    }
    *values() {
      for (const [, v] of this._p) yield v;
    }
    [Symbol.iterator]() {
      return this.entries();
    }
    toString() {
      return host.formSerialize(this._p);
    }
  }
  class URL {
    constructor(input, base) {
      const parts = base === undefined ? host.urlParse(String(input)) : host.urlParse(String(input), String(base));
      if (!parts) throw new TypeError(`Invalid URL: ${input}`);
      this._set(parts);
    }
    static canParse(input, base) {
      return !!(base === undefined ? host.urlParse(String(input)) : host.urlParse(String(input), String(base)));
    }
    _set(parts) {
      this._u = parts;
      if (!this._q) {
        this._q = new URLSearchParams(parts[8]);
        this._q._url = this;
      } else {
        this._q._p = host.formParse(parts[8].startsWith("?") ? parts[8].slice(1) : parts[8]);
      }
    }
    _setSearch(search) {
      this._u = host.urlSet(this._u[0], 8, search);
    }
    get searchParams() {
      return this._q;
    }
    toString() {
      return this._u[0];
    }
    toJSON() {
      return this._u[0];
    }
  }
  PARTS.forEach((name, i) => {
    const desc = { get() { return this._u[i]; }, configurable: true };
    if (name !== "origin") desc.set = function (v) {
      const parts = host.urlSet(this._u[0], i, String(v));
      if (parts) this._set(parts);
      else if (i === 0) throw new TypeError(`Invalid URL: ${v}`);
    };
    Object.defineProperty(URL.prototype, name, desc);
  });
  def("URL", URL);
  def("URLSearchParams", URLSearchParams);

  // ----- Request and Response -----------------------------------------------------------
  const kConn = Symbol("conn");
  const kSocket = Symbol("socket");
  const bodyBytes = (body) => {
    if (body === null || body === undefined) return null;
    if (typeof body === "string") return body;
    const v = view(body);
    if (v) return v;
    if (body instanceof URLSearchParams) return body.toString();
    return String(body);
  };
  class Request {
    constructor(input, init = {}) {
      this.url = input instanceof Request ? input.url : String(input);
      this.method = (init.method || (input instanceof Request ? input.method : "GET")).toUpperCase();
      this.headers = new Headers(init.headers || (input instanceof Request ? input.headers : undefined));
      this[kConn] = input instanceof Request ? input[kConn] : undefined;
    }
    get body() {
      return null;
    }
    async text() {
      return "";
    }
    async json() {
      throw new SyntaxError("the request has no body");
    }
    async arrayBuffer() {
      return new ArrayBuffer(0);
    }
  }
  class Response {
    constructor(body = null, init = {}) {
      const status = init.status === undefined ? 200 : Number(init.status);
      if (!Number.isInteger(status) || ((status < 200 || status > 599) && status !== 101)) {
        throw new RangeError(`Response: status ${init.status} is out of range`);
      }
      this.status = status;
      this.statusText = init.statusText === undefined ? "" : String(init.statusText);
      this.headers = new Headers(init.headers);
      this._body = bodyBytes(body);
      this[kSocket] = undefined;
      if (init.webSocket) this[kSocket] = init.webSocket;
    }
    get ok() {
      return this.status >= 200 && this.status < 300;
    }
    get body() {
      return this._body;
    }
    async text() {
      const b = this._body;
      return b === null ? "" : typeof b === "string" ? b : host.decode(b, false);
    }
    async json() {
      return JSON.parse(await this.text());
    }
    static json(data, init = {}) {
      const headers = new Headers(init.headers);
      if (!headers.has("content-type")) headers.set("content-type", "application/json");
      return new Response(JSON.stringify(data), { ...init, headers });
    }
  }
  def("Request", Request);
  def("Response", Response);

  // ----- timers -------------------------------------------------------------------------
  // Tables by integer id are objects, not Maps: QuickJS-ng hashes a Map's number keys by
  // their high bits, so small integers share one bucket and every lookup walked the whole
  // table (a socket event cost grew with the sockets open). An object's integer keys hash
  // well.
  const timers = Object.create(null); // id -> { fn, args }
  const setTimer = (fn, ms, args, repeat) => {
    if (typeof fn !== "function") throw new TypeError("a timer needs a function");
    const delay = Math.max(0, Math.floor(Number(ms) || 0));
    const id = host.setTimer(delay, repeat);
    timers[id] = { fn, args };
    return id;
  };
  const clearTimer = (id) => {
    if (timers[id] !== undefined) {
      delete timers[id];
      host.clearTimer(id);
    }
  };
  def("setTimeout", (fn, ms, ...args) => setTimer(fn, ms, args, false));
  def("setInterval", (fn, ms, ...args) => setTimer(fn, ms, args, true));
  def("clearTimeout", clearTimer);
  def("clearInterval", clearTimer);
  const fire = (id, last) => {
    const t = timers[id];
    if (!t) return;
    if (last) delete timers[id];
    try {
      t.fn.apply(undefined, t.args);
    } catch (e) {
      host.fault(-1, describe(e));
    }
  };

  // ----- sockets ------------------------------------------------------------------------
  // A socket's id is its connection's id times two, plus one for a connection's peer.
  const sockets = Object.create(null); // by id, like `timers`
  const CONNECTING = 0, OPEN = 1, CLOSING = 2, CLOSED = 3;
  class Event {
    constructor(type, init = {}) {
      this.type = String(type);
      this.target = null;
      this.currentTarget = null;
      Object.assign(this, init);
    }
  }
  class MessageEvent extends Event {}
  // The engine's message events (one per message: the hot path), made without the classes'
  // generic constructors (a derived constructor, `super`, `Object.assign` of an init object
  // cost more than the echo itself): the same own properties in the same order as
  // `new MessageEvent("message", { data })` dispatched on `target`, the same prototype.
  function MessageFromEngine(target, data) {
    this.type = "message";
    this.target = target;
    this.currentTarget = target;
    this.data = data;
  }
  MessageFromEngine.prototype = MessageEvent.prototype;
  class CloseEvent extends Event {}
  class ErrorEvent extends Event {}
  def("Event", Event);
  def("MessageEvent", MessageEvent);
  def("CloseEvent", CloseEvent);
  def("ErrorEvent", ErrorEvent);

  const validClose = (code, reason) => {
    if (code !== undefined) {
      code = Number(code);
      if (!Number.isInteger(code) || (code !== 1000 && (code < 3000 || code > 4999))) {
        throw new DOMException(`close: code ${code} is not 1000 or 3000-4999`, "InvalidAccessError");
      }
    }
    reason = reason === undefined ? "" : String(reason);
    if (host.encode(reason).length > 123) {
      throw new DOMException("close: the reason is longer than 123 bytes", "SyntaxError");
    }
    return [code === undefined ? 1000 : code, reason];
  };
  const topicOf = (topic) => {
    const t = String(topic);
    if (!host.topicOk(t)) throw new TypeError(`not a valid topic name: ${t}`);
    return t;
  };

  // The connection whose socket's handler threw (async handlers: their rejection too).
  const guard = (socket, result) => {
    if (result && typeof result.then === "function") {
      result.then(undefined, (e) => host.fault(Math.floor(socket._id / 2), describe(e)));
    }
  };

  class WebSocket {
    constructor(url, protocols) {
      if (url === kSocket) {
        // A server socket (upgradeWebSocket) or a peer made by the engine.
        this._id = protocols.id;
        this._url = protocols.url;
        this._proto = protocols.protocol || "";
      } else {
        let list = protocols === undefined ? [] : Array.isArray(protocols) ? protocols.map(String) : [String(protocols)];
        const href = new URL(String(url)).href;
        this._id = host.connect(href, list);
        this._url = href;
        this._proto = "";
      }
      this._state = CONNECTING;
      this._l = null;
      this._type = "arraybuffer";
      sockets[this._id] = this;
    }
    get readyState() {
      return this._state;
    }
    get url() {
      return this._url;
    }
    get protocol() {
      return this._proto;
    }
    get extensions() {
      return "";
    }
    get binaryType() {
      return this._type;
    }
    set binaryType(v) {
      if (v === "arraybuffer" || v === "blob") this._type = v;
    }
    get bufferedAmount() {
      return host.buffered(this._id);
    }
    send(data) {
      if (this._state === CONNECTING) throw new DOMException("send: the socket is not open yet", "InvalidStateError");
      if (this._state !== OPEN) return;
      // A string or an ArrayBuffer (a received message's data) goes as it is.
      if (typeof data === "string" || data instanceof ArrayBuffer) return host.send(this._id, data);
      const v = view(data);
      if (!v) return host.send(this._id, String(data));
      host.send(this._id, v);
    }
    close(code, reason) {
      const [c, r] = validClose(code, reason);
      if (this._state === CLOSING || this._state === CLOSED) return;
      this._state = CLOSING;
      host.close(this._id, c, r);
    }
    subscribe(topic) {
      this._server("subscribe");
      host.subscribe(Math.floor(this._id / 2), topicOf(topic));
    }
    unsubscribe(topic) {
      this._server("unsubscribe");
      host.unsubscribe(Math.floor(this._id / 2), topicOf(topic));
    }
    isSubscribed(topic) {
      this._server("isSubscribed");
      return host.isSubscribed(Math.floor(this._id / 2), topicOf(topic));
    }
    publish(topic, data) {
      this._server("publish");
      host.publish(Math.floor(this._id / 2), topicOf(topic), typeof data === "string" ? data : view(data) || String(data));
    }
    _server(what) {
      if (this._id % 2 === 1) throw new TypeError(`${what}: only a server socket (upgradeWebSocket) has topics`);
    }
    addEventListener(type, fn, options) {
      if (typeof fn !== "function" && !(fn && typeof fn.handleEvent === "function")) return;
      const once = !!(options && typeof options === "object" && options.once);
      if (!this._l) this._l = {};
      const list = this._l[type] || (this._l[type] = []);
      if (!list.some((e) => e.fn === fn)) list.push({ fn, once });
      if (type === "gap") this._gap();
    }
    // The engine enters JavaScript for a gap only on a server socket that listens for it.
    _gap() {
      if (this._id % 2 === 0 && !this._gl) {
        this._gl = true;
        host.listenGap(this._id / 2);
      }
    }
    removeEventListener(type, fn) {
      const list = this._l && this._l[type];
      if (list) this._l[type] = list.filter((e) => e.fn !== fn);
    }
    dispatchEvent(event) {
      event.target = event.currentTarget = this;
      const handler = this["_on" + event.type];
      if (typeof handler === "function") guard(this, handler.call(this, event));
      this._listeners(event);
      return true;
    }
    _listeners(event) {
      const list = this._l && this._l[event.type];
      if (list) {
        for (const e of list.slice()) {
          if (e.once) this.removeEventListener(event.type, e.fn);
          guard(this, typeof e.fn === "function" ? e.fn.call(this, event) : e.fn.handleEvent(event));
        }
      }
    }
  }
  for (const [name, value] of [["CONNECTING", CONNECTING], ["OPEN", OPEN], ["CLOSING", CLOSING], ["CLOSED", CLOSED]]) {
    Object.defineProperty(WebSocket, name, { value, enumerable: true });
    Object.defineProperty(WebSocket.prototype, name, { value, enumerable: true });
  }
  for (const type of ["open", "message", "close", "error", "gap"]) {
    Object.defineProperty(WebSocket.prototype, "on" + type, {
      get() {
        return this["_on" + type] || null;
      },
      set(fn) {
        this["_on" + type] = typeof fn === "function" ? fn : null;
        if (type === "gap" && fn) this._gap();
      },
      configurable: true,
    });
  }
  def("WebSocket", WebSocket);

  // Socket events from the engine: 0 open, 1 text, 2 binary, 3 close (code, reason, clean),
  // 4 error (message), 5 gap (topic). Exceptions in a handler are reported for the socket's
  // connection.
  const event = (id, type, a, b, c) => {
    const s = sockets[id];
    if (!s) return;
    try {
      switch (type) {
        case 0:
          s._state = OPEN;
          s.dispatchEvent(new Event("open"));
          break;
        case 1:
        case 2: {
          // dispatchEvent's steps, for a message.
          const message = new MessageFromEngine(s, a);
          const handler = s._onmessage;
          if (typeof handler === "function") guard(s, handler.call(s, message));
          if (s._l !== null) s._listeners(message);
          break;
        }
        case 3:
          s._state = CLOSED;
          delete sockets[id];
          s.dispatchEvent(new CloseEvent("close", { code: a, reason: b, wasClean: c }));
          break;
        case 4:
          s.dispatchEvent(new ErrorEvent("error", { message: a, error: new Error(a) }));
          break;
        case 5:
          s.dispatchEvent(new Event("gap", { topic: a }));
          break;
      }
    } catch (e) {
      host.fault(Math.floor(id / 2), describe(e));
    }
  };

  // ----- upgrade ------------------------------------------------------------------------
  const upgradeWebSocket = (request, options = {}) => {
    const conn = request && request[kConn];
    if (conn === undefined) throw new TypeError("upgradeWebSocket: not a request this function was given");
    const upgrade = (request.headers.get("upgrade") || "").toLowerCase();
    if (!upgrade.split(",").some((t) => t.trim() === "websocket") || !host.isWebSocket(conn)) {
      throw new TypeError("upgradeWebSocket: the request is not a WebSocket upgrade");
    }
    if (sockets[conn * 2] !== undefined) throw new TypeError("upgradeWebSocket: this request was already upgraded");
    const protocol = options.protocol === undefined ? "" : String(options.protocol);
    const socket = new WebSocket(kSocket, { id: conn * 2, url: request.url, protocol });
    const response = new Response(null, { status: 101 });
    response[kSocket] = socket;
    socket._upgrade = [protocol, Number(options.idleTimeout) || 0, Number(options.maxLifetime) || 0];
    return { socket, response };
  };
  def("upgradeWebSocket", upgradeWebSocket);
  def("Deno", { upgradeWebSocket });

  // ----- channels -----------------------------------------------------------------------
  def("channels", {
    publish(topic, data) {
      host.publish(-1, topicOf(topic), typeof data === "string" ? data : view(data) || String(data));
    },
    subscribers(topic) {
      return host.subscribers(topicOf(topic));
    },
  });

  // ----- requests -----------------------------------------------------------------------
  let handler = null;
  const env = Object.freeze({});
  const ctx = Object.freeze({
    waitUntil(p) {
      if (p && typeof p.then === "function") p.then(undefined, (e) => host.fault(-1, describe(e)));
    },
    passThroughOnException() {},
  });
  const settle = (conn, res) => {
    if (res instanceof Response && res.status === 101) {
      const socket = res[kSocket];
      if (!socket || socket._id !== conn * 2 || !socket._upgrade) {
        return host.fault(conn, "fetch returned a 101 Response that is not this request's upgradeWebSocket response");
      }
      const [protocol, idle, life] = socket._upgrade;
      socket._upgrade = null;
      return host.upgrade(conn, protocol, idle, life);
    }
    if (!(res instanceof Response)) {
      return host.fault(conn, `fetch returned ${format(res)}, not a Response`);
    }
    const headers = [];
    for (const [k, v] of res.headers) headers.push(k, v);
    host.respond(conn, res.status, res.statusText, headers, res._body);
  };
  const start = (conn, method, url, flat) => {
    const headers = new Headers();
    for (let i = 0; i + 1 < flat.length; i += 2) headers.append(flat[i], flat[i + 1]);
    const request = new Request(url, { method, headers });
    request[kConn] = conn;
    let result;
    try {
      if (!handler) throw new TypeError("the module's default export has no fetch(request, env, ctx)");
      result = handler.fetch(request, env, ctx);
    } catch (e) {
      return host.fault(conn, describe(e));
    }
    if (result && typeof result.then === "function") {
      result.then((res) => settle(conn, res), (e) => host.fault(conn, describe(e)));
    } else {
      settle(conn, result);
    }
  };
  // A peer socket the engine made for a connection, or that `new WebSocket` made.
  const peer = (id) => sockets[id];
  const install = (module) => {
    handler = module && module.default;
    if (!handler || typeof handler.fetch !== "function") {
      throw new TypeError("the module's default export has no fetch(request, env, ctx)");
    }
  };

  const [fname, version, worker, workers] = host.info();
  def("wsedge", Object.freeze({ function: fname, version: Number(version), worker: Number(worker), workers: Number(workers) }));

  delete G.__host;
  return { start, event, fire, install, peer };
})(__host);
