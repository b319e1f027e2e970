// Echo: every message goes back to its sender, text as text, binary as binary.
export default {
  fetch(request) {
    if ((request.headers.get("upgrade") || "").toLowerCase() !== "websocket") {
      return new Response("a WebSocket echo: connect with a WebSocket client\n", { status: 426 });
    }
    const { socket, response } = upgradeWebSocket(request);
    socket.onmessage = (event) => socket.send(event.data);
    return response;
  },
};
