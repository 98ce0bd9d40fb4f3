// Ensures the client holds up under load: a bounded number of connections
// (an idle one giving its place to a newcomer, the excess answered "error
// busy" only while every place has a line in flight, so that connections
// that reconnect at once cannot keep send.ts out), that no sender holds a
// place for long (a connection with every line answered is ended soon after;
// the 60 s bound is in cap.test.ts), flat memory under 1,000 idle connections and a burst of
// URLs, every URL answered once; and that the server reaps every opener.

import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { test } from "node:test";
import type { TestContext } from "node:test";
import { execFileSync } from "node:child_process";
import {
  childrenOf, killIfAlive, memoryOf, needs, opened, rawConnection, run, send, startScript, startSession, waitForExit, waitUntil,
} from "./helpers.ts";
import type { Session } from "./helpers.ts";

test("64 connections at once; a 65th takes the place of the one idle longest, which is answered `error busy` and closed", { timeout: 30_000 }, async (t) => {
  const session = await startSession(t);
  const idle: Array<ReturnType<typeof rawConnection>> = [];
  for (let i = 0; i < 64; i++) {
    const raw = rawConnection(t, session.socket);
    await raw.connected;
    idle.push(raw);
  }
  const newcomer = rawConnection(t, session.socket);
  newcomer.connection.end("https://example.org/in-an-idle-place\n");
  await waitUntil(newcomer.closed, 5000, "the 65th connection's answer");
  assert.equal(newcomer.received(), "ok\n");
  await waitUntil(idle[0].closed, 5000, "the connection idle longest to be closed");
  assert.equal(idle[0].received(), "error busy\n");
  assert.ok(idle.slice(1).every((raw) => !raw.closed() && raw.received() === ""), "another accepted connection was disturbed");
  assert.deepEqual(opened(session.browserLog).map(([, url]) => url), ["https://example.org/in-an-idle-place"]);
});

/**
 * The client's accepted connections, each with the bytes it has not read yet
 * (ss, Linux). Its socket was bound in PATH.d/ and renamed to PATH, and ss
 * names it by where it was bound.
 */
function unreadOnPath(path: string): number[] {
  const lines = execFileSync("ss", ["-xnH"], { encoding: "utf8" }).split("\n");
  return lines.map((line) => line.trim().split(/\s+/)).filter((fields) => fields[4]?.startsWith(`${path}.d/`)).map((fields) => Number(fields[2]));
}

/**
 * Stops the server (a stopped server answers nothing) and puts a line in
 * flight on each of the client's 64 places: every line read by the client.
 */
async function everyPlaceInFlight(t: TestContext, session: Session) {
  process.kill(session.server.pid, "SIGSTOP");
  t.after(() => killIfAlive(session.server.pid, "SIGCONT"));
  const inFlight: Array<ReturnType<typeof rawConnection>> = [];
  for (let i = 0; i < 64; i++) {
    const raw = rawConnection(t, session.socket);
    await raw.connected;
    raw.connection.write(`https://example.org/in-flight/${i}\n`);
    inFlight.push(raw);
  }
  await waitUntil(() => {
    const unread = unreadOnPath(session.socket);
    return unread.length === 64 && unread.every((bytes) => bytes === 0);
  }, 10_000, `the client to have read every line (${JSON.stringify(unreadOnPath(session.socket))})`);
  return inFlight;
}

const HAS_SS = existsSync("/usr/bin/ss") || existsSync("/bin/ss") ? undefined : "ss (Debian: iproute2)";

test("with a line in flight on each of the 64 places, a 65th connection is answered `error busy` and closed, and none of the 64 is disturbed", { timeout: 30_000 }, async (t) => {
  if (!needs(t, HAS_SS)) return;
  const session = await startSession(t, ["--rate", "0"]);
  const inFlight = await everyPlaceInFlight(t, session);
  const excess = rawConnection(t, session.socket);
  await waitUntil(excess.closed, 5000, "the 65th connection to be closed");
  assert.equal(excess.received(), "error busy\n");
  assert.ok(inFlight.every((raw) => !raw.closed() && raw.received() === ""), "a connection with a line in flight was disturbed");
  process.kill(session.server.pid, "SIGCONT");
  await waitUntil(() => inFlight.every((raw) => raw.received() === "ok\n"), 15_000, "each of the 64 lines answered ok");
});

