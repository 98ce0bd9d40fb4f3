// Ensures the client holds up under load: a bounded number of connections
// (the excess answered "error busy"), flat memory under 1,000 idle
// connections and a burst of URLs, every URL answered once; and that the
// server reaps every opener it starts.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { connect } from "node:net";
import type { Socket } from "node:net";
import { test } from "node:test";
import type { TestContext } from "node:test";
import { childrenOf, send, startSession, waitUntil } from "./helpers.ts";

/** The client's current and peak resident memory, in MiB, from /proc (Linux). */
function memoryOf(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)![1]);
  return { rss: kib("VmRSS") / 1024, peak: kib("VmHWM") / 1024 };
}

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
  await waitUntil(() => session.server.stderr.seen.filter((line) => /fake-browser\.sh \(pid \d+\) exited/.test(line)).length === 50,
    10_000, "50 opener exits logged");
  const zombies = childrenOf(session.server.pid).filter((pid) => {
    try {
      return /^\d+ \(.*\) Z/s.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
    } catch {
      return false;
    }
  });
  assert.deepEqual(zombies, [], "unreaped openers");
});
