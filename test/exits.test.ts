// Ensures each end notices at once when the other end or the connection is
// gone, exits, and leaves no socket behind: every row of the README's exit table,
// with real processes (server.ts, the fake ssh relay, client.ts).

import assert from "node:assert/strict";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import {
  START_SERVER, clientExitsWithin, isAlive, killAtEnd, notOpened, send, serverExitsWithin, startScript, startSession, tempDir, waitForExit,
  waitUntil,
} from "./helpers.ts";

// The product's promise for every row but the silent network.
const PROMPT_MS = 1000;

/** The server's private directories for ssh's control sockets, made under its $TMPDIR (the test's directory). */
function controlDirectories(dir: string): string[] {
  return readdirSync(dir).filter((name) => /^urlserver-/.test(name));
}


test("client killed with SIGTERM: server exits non-zero within 1 s saying so; socket removed", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t);
  const killed = performance.now();
  process.kill(session.clientPid, "SIGTERM");
  const exit = await serverExitsWithin(t, session, killed, PROMPT_MS);
  assert.equal(exit.code, 69);
  assert.match(session.server.stderr.text(), /testhost: disconnected: /);
  await waitUntil(() => !existsSync(session.socket), PROMPT_MS, "the client to remove its socket");
});

test("client killed with SIGKILL: server exits within 1 s; the stale socket is replaced by the next client", { timeout: 30_000 }, async (t) => {
  const first = await startSession(t);
  const killed = performance.now();
  process.kill(first.clientPid, "SIGKILL");
  const exit = await serverExitsWithin(t, first, killed, PROMPT_MS);
  assert.equal(exit.code, 69);
  assert.ok(existsSync(first.socket), "a SIGKILLed client cannot remove its socket");

  const second = await startSession(t, [], { dir: first.dir });
  const result = await send(t, second, ["https://example.org/after-stale"]);
  assert.equal(result.code, 0, result.stderr);
});

for (const signal of ["SIGTERM", "SIGKILL"] as const) {
  test(`ssh killed with ${signal}: server exits non-zero and client exits within 1 s; socket removed`, { timeout: 20_000 }, async (t) => {
    const session = await startSession(t);
    const killed = performance.now();
    process.kill(session.sshPid, signal);
    const exit = await serverExitsWithin(t, session, killed, PROMPT_MS);
    assert.equal(exit.code, 69);
    assert.match(session.server.stderr.text(), /disconnected: /);
    await clientExitsWithin(t, session, killed, PROMPT_MS);
  });
}

for (const [signal, code] of [["SIGINT", 130], ["SIGTERM", 143], ["SIGHUP", 129], ["SIGQUIT", 131]] as const) {
  test(`server gets ${signal}: server exits ${code} and client exits within 1 s; socket and control directory removed`, { timeout: 20_000 }, async (t) => {
    const session = await startSession(t);
    assert.equal(controlDirectories(session.dir).length, 1, "no control directory for ssh's master");
    const signalled = performance.now();
    process.kill(session.server.pid, signal);
    const exit = await serverExitsWithin(t, session, signalled, PROMPT_MS);
    assert.equal(exit.code, code);
    assert.match(session.server.stderr.text(), new RegExp(`\\dZ stopping: ${signal}$`, "m"), "the server did not say why it stopped");
    await clientExitsWithin(t, session, signalled, PROMPT_MS);
    assert.equal(isAlive(session.sshPid), false, "ssh left running");
    assert.deepEqual(controlDirectories(session.dir), [], "control directory left behind");
  });
}

