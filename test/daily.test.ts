// Ensures the everyday features hold without weakening the exits: several
// hosts in one terminal, --reconnect, send.ts --status, the fallback that
// prints what it could not open, --log, --notify and the teaching --help.

import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import type { TestContext } from "node:test";
import {
  CLIENT_COMMAND, FAKE_BROWSER, FAKE_SSH, HELLO_WAIT_MS, ROOT, killAtEnd, needs, opened, run, send, start, startScript, startSession,
  tempDir, waitForExit, waitUntil,
} from "./helpers.ts";

/** The client pid from the latest "HOST: connected" line. */
async function connectedPid(server: ReturnType<typeof startScript>, host: string, after = 0): Promise<number> {
  const pattern = new RegExp(` ${host}: connected: client pid (\\d+)`);
  await waitUntil(() => server.stderr.seen.filter((line) => pattern.test(line)).length > after, HELLO_WAIT_MS, `${host} to connect`);
  const lines = server.stderr.seen.filter((line) => pattern.test(line));
  return Number(pattern.exec(lines[lines.length - 1])![1]);
}

test("two hosts in one terminal: one lost, the other keeps delivering; the server exits 69 when the last is gone", { timeout: 40_000 }, async (t) => {
  const dir = tempDir(t);
  const browserLog = join(dir, "opened");
  // Each host's client gets a socket of its own, named after the host.
  const remote = `URLSERVER_SOCKET=${dir}/sock-$FAKE_SSH_HOST ${CLIENT_COMMAND}`;
  const server = startScript(t, "server.ts", ["--ssh", FAKE_SSH, "--remote-command", remote, "--browser", FAKE_BROWSER,
    "alpha", "beta"], { env: { FAKE_BROWSER_LOG: browserLog } });
  const alpha = await connectedPid(server, "alpha");
  const beta = await connectedPid(server, "beta");
  killAtEnd(t, alpha);
  killAtEnd(t, beta);

  process.kill(alpha, "SIGTERM");
  await server.stderr.waitFor(/ alpha: disconnected: /, 5000);
  assert.ok(server.alive(), "the server exited with a host still connected");
  const env = { URLSERVER_SOCKET: join(dir, "sock-beta") };
  const result = await send(t, { env }, ["https://example.org/via-beta"]);
  assert.equal(result.code, 0, result.stderr);
  await waitUntil(() => opened(browserLog).length === 1, 5000, "the opener to run");
  assert.match(server.stderr.text(), / beta: opened "https:\/\/example\.org\/via-beta"/);

  process.kill(beta, "SIGTERM");
  const exit = await waitForExit(server, 5000, "server");
  assert.equal(exit.code, 69);
  for (const line of server.stderr.seen) assert.match(line, /^\S+Z (alpha|beta): /, "every log line names its host");
});

test("--reconnect: a lost connection is reconnected, logged, and delivers again", { timeout: 40_000 }, async (t) => {
  const session = await startSession(t, ["--reconnect"]);
  process.kill(session.clientPid, "SIGTERM");
  await session.server.stderr.waitFor(/testhost: disconnected: /, 5000);
  // Attempts start at least 1 s apart: the connection may have lasted that long already.
  await session.server.stderr.waitFor(/testhost: reconnecting( in (0\.\d|1) s)? \(attempt 2\)$/, 5000);
  const newPid = await connectedPid(session.server, "testhost", 1);
  killAtEnd(t, newPid);
  assert.notEqual(newPid, session.clientPid);
  await session.server.stderr.waitFor(/testhost: reconnected after \d+\.\d s$/, 1000);
  const result = await send(t, session, ["https://example.org/after-reconnect"]);
  assert.equal(result.code, 0, result.stderr);
  await waitUntil(() => opened(session.browserLog).length === 1, 5000, "the opener to run");

  // The next attempt starts at least 2 s after this one: the spacing doubles
  // (test/reconnect.test.ts times it).
  process.kill(newPid, "SIGTERM");
  await session.server.stderr.waitFor(/testhost: reconnecting( in (\d\.\d|[12]) s)? \(attempt 3\)$/, 5000);
  assert.ok(session.server.alive());
});

test("--reconnect gives up at once on what retrying cannot mend: ssh that cannot be run", { timeout: 20_000 }, async (t) => {
  const result = await run(t, "server.ts", ["--reconnect", "--ssh", "/nonexistent/ssh", "host"]);
  assert.equal(result.code, 69);
  assert.doesNotMatch(result.stderr, /reconnecting/);
});

test("send.ts --status: the desktop's name, since when, the client's runtime; exit 69 when nothing is connected", { timeout: 30_000 }, async (t) => {
  const session = await startSession(t);
  const connected = await send(t, session, ["--status"]);
  assert.equal(connected.code, 0, connected.stderr);
  assert.match(connected.stdout, new RegExp(`^connected to desktop "${hostname()}" since \\d{4}-\\d\\d-\\d\\dT\\S+Z \\(client pid ${session.clientPid} on node/\\S+( with tsx)? from /\\S+\\)$`));

  process.kill(session.server.pid, "SIGTERM");
  await waitForExit(session.server, 5000, "server");
  await waitUntil(() => !existsSync(session.socket), 2000, "the socket to go");
  const nothing = await send(t, session, ["--status"]);
  assert.equal(nothing.code, 69);
  assert.equal(nothing.stdout, "");
  // The reason once, and what to do about it.
  assert.equal(nothing.stderr, `send: no desktop is connected on this host: nothing listens on "${session.socket}": ` +
    'on the desktop, run "server.ts HOST" with this host\'s name');
});