test("send.ts meeting a client busy on every place sends again until its timeout: its URL opens once, when a place frees", { timeout: 60_000 }, async (t) => {
  if (!needs(t, HAS_SS)) return;
  const session = await startSession(t, ["--rate", "0"]);
  const inFlight = await everyPlaceInFlight(t, session);
  // Busy past its timeout: a refusal, the URL printed to be opened by hand.
  const short = await run(t, "send.ts", ["--timeout", "1", "https://example.org/gave-up"], { env: session.env });
  assert.equal(short.code, 65, short.stderr);
  assert.equal(short.stderr, 'send: refused "https://example.org/gave-up": busy\nhttps://example.org/gave-up');
  const url = "https://example.org/after-waiting";
  const sender = startScript(t, "send.ts", ["--verbose", "--timeout", "30", url], { env: session.env, stdin: "ignore" });
  await sender.stderr.waitFor(/^send: the client is busy \(a URL in flight on each of its places\): sending again until the timeout$/, 15_000);
  assert.ok(sender.alive(), "send.ts gave up on busy");
  process.kill(session.server.pid, "SIGCONT");
  const exit = await waitForExit(sender, 35_000, "send.ts");
  assert.equal(exit.code, 0, sender.stderr.text());
  await waitUntil(() => inFlight.every((raw) => raw.received() === "ok\n"), 15_000, "each of the 64 lines answered ok");
  assert.equal(opened(session.browserLog).filter(([, each]) => each === url).length, 1);
  assert.equal(sender.stderr.seen.filter((line) => /client is busy/.test(line)).length, 1, sender.stderr.text());
});

/** A buggy helper: count connections, each one reconnecting at once when the client ends it, until the test ends. */
function reconnectingConnections(t: TestContext, socket: string, count: number) {
  const tally = { connections: 0, busy: 0, stopped: false };
  t.after(() => { tally.stopped = true; });
  const open = () => {
    if (tally.stopped) return;
    const raw = rawConnection(t, socket);
    tally.connections++;
    raw.connection.on("close", () => {
      if (raw.received().startsWith("error busy")) tally.busy++;
      setImmediate(open);
    });
  };
  for (let i = 0; i < count; i++) open();
  return tally;
}

test("64 idle connections that reconnect at once whenever ended do not hold the places: send.ts gets through, each URL opened once", { timeout: 60_000 }, async (t) => {
  const session = await startSession(t);
  const helper = reconnectingConnections(t, session.socket, 64);
  await waitUntil(() => helper.connections >= 64, 5000, "the 64 connections");
  const urls = ["https://example.org/past-the-holders/1", "https://example.org/past-the-holders/2", "https://example.org/past-the-holders/3"];
  for (const url of urls) {
    const result = await send(t, session, [url]);
    assert.equal(result.code, 0, result.stderr);
  }
  assert.deepEqual(opened(session.browserLog).map(([, url]) => url), urls);
  assert.ok(helper.busy >= urls.length, `the holders were never told busy (${helper.busy})`);
});

test("memory stays flat under 1,000 connections opened and left idle", { timeout: 60_000 }, async (t) => {
  const session = await startSession(t);
  const before = memoryOf(session.clientPid);
  // In batches, so that the kernel's backlog of unaccepted connections never overflows.
  const connections: Array<ReturnType<typeof rawConnection>> = [];
  for (let batch = 0; batch < 20; batch++) {
    const opened = Array.from({ length: 50 }, () => rawConnection(t, session.socket));
    await Promise.all(opened.map((raw) => raw.connected));
    connections.push(...opened);
  }
  // Each beyond 64 takes the place of the one idle longest; wait until the client has ended every one given up.
  await waitUntil(() => connections.filter((raw) => raw.closed()).length === 1000 - 64, 20_000, "936 busy answers");
  assert.ok(connections.filter((raw) => raw.closed()).every((raw) => raw.received() === "error busy\n"));
  const after = memoryOf(session.clientPid);
  t.diagnostic(`client RSS ${before.rss.toFixed(1)} MiB before, ${after.rss.toFixed(1)} MiB with 1,000 connections tried; peak ${after.peak.toFixed(1)} MiB`);
  assert.ok(after.rss - before.rss < 40, `RSS grew by ${(after.rss - before.rss).toFixed(1)} MiB`);
  for (const raw of connections) raw.connection.destroy();
  const result = await send(t, session, ["https://example.org/after-the-flood"]);
  assert.equal(result.code, 0, result.stderr);
});

