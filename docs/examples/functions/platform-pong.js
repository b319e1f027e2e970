// The edge platform's (Azion's) WebSocket API example, rewritten with the same calls: a
// WebSocket upgrade answers "pong" to every message and logs its life; any other request
// gets a page whose script connects back.
export default {
  async fetch(request, env, ctx) {
    if (request.headers.get("upgrade") === "websocket") {
      const { response, socket } = upgradeWebSocket(request);

      socket.addEventListener("open", () => {
        console.log("WebSocket open");
      });
      socket.addEventListener("message", (event) => {
        console.log(`received: ${event.data}`);
        socket.send("pong");
      });
      socket.addEventListener("close", () => {
        console.log("WebSocket closed");
      });
      socket.addEventListener("error", (error) => {
        console.error("WebSocket error:", error);
      });

      return response;
    }

    const page = `<!DOCTYPE html>
<html>
  <head><title>pong</title></head>
  <body>
    <h1>pong</h1>
    <script>
      const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + location.pathname);
      ws.onopen = () => ws.send("ping");
      ws.onmessage = (event) => console.log("from the edge:", event.data);
    </script>
  </body>
</html>
`;
    return new Response(page, {
      status: 200,
      headers: { "Content-Type": "text/html" },
    });
  },
};
