// The JavaScript fan-out of scripts/bench.sh (target `wsedge-jsroom-wN`, docs/benchmarks.md):
// the chat room of docs/examples/functions/chat.js reduced to what `wsedge-load fanout`
// speaks. Every socket on /room/<name> subscribes to the topic <name> when it opens, and
// every message it sends is published to that topic with socket.publish (everyone but the
// sender, as the built-in broadcast function with echo_to_sender = false), verbatim:
// binary stays binary, so the generator's sequence numbers and send times arrive intact.
// No JSON envelope and no presence messages (chat.js sends both), which would be counted as
// deliveries the generator cannot number.
export default {
  fetch(request) {
    const topic = new URL(request.url).pathname.split("/")[2];
    if (!topic) return new Response("connect to /room/<name>\n", { status: 404 });
    const { socket, response } = upgradeWebSocket(request);
    socket.onopen = () => socket.subscribe(topic);
    socket.onmessage = (event) => socket.publish(topic, event.data);
    return response;
  },
};