test("the fallback on a terminal: each URL not opened as an OSC 8 hyperlink on stderr", { timeout: 20_000 }, async (t) => {
  const missing = existsSync("/usr/bin/script") ? undefined : "script (util-linux), for a pseudo-terminal";
  if (!needs(t, missing)) return;
  const socket = join(tempDir(t), "sock");
  const url = "https://example.org/fallback?a=1";
  // script gives send.ts a pseudo-terminal for its stderr, and copies what it wrote to stdout.
  const command = `${process.execPath} --import tsx ${join(ROOT, "send.ts")} --socket ${socket} '${url}' 2>&1`;
  const proc = start(t, "script", "script", ["-qec", command, "/dev/null"], { stdin: "ignore" });
  const exit = await waitForExit(proc, 15_000, "script");
  await waitUntil(() => proc.stdout.ended, 2000, "script's output to end");
  assert.equal(exit.code, 69);
  assert.ok(proc.stdout.text().includes(`\x1b]8;;${url}\x1b\\${url}\x1b]8;;\x1b\\`), JSON.stringify(proc.stdout.text()));
});

test("--log appends one JSON line per URL: opened, refused and why, rate limited; never truncating", { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t);
  const log = join(dir, "urls.log");
  writeFileSync(log, '{"earlier":"line"}\n');
  const session = await startSession(t, ["--log", log, "--burst", "1", "--rate", "0.001"], { dir });
  // 8193 bytes: within the client's line limit, over the server's URL limit.
  const long = `https://example.org/${"a".repeat(8193 - 20)}`;
  assert.equal((await send(t, session, ["https://example.org/first"])).code, 0);
  assert.equal((await send(t, session, ["https://example.org/second"])).code, 65);
  assert.equal((await send(t, session, [long])).code, 65);

  const lines = readFileSync(log, "utf8").split("\n").filter(Boolean);
  assert.equal(lines[0], '{"earlier":"line"}');
  const entries = lines.slice(1).map((line) => JSON.parse(line));
  assert.deepEqual(entries.map(({ host, url, decision, reason }) => ({ host, url, decision, reason })), [
    { host: "testhost", url: "https://example.org/first", decision: "opened", reason: undefined },
    { host: "testhost", url: "https://example.org/second", decision: "rate limited", reason: undefined },
    { host: "testhost", url: long, decision: "refused", reason: "URL longer than 8192 bytes" },
  ]);
  for (const entry of entries) assert.ok(!Number.isNaN(Date.parse(entry.time)), `bad time ${entry.time}`);
});

test("--log to a file that cannot be written: exit 73 at start, saying so", { timeout: 20_000 }, async (t) => {
  const log = join(tempDir(t), "no-such-dir", "urls.log");
  const result = await run(t, "server.ts", ["--log", log, "host"]);
  assert.equal(result.code, 73);
  assert.match(result.stderr, new RegExp(`^server: cannot write the --log file "${log}": ENOENT`));
});

/** A bin directory with a notify-send that records its arguments, one JSON line per run. */
function fakeNotifier(t: TestContext): { bin: string; record: string } {
  const bin = join(tempDir(t), "bin");
  mkdirSync(bin);
  const record = join(bin, "..", "notified");
  writeFileSync(join(bin, "notify-send"), `#!/bin/sh\n${process.execPath} -e 'console.log(JSON.stringify(process.argv.slice(1)))' -- "$@" >> ${record}\n`);
  chmodSync(join(bin, "notify-send"), 0o755);
  return { bin, record };
}

test("--notify shows a notification naming the host for each URL opened", { timeout: 30_000 }, async (t) => {
  const { bin, record } = fakeNotifier(t);
  const session = await startSession(t, ["--notify"], { env: { PATH: `${bin}:/usr/local/bin:/usr/bin:/bin` } });
  assert.doesNotMatch(session.server.stderr.text(), /warning/);
  assert.equal((await send(t, session, ["https://example.org/notified"])).code, 0);
  await waitUntil(() => existsSync(record) && readFileSync(record, "utf8").endsWith("\n"), 5000, "the notifier to run");
  assert.deepEqual(JSON.parse(readFileSync(record, "utf8").trim()),
    ["--app-name=urlserver", "URL from testhost", "https://example.org/notified"]);
});

test("--notify without a notifier: one warning at start, URLs still open", { timeout: 30_000 }, async (t) => {
  const PATH = "/usr/local/bin:/usr/bin:/bin";
  const present = PATH.split(":").some((dir) => existsSync(join(dir, "notify-send")));
  if (!needs(t, present ? "a PATH without notify-send (this machine has one installed)" : undefined)) return;
  const session = await startSession(t, ["--notify"], { env: { PATH } });
  assert.equal(session.server.stderr.seen.filter((line) => /warning/.test(line)).length, 1);
  assert.equal(session.server.stderr.seen[0], "server: warning: --notify needs notify-send, which is not on PATH: no notifications");
  assert.equal((await send(t, session, ["https://example.org/quiet"])).code, 0);
});

for (const script of ["server.ts", "client.ts", "send.ts"] as const) {
  test(`${script} --help teaches: options with defaults, environment, examples, exit codes`, { timeout: 15_000 }, async (t) => {
    const { stdout } = await run(t, script, ["--help"]);
    for (const part of ["Usage: ", "Options:", "Environment: ", "Examples:", "Exit codes: ", "--version"]) {
      assert.ok(stdout.includes(part), `${script} --help lacks "${part}"`);
    }
  });
}
