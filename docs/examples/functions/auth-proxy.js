// An authenticating proxy. The client proves itself with a token, in the query string
// (?token=...) or as a subprotocol ("token.<value>" in Sec-WebSocket-Protocol, for browsers
// that cannot set headers); only then is it upgraded, and the edge opens its own WebSocket
// to the origin. Messages are piped both ways; either side closing closes the other.
const ORIGIN = "ws://127.0.0.1:9001/ws";
const TOKENS = new Set(["let-me-in"]);

export default {
  fetch(request) {
    const url = new URL(request.url);
    const offered = (request.headers.get("sec-websocket-protocol") || "")
      .split(",")
      .map((p) => p.trim())
      .filter(Boolean);
    const asProtocol = offered.find((p) => p.startsWith("token."));
    const token = url.searchParams.get("token") ?? (asProtocol ? asProtocol.slice(6) : null);
    if (!TOKENS.has(token)) {
      return new Response("unauthorized\n", { status: 401 });
    }
    const { socket, response } = upgradeWebSocket(request, asProtocol ? { protocol: asProtocol } : {});

    const origin = new WebSocket(ORIGIN);
    const early = [];
    socket.onmessage = (event) => {
      if (origin.readyState === WebSocket.OPEN) origin.send(event.data);
      else early.push(event.data);
    };
    origin.onopen = () => {
      for (const message of early) origin.send(message);
      early.length = 0;
    };
    origin.onmessage = (event) => socket.send(event.data);
    origin.onclose = () => socket.close(1000, "origin closed");
    origin.onerror = () => console.warn("origin unreachable:", ORIGIN);
    socket.onclose = () => origin.close();
    return response;
  },
};
