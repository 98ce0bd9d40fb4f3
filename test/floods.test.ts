// Ensures that no flood from the other side grows either end without bound:
// a hostile remote host (an endless stderr line, a stream of messages while it
// never reads its answers, 100,000 refusals, a million pings) cannot grow the
// server's memory, its terminal log or its --log file beyond a fixed bound, and
// a sender on the client's socket that never reads its answers, or a server
// that stopped reading, cannot grow the client. Meanwhile the other host and
// the other senders are still served. Memory is read from /proc (VmHWM, the
// peak, so that a spike between two looks cannot hide).

import assert from "node:assert/strict";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { test } from "node:test";
import type { TestContext } from "node:test";
import {
  CLIENT_COMMAND, FAKE_BROWSER, FAKE_SSH, HELLO_WAIT_MS, childrenOf, killAtEnd, killIfAlive, memoryOf, send, startScript, startSession,
  tempDir, waitForExit, waitUntil,
} from "./helpers.ts";
import type { Proc } from "./helpers.ts";

// A bound on the peak, generous next to what the floods grew the ends by
// before they were bounded (100 MiB to 1 GiB in seconds), small next to a
// desktop's memory. Not less: reading a pipe at full speed, Node's collector
// lets up to about 40 MiB of already discarded read buffers stand (a bare
// Node process discarding 100 MB from a pipe peaks that far above its start).
const MAX_GROWTH_MIB = 64;
// How long each flood is held: long enough for an unbounded end to pass the
// bound (the slowest grew 11 MiB/s), short enough for the suite; npm run bench
// runs this file with FLOOD_HOLD_MS=20000 and reports the diagnostics.
const HOLD_MS = Number(process.env.FLOOD_HOLD_MS ?? 10_000);

type Hostile = { server: Proc; dir: string; env: Record<string, string>; go: () => void; log: string };

/**
 * A server with two hosts through the fake ssh: "hostile", whose remote side
 * is the given shell script (started once the test says go, so that the
 * server's memory can be read first), and "good", the real client.
 */
async function hostileSession(t: TestContext, script: string, extraArgs: string[] = []): Promise<Hostile> {
  const dir = tempDir(t);
  const go = join(dir, "go");
  const remote = `if [ "$FAKE_SSH_HOST" = hostile ]; then until [ -e ${go} ]; do sleep 0.01; done; ${script}; else ${CLIENT_COMMAND}; fi`;
  const env = { URLSERVER_SOCKET: join(dir, "sock"), FAKE_BROWSER_LOG: join(dir, "opened"), TMPDIR: dir, FLOOD_DIR: dir };
  const log = join(dir, "urls.log");
  const server = startScript(t, "server.ts", ["--ssh", FAKE_SSH, "--remote-command", remote, "--browser", FAKE_BROWSER,
    "--log", log, ...extraArgs, "hostile", "good"], { env });
  const hello = await server.stderr.waitFor(/good: connected: client pid \d+/, HELLO_WAIT_MS);
  killAtEnd(t, Number(/client pid (\d+)/.exec(hello)![1]));
  // The remote sides (and the flood) run under the fake ssh processes, not under the server.
  for (const ssh of childrenOf(server.pid)) t.after(() => killRemote(ssh));
  return { server, dir, env, go: () => writeFileSync(go, ""), log };
}

/** Kills a fake ssh and whatever it runs. */
function killRemote(pid: number): void {
  for (const child of childrenOf(pid)) {
    for (const grandchild of childrenOf(child)) killIfAlive(grandchild);
    killIfAlive(child);
  }
  killIfAlive(pid);
}

