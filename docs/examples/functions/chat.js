// A chat with rooms and presence. Connect to /chat/<room>?name=<name>; what a client sends
// is published to its room as {"type":"message","from","text"}; joins and leaves are
// published as {"type":"join"|"leave","name","present"}.
//
// Rooms are channels, so a room spans every worker (and `wsedgectl publish` can post to
// one). `present` is channels.subscribers(room): the room's members on this worker.
import { roomOf, nameOf } from "./lib/names.js";

export default {
  fetch(request) {
    const url = new URL(request.url);
    const room = roomOf(url.pathname);
    if (!room) return new Response("no room: connect to /chat/<room>\n", { status: 404 });
    if (request.headers.get("upgrade") !== "websocket") {
      return new Response("a chat room: connect with a WebSocket client\n", { status: 426 });
    }
    const name = nameOf(url.searchParams.get("name"));
    const { socket, response } = upgradeWebSocket(request);

    socket.addEventListener("open", () => {
      socket.subscribe(room);
      const present = channels.subscribers(room);
      socket.send(JSON.stringify({ type: "welcome", room, name, present }));
      socket.publish(room, JSON.stringify({ type: "join", name, present }));
    });
    socket.addEventListener("message", (event) => {
      if (typeof event.data !== "string") return socket.close(4003, "text only");
      const text = event.data.slice(0, 2000);
      channels.publish(room, JSON.stringify({ type: "message", from: name, text }));
    });
    socket.addEventListener("close", () => {
      socket.unsubscribe(room);
      channels.publish(room, JSON.stringify({ type: "leave", name, present: channels.subscribers(room) }));
    });
    return response;
  },
};
