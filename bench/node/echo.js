// The upstream of bench/relay.py: a Node `ws` echo server, neither ours nor nginx's.
//
//   node echo.js PORT [TLS_PORT CERT KEY]
//
// Echoes every message as it came (text or binary), no compression. With TLS_PORT it
// also serves wss:// there with CERT and KEY (the direct path of the TLS figures).
// Listens on 127.0.0.1 with a backlog of 4096 (the kernel caps it at somaxconn), so a
// reconnect storm is not refused by the upstream. Prints one JSON line once listening:
// {"port": N, "tls_port": N|null}. Stops on SIGTERM.
"use strict";
const fs = require("fs");
const http = require("http");
const https = require("https");
const { WebSocketServer } = require("ws");

const BACKLOG = 4096;

function echo(server) {
  const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 64 << 20 });
  wss.on("connection", (ws) => {
    ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary }));
    ws.on("error", () => {});
  });
  return wss;
}

function listen(server, port) {
  return new Promise((resolve) =>
    server.listen({ host: "127.0.0.1", port, backlog: BACKLOG }, () => resolve(server.address().port)));
}

async function main() {
  const [port, tlsPort, cert, key] = process.argv.slice(2);
  const plain = http.createServer();
  echo(plain);
  const bound = await listen(plain, Number(port || 0));
  let tlsBound = null;
  if (tlsPort !== undefined) {
    const secure = https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) });
    echo(secure);
    tlsBound = await listen(secure, Number(tlsPort));
  }
  process.stdout.write(JSON.stringify({ port: bound, tls_port: tlsBound }) + "\n");
}

process.on("SIGTERM", () => process.exit(0));
main();
