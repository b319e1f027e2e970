// The edge platform's (Azion's) migration-guide WebSocket example, rewritten with the same
// calls: upgrade, prefix every message with "received: ", refuse anything else with 400.
export default {
  async fetch(request) {
    if (request.headers.get("upgrade") === "websocket") {
      const { response, socket } = upgradeWebSocket(request);
      socket.addEventListener("message", (event) => {
        socket.send("received: " + event.data);
      });
      return response;
    }
    return new Response("Expected WebSocket upgrade", { status: 400 });
  },
};
