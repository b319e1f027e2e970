// The Node.js `ws` echo server of scripts/bench.sh (target `node-ws`, docs/benchmarks.md):
// the comparison for wsedge's JavaScript echo (docs/examples/functions/echo.js). One
// process, so one thread of JavaScript; every message goes back as received, text as text,
// binary as binary; any path is accepted. `ws` as its README sets it up, plus its optional
// native `bufferutil` (masking), which the README recommends for speed.
//
//   node echo.mjs PORT        (--versions: print the versions and exit)
//
// scripts/bench.sh copies this file, package.json and package-lock.json into
// target/bench-node/, installs the pinned packages there with `npm ci --prefix`, and runs the
// copy, so `ws` resolves from target/bench-node/node_modules (never committed).
import { createRequire } from "node:module";
import { WebSocketServer } from "ws";

// Say which versions serve, and whether ws has bufferutil's native code (its own fallback,
// and ws's, are plain JavaScript).
const require = createRequire(import.meta.url);
let bufferutil;
try {
  const native = require("bufferutil").mask !== require("bufferutil/fallback.js").mask;
  bufferutil = `${require("bufferutil/package.json").version} (${native ? "native" : "JS fallback"})`;
} catch {
  bufferutil = "absent (ws masks in JS)";
}
const versions = `node ${process.version}, ws ${require("ws/package.json").version}, bufferutil ${bufferutil}`;
if (process.argv[2] === "--versions") {
  console.log(versions);
  process.exit(0);
}

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error("usage: node echo.mjs PORT | --versions");
  process.exit(2);
}

const wss = new WebSocketServer({ host: "127.0.0.1", port, perMessageDeflate: false });
wss.on("connection", (socket) => {
  socket.on("message", (data, isBinary) => socket.send(data, { binary: isBinary }));
  // A client that resets its connection (the floods end that way) is not a server error.
  socket.on("error", () => {});
});
wss.on("listening", () => {
  console.log(`node-ws: ${versions}, port ${port}`);
});
wss.on("error", (e) => {
  console.error(`node-ws: ${e.message}`);
  process.exit(1);
});