/** Holds a flood for a while: the test is about what a duration of it does. */
function hold(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** While the flood goes on, the good host still opens what its users send. */
async function goodHostServed(t: TestContext, hostile: Hostile, label: string): Promise<void> {
  const result = await send(t, { env: hostile.env }, [`https://example.org/${label}`]);
  assert.equal(result.code, 0, result.stderr);
}

function assertGrowth(t: TestContext, what: string, before: number, peak: number): void {
  t.diagnostic(`${what}: RSS ${before.toFixed(1)} MiB before, peak ${peak.toFixed(1)} MiB`);
  assert.ok(peak - before <= MAX_GROWTH_MIB, `${what} grew by ${(peak - before).toFixed(1)} MiB (bound ${MAX_GROWTH_MIB})`);
}

test("a remote stderr line of 100 MB: logged cut, saying how much was dropped; server memory bounded; still serving", { timeout: 60_000 }, async (t) => {
  const bytes = 100_000_000;
  const hostile = await hostileSession(t, `head -c ${bytes} /dev/zero | tr '\\0' x >&2; echo >&2; exec sleep 600`);
  const before = memoryOf(hostile.server.pid).rss;
  hostile.go();
  const line = await hostile.server.stderr.waitFor(/hostile: remote: x+… \(\d+ more bytes not shown\)$/, 40_000);
  assert.equal(Number(/\((\d+) more bytes/.exec(line)![1]), bytes - 1024);
  assertGrowth(t, "server", before, memoryOf(hostile.server.pid).peak);
  assert.ok(hostile.server.alive(), "the server exited");
  await goodHostServed(t, hostile, "after-stderr-line");
});

test("a remote that never reads its answers: the server stops reading it; memory bounded; the other host served", { timeout: 60_000 }, async (t) => {
  const hostile = await hostileSession(t, 'printf "hello urlserver/1 runtime=flood pid=$$ socket=x\\n"; exec yes "open 1 -"');
  const before = memoryOf(hostile.server.pid).rss;
  hostile.go();
  await hostile.server.stderr.waitFor(/hostile: connected: /, 10_000);
  const served = send(t, { env: hostile.env }, ["https://example.org/during-unread-answers"]);
  await hold(HOLD_MS);
  assertGrowth(t, "server", before, memoryOf(hostile.server.pid).peak);
  assert.ok(hostile.server.alive(), "the server exited");
  const result = await served;
  assert.equal(result.code, 0, result.stderr);
});

test("100,000 refused URLs: --log grows by at most 1 MiB and the terminal by a few lines; every refusal counted", { timeout: 60_000 }, async (t) => {
  const urls = 100_000;
  const answers = "$FLOOD_DIR/answers";
  // Reads its answers into a file (fd 3 keeps the channel: a background job's stdin is /dev/null).
  const hostile = await hostileSession(t, `exec 3<&0; cat <&3 > ${answers} & ` +
    `{ printf "hello urlserver/1 runtime=flood pid=$$ socket=x\\n"; yes "open 1 ftp://example.org/refused" | head -n ${urls}; }; wait`);
  const logBefore = statSync(hostile.log).size;
  hostile.go();
  const answersFile = join(hostile.dir, "answers");
  const answered = () => { try { return readFileSync(answersFile, "utf8").split("\n").filter((l) => l.startsWith("error 1 ")).length; } catch { return 0; } };
  await waitUntil(() => answered() === urls, 40_000, `${urls} answers (${answered()} so far)`);
  await goodHostServed(t, hostile, "during-refusals");
  // Stopping the server says what was counted but not yet logged.
  process.kill(hostile.server.pid, "SIGTERM");
  await waitForExit(hostile.server, 5000, "server");
  const growth = statSync(hostile.log).size - logBefore;
  t.diagnostic(`--log grew by ${growth} bytes for ${urls} refused URLs; the terminal got ${hostile.server.stderr.seen.filter((line) => / hostile: /.test(line)).length} lines`);
  assert.ok(growth <= 1024 * 1024, `--log grew by ${growth} bytes`);
  const entries = readFileSync(hostile.log, "utf8").split("\n").filter(Boolean).map((line) => JSON.parse(line)).filter((e) => e.host === "hostile");
  const oneByOne = entries.filter((e) => e.decision === "refused").length;
  const counted = entries.filter((e) => e.decision === "suppressed").reduce((sum, e) => sum + e.count, 0);
  assert.ok(oneByOne >= 1 && oneByOne <= 20, `${oneByOne} refusals logged one by one`);
  assert.equal(oneByOne + counted, urls, "refusals lost from the count");
  const hostileLines = hostile.server.stderr.seen.filter((line) => / hostile: /.test(line));
  assert.ok(hostileLines.length <= 30, `${hostileLines.length} terminal lines for the hostile host`);
  assert.ok(hostileLines.some((line) => /hostile: … and [\d,]+ more refused URLs in the last \d+ s, not logged one by one$/.test(line)),
    hostileLines.slice(-3).join("\n"));
});

test("a million pings from the remote: a few terminal lines, not a million", { timeout: 60_000 }, async (t) => {
  const hostile = await hostileSession(t, `exec 3<&0; cat <&3 > /dev/null & ` +
    `{ printf "hello urlserver/1 runtime=flood pid=$$ socket=x\\n"; yes ping | head -n 1000000; echo "open 2 ftp://example.org/last"; }; wait`);
  hostile.go();
  await hostile.server.stderr.waitFor(/hostile: … and [\d,]+ more (ignored messages|refused URLs)/, 30_000);
  await goodHostServed(t, hostile, "after-pings");
  const hostileLines = hostile.server.stderr.seen.filter((line) => / hostile: /.test(line));
  t.diagnostic(`the terminal got ${hostileLines.length} lines for a million pings`);
  assert.ok(hostileLines.length <= 30, `${hostileLines.length} terminal lines`);
});

/** A sender that writes as fast as the socket takes it and never reads; stopped in t.after. */
function floodSocket(t: TestContext, socketPath: string, chunk: Buffer): { written: () => number } {
  const socket = connect(socketPath);
  let written = 0;
  let stopped = false;
  socket.on("error", () => {});
  const pump = () => {
    while (!stopped && socket.write(chunk)) written += chunk.length;
    if (!stopped) socket.once("drain", () => { written += chunk.length; pump(); });
  };
  socket.on("connect", pump);
  // Never read: the answers pile up on the client's side.
  socket.pause();
  t.after(() => { stopped = true; socket.destroy(); });
  return { written: () => written };
}

test("a sender that writes empty lines and never reads its answers: client memory bounded; other senders served", { timeout: 60_000 }, async (t) => {
  const session = await startSession(t);
  const before = memoryOf(session.clientPid).rss;
  const flood = floodSocket(t, session.socket, Buffer.alloc(65536, "\n"));
  const served = send(t, session, ["https://example.org/beside-a-flood"]);
  await hold(HOLD_MS);
  t.diagnostic(`the sender got ${(flood.written() / 1048576).toFixed(1)} MiB in`);
  assertGrowth(t, "client", before, memoryOf(session.clientPid).peak);
  const result = await served;
  assert.equal(result.code, 0, result.stderr);
});

test("the server stopped (SIGSTOP) and a sender writing 8 KiB URLs: the client stops reading; memory bounded", { timeout: 60_000 }, async (t) => {
  const session = await startSession(t);
  const before = memoryOf(session.clientPid).rss;
  process.kill(session.sshPid, "SIGSTOP");
  t.after(() => killIfAlive(session.sshPid, "SIGCONT"));
  const url = `https://example.org/${"u".repeat(8150)}\n`;
  const flood = floodSocket(t, session.socket, Buffer.from(url.repeat(8)));
  await hold(HOLD_MS);
  t.diagnostic(`the sender got ${(flood.written() / 1048576).toFixed(1)} MiB in`);
  assertGrowth(t, "client", before, memoryOf(session.clientPid).peak);
});
