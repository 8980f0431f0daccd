// The load client of bench/relay.py: a Node `ws` client, so that neither end of the
// measured path is wsgate's own code.
//
//   node client.js MODE OPTIONS_JSON
//
// OPTIONS_JSON: {"url", "headers", "tls": {"ca", "servername", "ciphers"}, ...} and per mode:
//   echo       {"connections", "roundTrips", "size"}: each connection sends a binary
//              message of `size` bytes and waits for its echo, `roundTrips` times;
//              prints {seconds, msgsPerS, p50Ms, p99Ms, failures}
//   handshakes {"total", "concurrency"}: `total` sessions opened (101) and closed (close
//              handshake), `concurrency` at a time; prints {seconds, perS, failures}
//   storm      {"total", "timeoutS"}: `total` connections started at once; prints the
//              time until every one was served (opened) or refused, and the refusals
//   idle       {"total"}: opens `total` sessions, prints {"open": n}, holds them until
//              stdin closes, closes them, prints {"closed": n}
// A refusal is counted by its HTTP status ("401") or socket error code ("ECONNRESET").
// With "tls", the first session's negotiated protocol and cipher are printed too.
"use strict";
const tls = require("tls");
const WebSocket = require("ws");

const [mode, raw] = process.argv.slice(2);
const opts = JSON.parse(raw);
let negotiated = null;

// One TLS context for every connection (a context per connection would cost the client
// more than the handshake itself); no session resumption: every handshake is a full one.
const secureContext = opts.tls && tls.createSecureContext({
  ca: opts.tls.ca, ciphers: opts.tls.ciphers, minVersion: "TLSv1.3", maxVersion: "TLSv1.3",
});

function wsOptions() {
  const o = { headers: opts.headers || {}, perMessageDeflate: false, maxPayload: 64 << 20 };
  if (opts.tls) Object.assign(o, { secureContext, servername: opts.tls.servername });
  return o;
}

// Opens one session; calls done(ws) once open, fail(reason) if it never opens.
function open(done, fail) {
  let settled = false;
  const ws = new WebSocket(opts.url, wsOptions());
  ws.on("open", () => {
    settled = true;
    if (opts.tls && negotiated === null) {
      negotiated = { protocol: ws._socket.getProtocol(), cipher: ws._socket.getCipher().name };
    }
    done(ws);
  });
  ws.on("unexpected-response", (req, res) => {
    settled = true;
    req.destroy();
    fail(String(res.statusCode));
  });
  ws.on("error", (err) => {
    if (!settled) {
      settled = true;
      fail(err.code || err.message);
    }
  });
  return ws;
}

function count(tally, reason) {
  tally[reason] = (tally[reason] || 0) + 1;
}

function percentile(sorted, q) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))] : null;
}

function print(result) {
  if (negotiated) result.tls = negotiated;
  process.stdout.write(JSON.stringify(result) + "\n");
}

function closeAll(sockets) {
  return Promise.all(sockets.map((ws) => new Promise((resolve) => {
    if (ws.readyState === WebSocket.CLOSED) return resolve();
    ws.once("close", resolve);
    ws.close();
  })));
}

async function openMany(n, concurrency) {
  const sockets = [];
  const failures = {};
  let next = 0;
  async function worker() {
    while (next < n) {
      next++;
      await new Promise((resolve) => open((ws) => { sockets.push(ws); resolve(); },
                                           (reason) => { count(failures, reason); resolve(); }));
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { sockets, failures };
}

async function echo() {
  const { connections, roundTrips, size } = opts;
  const { sockets, failures } = await openMany(connections, 10);
  const payload = Buffer.alloc(size, 7);
  const latencies = new Float64Array(sockets.length * roundTrips);
  let filled = 0;
  const start = process.hrtime.bigint();
  await Promise.all(sockets.map((ws) => new Promise((resolve) => {
    let left = roundTrips;
    let sent = process.hrtime.bigint();
    ws.on("message", () => {
      const now = process.hrtime.bigint();
      latencies[filled++] = Number(now - sent) / 1e6;
      if (--left === 0) return resolve();
      sent = now;
      ws.send(payload);
    });
    ws.on("close", resolve);
    ws.send(payload);
  })));
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const done = Array.from(latencies.subarray(0, filled)).sort((a, b) => a - b);
  await closeAll(sockets);
  print({ seconds, msgsPerS: filled / seconds, p50Ms: percentile(done, 0.5),
          p99Ms: percentile(done, 0.99), messages: filled, failures });
}

async function handshakes() {
  const { total, concurrency } = opts;
  const failures = {};
  let next = 0;
  let served = 0;
  async function worker() {
    while (next < total) {
      next++;
      await new Promise((resolve) => {
        const ws = open(() => { served++; ws.close(); },
                        (reason) => { count(failures, reason); resolve(); });
        ws.on("close", resolve);
      });
    }
  }
  const start = process.hrtime.bigint();
  await Promise.all(Array.from({ length: concurrency }, worker));
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  print({ seconds, perS: served / seconds, served, failures });
}

async function storm() {
  const { total, timeoutS } = opts;
  const failures = {};
  const sockets = [];
  const times = [];
  let pending = total;
  const start = process.hrtime.bigint();
  let last = start;
  await new Promise((resolve) => {
    const timer = setTimeout(() => { if (pending) failures.timeout = pending; resolve(); },
                             timeoutS * 1000);
    const settle = () => {
      last = process.hrtime.bigint();
      times.push(Number(last - start) / 1e6);
      if (--pending === 0) { clearTimeout(timer); resolve(); }
    };
    for (let i = 0; i < total; i++) {
      sockets.push(open(settle, (reason) => { count(failures, reason); settle(); }));
    }
  });
  const seconds = Number(last - start) / 1e9;
  times.sort((a, b) => a - b);
  const served = sockets.filter((ws) => ws.readyState === WebSocket.OPEN);
  print({ seconds, served: served.length, failures, p50Ms: percentile(times, 0.5),
          p99Ms: percentile(times, 0.99) });
  await closeAll(served);
  for (const ws of sockets) ws.terminate();
}

async function idle() {
  const { sockets, failures } = await openMany(opts.total, 50);
  print({ open: sockets.length, failures });
  process.stdin.resume();
  await new Promise((resolve) => process.stdin.on("end", resolve));
  await closeAll(sockets);
  print({ closed: sockets.length });
}

const modes = { echo, handshakes, storm, idle };
modes[mode]().then(() => process.exit(0), (err) => {
  process.stderr.write(String(err && err.stack || err) + "\n");
  process.exit(1);
});