// 1,000, not 2,000 as in 0.4.0: the opens must fit in a connection's 60 s, and
// a busy 2-core machine running other tests took longer than that for 2,000.
test("1,000 URLs in two bursts of 500 over 10 connections each: every one answered ok once, memory flat", { timeout: 120_000 }, async (t) => {
  const session = await startSession(t, ["--rate", "0", "--browser", "true"]);
  const before = memoryOf(session.clientPid);
  const perConnection = 50;
  // Two bursts, not one of 1,000: a connection lives until its last answer,
  // and one burst of 1,000 took 35 to 50 s, close to the client's 60 s cap.
  for (const burst of [0, 1]) {
    const results = await Promise.all(Array.from({ length: 10 }, (_, c) => new Promise<string[]>((resolve, reject) => {
      const raw = rawConnection(t, session.socket);
      raw.connection.end(Array.from({ length: perConnection }, (_, i) => `https://example.org/${burst}/${c}/${i}\n`).join(""));
      const timer = setTimeout(() => reject(new Error(`connection ${c} got ${raw.received().split("\n").length - 1} answers`)), 60_000);
      raw.connection.on("close", () => { clearTimeout(timer); resolve(raw.received().split("\n").filter(Boolean)); });
    })));
    for (const answers of results) assert.deepEqual(answers, Array(perConnection).fill("ok"));
  }
  await waitUntil(() => session.server.stderr.seen.filter((line) => / opened "/.test(line)).length === 1000, 30_000, "1,000 opens logged");
  const after = memoryOf(session.clientPid);
  t.diagnostic(`client RSS ${before.rss.toFixed(1)} MiB before the burst, ${after.rss.toFixed(1)} MiB after; peak ${after.peak.toFixed(1)} MiB`);
  assert.ok(after.peak - before.rss < 60, `peak RSS ${after.peak.toFixed(1)} MiB from ${before.rss.toFixed(1)} MiB`);
});

test("a burst of opens leaves no zombie: the server reaps every opener", { timeout: 60_000 }, async (t) => {
  const session = await startSession(t, ["--rate", "0"]);
  const urls = Array.from({ length: 50 }, (_, i) => `https://example.org/reap/${i}`);
  const result = await send(t, session, urls);
  assert.equal(result.code, 0, result.stderr);
  await waitUntil(() => session.server.stderr.seen.filter((line) => / opened "/.test(line)).length === 50, 10_000, "50 opens logged");
  // Every opener ends at once: then none of them may be left a zombie.
  const openers = () => childrenOf(session.server.pid).filter((pid) => {
    try {
      return /fake-browser\.sh/.test(readFileSync(`/proc/${pid}/cmdline`, "utf8")) || /^\d+ \(.*\) Z/s.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
    } catch {
      return false;
    }
  });
  await waitUntil(() => openers().length === 0, 10_000, `every opener reaped; left: ${openers().join(", ")}`);
});

test("64 drip-feeding connections (a line, then another every 5 s) do not hold the places: send.ts gets through", { timeout: 30_000 }, async (t) => {
  const session = await startSession(t);
  const drips: Array<ReturnType<typeof rawConnection>> = [];
  for (let i = 0; i < 64; i++) {
    const raw = rawConnection(t, session.socket);
    await raw.connected;
    raw.connection.write("\n");
    // Within the 10 s a connection has to complete a line: before, this kept it forever.
    const timer = setInterval(() => raw.connection.write("\n"), 5000);
    t.after(() => clearInterval(timer));
    drips.push(raw);
  }
  await waitUntil(() => drips.every((raw) => raw.received().startsWith("error empty line\n")), 5000, "every drip's first answer");
  const result = await send(t, session, ["https://example.org/between-the-drips"]);
  assert.equal(result.code, 0, result.stderr);
  // Each was ended, answered and unharmed, well under a second after its answer.
  await waitUntil(() => drips.every((raw) => raw.closed()), 8000, "the drip connections to be ended");
});

test("a connection is ended soon after its last line is answered, without an error, when the sender never half-closes", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t);
  const raw = rawConnection(t, session.socket);
  await raw.connected;
  const sent = performance.now();
  raw.connection.write("https://example.org/no-half-close\n");
  await waitUntil(raw.closed, 9000, "the connection to be ended");
  t.diagnostic(`ended ${Math.round(performance.now() - sent)} ms after the line was sent`);
  assert.equal(raw.received(), "ok\n");
  // Ended by the 300 ms after its answer, not by the 10 s idle bound.
  assert.ok(performance.now() - sent < 8000, `took ${Math.round(performance.now() - sent)} ms`);
});

