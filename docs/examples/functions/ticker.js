// A ticker: every second, one worker publishes the time on the "ticks" channel; every
// client subscribed to it (on any worker) receives it straight from the edge. Module code
// runs on every worker: `wsedge.worker === 0` makes the ticker run once per host.
const EVERY_MS = 1000;
let seq = 0;

if (wsedge.worker === 0) {
  setInterval(() => {
    seq += 1;
    channels.publish("ticks", JSON.stringify({ seq, at: new Date().toISOString() }));
  }, EVERY_MS);
}

export default {
  fetch(request) {
    if (request.headers.get("upgrade") !== "websocket") {
      return new Response("the ticker: connect with a WebSocket client\n", { status: 426 });
    }
    const { socket, response } = upgradeWebSocket(request);
    socket.onopen = () => socket.subscribe("ticks");
    return response;
  },
};
