// Ensures the client holds up under load: a bounded number of connections
// (the excess answered "error busy"), that no sender holds a place for long
// (a connection with every line answered is ended soon after, and none lasts
// more than 60 s), flat memory under 1,000 idle connections and a burst of
// URLs, every URL answered once; and that the server reaps every opener.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { connect } from "node:net";
import type { Socket } from "node:net";
import { test } from "node:test";
import type { TestContext } from "node:test";
import { childrenOf, memoryOf, send, startSession, waitUntil } from "./helpers.ts";

/** Opens a raw connection and collects what comes back; destroyed in t.after. */
function rawConnection(t: TestContext, socket: string) {
  const connection: Socket = connect(socket);
  let received = "";
  let closed = false;
  connection.setEncoding("utf8");
  connection.on("data", (chunk: string) => { received += chunk; });
  connection.on("error", () => {});
  connection.on("close", () => { closed = true; });
  t.after(() => connection.destroy());
  const connected = new Promise<void>((resolve, reject) => {
    connection.once("connect", () => resolve());
    connection.once("error", reject);
  });
  // Only the callers that wait for it care whether it connected.
  connected.catch(() => {});
  return { connection, connected, received: () => received, closed: () => closed };
}

test("at most 64 connections at once: the 65th is answered `error busy` and closed; a freed place is used again", { timeout: 30_000 }, async (t) => {
  const session = await startSession(t);
  const idle: Array<ReturnType<typeof rawConnection>> = [];
  for (let i = 0; i < 64; i++) {
    const raw = rawConnection(t, session.socket);
    await raw.connected;
    idle.push(raw);
  }
  const excess = rawConnection(t, session.socket);
  await waitUntil(excess.closed, 5000, "the 65th connection to be closed");
  assert.equal(excess.received(), "error busy\n");
  assert.ok(idle.every((raw) => !raw.closed() && raw.received() === ""), "an accepted connection was disturbed");

  idle[0].connection.destroy();
  // The client frees the place once it has seen the close, a moment after this end has.
  const deadline = performance.now() + 5000;
  let answer = "";
  while (answer !== "ok\n" && performance.now() < deadline) {
    const probe = rawConnection(t, session.socket);
    probe.connection.end("https://example.org/after-a-place-freed\n");
    await waitUntil(probe.closed, 5000, "the probe's answer");
    answer = probe.received();
    assert.ok(answer === "ok\n" || answer === "error busy\n", `unexpected answer ${JSON.stringify(answer)}`);
  }
  assert.equal(answer, "ok\n", "the freed place was never used again");
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
  // All but 64 are turned away; wait until the client has dealt with every one.
  await waitUntil(() => connections.filter((raw) => raw.closed()).length === 1000 - 64, 20_000, "936 busy answers");
  assert.ok(connections.filter((raw) => raw.closed()).every((raw) => raw.received() === "error busy\n"));
  const after = memoryOf(session.clientPid);
  t.diagnostic(`client RSS ${before.rss.toFixed(1)} MiB before, ${after.rss.toFixed(1)} MiB with 1,000 connections tried; peak ${after.peak.toFixed(1)} MiB`);
  assert.ok(after.rss - before.rss < 40, `RSS grew by ${(after.rss - before.rss).toFixed(1)} MiB`);
  for (const raw of connections) raw.connection.destroy();
  const result = await send(t, session, ["https://example.org/after-the-flood"]);
  assert.equal(result.code, 0, result.stderr);
});

test("a burst of 2,000 URLs over 20 connections: every one answered ok once, memory flat", { timeout: 120_000 }, async (t) => {
  const session = await startSession(t, ["--rate", "0", "--browser", "true"]);
  const before = memoryOf(session.clientPid);
  const perConnection = 100;
  const results = await Promise.all(Array.from({ length: 20 }, (_, c) => new Promise<string[]>((resolve, reject) => {
    const raw = rawConnection(t, session.socket);
    raw.connection.end(Array.from({ length: perConnection }, (_, i) => `https://example.org/${c}/${i}\n`).join(""));
    const timer = setTimeout(() => reject(new Error(`connection ${c} got ${raw.received().split("\n").length - 1} answers`)), 60_000);
    raw.connection.on("close", () => { clearTimeout(timer); resolve(raw.received().split("\n").filter(Boolean)); });
  })));
  for (const answers of results) assert.deepEqual(answers, Array(perConnection).fill("ok"));
  await waitUntil(() => session.server.stderr.seen.filter((line) => / opened "/.test(line)).length === 2000, 30_000, "2,000 opens logged");
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

test("a connection that keeps sending lines holds its place for at most 60 s", { timeout: 100_000 }, async (t) => {
  const session = await startSession(t);
  const raw = rawConnection(t, session.socket);
  await raw.connected;
  const opened = performance.now();
  // Always a line begun (so never quiet), and one completed every 100 ms (so
  // never idle): only the 60 s bound can end it, however late the timer runs.
  raw.connection.write("a");
  const timer = setInterval(() => raw.connection.write("\na"), 100);
  t.after(() => clearInterval(timer));
  await waitUntil(raw.closed, 80_000, "the connection to be closed");
  clearInterval(timer);
  const lasted = performance.now() - opened;
  t.diagnostic(`closed after ${(lasted / 1000).toFixed(1)} s`);
  assert.ok(lasted >= 59_000 && lasted < 70_000, `lasted ${Math.round(lasted)} ms`);
  assert.match(raw.received(), /^(error not a URL\n)+error connection open longer than 60 s\n$/);
});
