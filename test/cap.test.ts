// Ensures that a connection holds its place for at most 60 s even while the
// desktop has not answered its earlier URLs: at the bound every line still
// waiting is answered with the error and the connection is closed (it was
// once held until the desktop answered: 95 s seen). The test plays the
// server and never answers.

import assert from "node:assert/strict";
import { connect } from "node:net";
import { join } from "node:path";
import { test } from "node:test";
import { startScript, tempDir, waitUntil } from "./helpers.ts";

test("a connection whose URLs the desktop never answers is answered with the error and closed at 60 s", { timeout: 120_000 }, async (t) => {
  const socket = join(tempDir(t), "sock");
  const client = startScript(t, "client.ts", ["--socket", socket], { env: { URLSERVER_SOCKET: "", XDG_RUNTIME_DIR: "" } });
  await client.stdout.waitFor(/^hello /, 15_000);
  // A long heartbeat, so that the silent "server" is not taken for gone.
  client.child.stdin!.write("hello urlserver/1 keepalive=3600 schemes=https\n");
  const connection = connect(socket);
  t.after(() => connection.destroy());
  let received = "";
  let closed = false;
  connection.setEncoding("utf8");
  connection.on("data", (chunk: string) => { received += chunk; });
  connection.on("close", () => { closed = true; });
  connection.on("error", () => {});
  await new Promise<void>((resolve) => connection.on("connect", resolve));
  const opened = performance.now();
  connection.write("https://example.org/one\nhttps://example.org/two\n");
  await client.stdout.waitFor(/^open \d+ https:\/\/example\.org\/two$/, 10_000);
  await waitUntil(() => closed, 75_000, "the connection to be closed");
  const lasted = performance.now() - opened;
  t.diagnostic(`closed after ${(lasted / 1000).toFixed(1)} s`);
  assert.ok(lasted >= 59_000 && lasted < 66_000, `lasted ${Math.round(lasted)} ms`);
  assert.equal(received, "error connection open longer than 60 s\n".repeat(3));
});

test("a status costs a place as a URL does: answered, then the connection ends, later lines unread", { timeout: 60_000 }, async (t) => {
  const socket = join(tempDir(t), "sock");
  const client = startScript(t, "client.ts", ["--socket", socket], { env: { URLSERVER_SOCKET: "", XDG_RUNTIME_DIR: "" } });
  await client.stdout.waitFor(/^hello /, 15_000);
  client.child.stdin!.write("hello urlserver/1 keepalive=3600 schemes=https desktop=test\n");
  const connection = connect(socket);
  t.after(() => connection.destroy());
  let received = "";
  let closed = false;
  connection.setEncoding("utf8");
  connection.on("data", (chunk: string) => { received += chunk; });
  connection.on("close", () => { closed = true; });
  connection.on("error", () => {});
  await new Promise<void>((resolve) => connection.on("connect", resolve));
  // Never half-closed: as a helper asking every 100 ms would.
  connection.write("status\nstatus\nhttps://example.org/after\n");
  await waitUntil(() => closed, 10_000, "the connection to be closed");
  assert.match(received, /^ok desktop=test since=\S+ runtime=\S+ pid=\d+( [a-z]+=\S*)*\n$/);
  assert.equal(client.stdout.seen.filter((line) => line.startsWith("open ")).length, 0, "a line after the status was taken");
});