test("client gets SIGQUIT (Ctrl-\\ where it was started by hand): exits 131 at once, removing its socket", { timeout: 20_000 }, async (t) => {
  const socket = join(tempDir(t), "sock");
  const client = startScript(t, "client.ts", ["--socket", socket]);
  await client.stdout.waitFor(/^hello /, 10_000);
  const signalled = performance.now();
  process.kill(client.pid, "SIGQUIT");
  const exit = await waitForExit(client, PROMPT_MS + 2000, "client");
  assert.ok(exit.at - signalled < PROMPT_MS, `client took ${Math.round(exit.at - signalled)} ms`);
  assert.equal(exit.code, 131);
  assert.equal(existsSync(socket), false, "socket left behind");
});

test("a server killed with SIGKILL leaves its control directory; the next server's start removes it, not a live one", { timeout: 30_000 }, async (t) => {
  const first = await startSession(t);
  const [left] = controlDirectories(first.dir);
  process.kill(first.server.pid, "SIGKILL");
  await waitForExit(first.server, 5000, "the killed server");
  await waitUntil(() => !isAlive(first.clientPid), 5000, "the first client to exit");
  assert.ok(existsSync(join(first.dir, left)), "a SIGKILLed server cannot remove its control directory");
  const second = await startSession(t, [], { dir: first.dir });
  const now = controlDirectories(first.dir);
  assert.equal(now.length, 1, `control directories: ${now.join(", ")}`);
  assert.notEqual(now[0], left, "the leftover is still there");
  assert.match(now[0], new RegExp(`^urlserver-${second.server.pid}-`));
  // A third server, alongside the second, leaves the second's alone.
  const third = await startSession(t, [], { dir: first.dir, socket: join(first.dir, "sock3") });
  assert.equal(controlDirectories(first.dir).length, 2);
  assert.ok(third.server.alive());
});

test("server killed with SIGKILL: client exits within 1 s on stdin EOF; socket removed", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t);
  const killed = performance.now();
  process.kill(session.server.pid, "SIGKILL");
  await clientExitsWithin(t, session, killed, PROMPT_MS);
});

test("server killed with SIGKILL in --local mode: client exits within 1 s; socket removed", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t, [], { local: true });
  const killed = performance.now();
  process.kill(session.server.pid, "SIGKILL");
  await clientExitsWithin(t, session, killed, PROMPT_MS);
});

test("network silently broken (ssh frozen): both ends exit within 3 x keepalive; send.ts then fails at once", { timeout: 30_000 }, async (t) => {
  const keepalive = 1;
  // 3 x keepalive, and room for a late timer on a loaded machine.
  const bound = 3 * keepalive * 1000 + 3000;
  const session = await startSession(t, ["--keepalive", String(keepalive)]);
  // A stopped relay carries nothing and closes nothing, like a dead network.
  process.kill(session.sshPid, "SIGSTOP");
  killAtEnd(t, session.sshPid);
  const frozen = performance.now();
  const exit = await serverExitsWithin(t, session, frozen, bound);
  assert.equal(exit.code, 69);
  assert.match(session.server.stderr.text(), /no word from the client for 3 s: connection lost/);
  await clientExitsWithin(t, session, frozen, bound);

  const result = await send(t, session, ["https://example.org/too-late"]);
  assert.equal(result.code, 69);
  // At once: not after waiting out its 10 s --timeout (starting node with tsx
  // on a loaded machine takes seconds of that).
  assert.ok(result.ms < 5000, `send.ts took ${Math.round(result.ms)} ms to fail`);
  assert.equal(result.stderr, notOpened([`send: cannot connect to "${session.socket}": no server is connected on this host: ${START_SERVER}`], ["https://example.org/too-late"]));
});

test("server's stderr closed (EPIPE): server exits 141 at its next log line, client exits, socket removed", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t);
  session.server.child.stderr!.destroy();
  // Any URL makes the server write a log line into the closed pipe.
  await send(t, session, ["https://example.org/epipe"]);
  const exit = await waitForExit(session.server, 5000, "server");
  assert.equal(exit.code, 141);
  await waitUntil(() => !isAlive(session.clientPid), 5000, "the client to exit");
  assert.equal(existsSync(session.socket), false, "socket left behind");
});
