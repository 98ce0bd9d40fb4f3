// Ensures that a connection holds its place for at most 60 s, however it
// paces its lines, and even while the desktop has not answered its earlier
// URLs: at the bound every line still waiting is answered with the error and
// the connection is closed (it was once held until the desktop answered: 95 s
// seen); and that a status costs a place. Where a test plays the server, it
// never answers. The tests run side by side: each waits out the 60 s.

import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, test } from "node:test";
import type { TestContext } from "node:test";
import { rawConnection, startScript, startSession, tempDir, waitUntil } from "./helpers.ts";

/** A client whose "server" (this test) says hello and never answers; a connection to it. */
async function silentServer(t: TestContext, helloFields: string) {
  const socket = join(tempDir(t), "sock");
  const client = startScript(t, "client.ts", ["--socket", socket], { env: { URLSERVER_SOCKET: "", XDG_RUNTIME_DIR: "" } });
  await client.stdout.waitFor(/^hello /, 15_000);
  // A long heartbeat, so that the silent "server" is not taken for gone.
  client.child.stdin!.write(`hello urlserver/1 keepalive=3600 schemes=https${helloFields}\n`);
  const raw = rawConnection(t, socket);
  await raw.connected;
  return { client, raw };
}

describe("the 60 s bound and the cost of a status", { concurrency: true }, () => {
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

  test("a connection whose URLs the desktop never answers is answered with the error and closed at 60 s", { timeout: 120_000 }, async (t) => {
    const { client, raw } = await silentServer(t, "");
    const opened = performance.now();
    raw.connection.write("https://example.org/one\nhttps://example.org/two\n");
    await client.stdout.waitFor(/^open \d+ https:\/\/example\.org\/two$/, 10_000);
    await waitUntil(raw.closed, 75_000, "the connection to be closed");
    const lasted = performance.now() - opened;
    t.diagnostic(`closed after ${(lasted / 1000).toFixed(1)} s`);
    assert.ok(lasted >= 59_000 && lasted < 66_000, `lasted ${Math.round(lasted)} ms`);
    assert.equal(raw.received(), "error connection open longer than 60 s\n".repeat(3));
  });

  test("a status costs a place as a URL does: answered, then the connection ends, later lines unread", { timeout: 60_000 }, async (t) => {
    const { client, raw } = await silentServer(t, " desktop=test");
    // Never half-closed: as a helper asking every 100 ms would.
    raw.connection.write("status\nstatus\nhttps://example.org/after\n");
    await waitUntil(raw.closed, 10_000, "the connection to be closed");
    assert.match(raw.received(), /^ok desktop=test since=\S+ runtime=\S+ pid=\d+( [a-z]+=\S*)*\n$/);
    assert.equal(client.stdout.seen.filter((line) => line.startsWith("open ")).length, 0, "a line after the status was taken");
  });
});
