// Ensures that server.ts's start-up sweep of control directories (left by
// servers killed with SIGKILL) removes only what is surely left over: a
// directory of this user, made by a server of this PID namespace whose pid is
// gone, in which no ssh master answers. A pid from another namespace (or a
// 0.3.0 name, which does not say its namespace) cannot be told and is kept;
// a TMPDIR others may write without the sticky bit is not swept at all, nor
// given the control directory (and with no safe place, loopback URLs are
// refused); and
// servers starting together over many leftovers never trip over each other.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, linkSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { test } from "node:test";
import type { TestContext } from "node:test";
import { ROOT, TSX, needs, send, startScript, startSession, tempDir, waitForExit, waitUntil } from "./helpers.ts";

const OUR_NAMESPACE = /^pid:\[(\d+)\]$/.exec(readlinkSync("/proc/self/ns/pid"))![1];

/** A pid that is surely not running: a child's, once reaped. */
function deadPid(): number {
  return spawnSync("true").pid!;
}

/** Makes a leftover-looking control directory, 0700 like mkdtemp's, holding a socket nobody answers on. */
function leftover(dir: string, name: string, staleSocket?: string): string {
  const path = join(dir, name);
  mkdirSync(path, { mode: 0o700 });
  if (staleSocket) linkSync(staleSocket, join(path, "1"));
  return path;
}

/** A socket path nobody listens on any more (a hard link to a closed listener's socket). */
async function staleSocket(dir: string): Promise<string> {
  const twin = join(dir, "twin");
  const listener = createServer();
  await new Promise<void>((resolve) => listener.listen(twin, resolve));
  const path = join(dir, "stale");
  linkSync(twin, path);
  await new Promise<void>((resolve) => listener.close(() => resolve()));
  return path;
}

test("the sweep removes a leftover of this PID namespace, keeps what it cannot be sure of", { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t);
  const pid = deadPid();
  const kept = [
    leftover(dir, `urlserver-${pid}-Abc123`), // 0.3.0's name: which namespace?
    leftover(dir, `urlserver-${pid}-ns1-Abc123`), // another namespace's
  ];
  // A master still answering: its server may be alive somewhere.
  const live = leftover(dir, `urlserver-${pid}-ns${OUR_NAMESPACE}-Live12`);
  const listener = createServer();
  await new Promise<void>((resolve) => listener.listen(join(live, "1"), resolve));
  t.after(() => listener.close());
  const gone = leftover(dir, `urlserver-${pid}-ns${OUR_NAMESPACE}-Gone12`, await staleSocket(dir));
  const session = await startSession(t, [], { dir });
  for (const path of [...kept, live]) assert.ok(existsSync(path), `${path} was removed`);
  assert.equal(existsSync(gone), false, "the leftover of this namespace is still there");
  const own = readdirSync(dir).filter((name) => name.startsWith(`urlserver-${session.server.pid}-`));
  assert.deepEqual(own.map((name) => name.replace(/-[A-Za-z0-9]{6}$/, "")), [`urlserver-${session.server.pid}-ns${OUR_NAMESPACE}`]);
});

test("a TMPDIR others may write without the sticky bit is not swept, saying so, nor given the control directory", { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t);
  chmodSync(dir, 0o777);
  const pid = deadPid();
  const left = [leftover(dir, `urlserver-${pid}-Abc123`), leftover(dir, `urlserver-${pid}-ns${OUR_NAMESPACE}-Abc123`)];
  const session = await startSession(t, [], { dir });
  for (const path of left) assert.ok(existsSync(path), `${path} was removed`);
  await session.server.stderr.waitFor(new RegExp(
    `^server: not removing leftover control directories in "${dir}": others may write there \\(mode 777, no sticky bit\\)$`), 5000);
  // Another user could rename the directory away there and put theirs in its place: /tmp (1777) instead.
  const controlPath = controlPathOf(session.sshLog);
  assert.match(controlPath, new RegExp(`^/tmp/urlserver-${session.server.pid}-ns${OUR_NAMESPACE}-\\w{6}/1$`));
  assert.deepEqual(readdirSync(dir).filter((name) => name.startsWith(`urlserver-${session.server.pid}-`)), []);
});

test("with no safe place for the control directory (TMPDIR and /tmp both others' to rename in), loopback URLs are refused, saying why", { timeout: 60_000 }, async (t) => {
  if (!needs(t, process.getuid?.() === 0 ? undefined : "root (for a mount namespace)")) return;
  if (!needs(t, existsSync("/usr/bin/unshare") ? undefined : "unshare (Debian: util-linux)")) return;
  // The test's files outside /tmp, which the server sees replaced by a 0777
  // tmpfs without the sticky bit, and given as its TMPDIR; the project's
  // directory (in /tmp, maybe, as a CI clone) bound back into place.
  const dir = mkdtempSync("/var/tmp/us-");
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const stash = join(dir, "project");
  mkdirSync(stash);
  const session = await startSession(t, [], {
    dir,
    serverVia: ["unshare", "--mount", "--propagation", "private", "sh", "-c",
      'mount --bind "$1" "$2" && mount -t tmpfs -o mode=0777 none /tmp && mkdir -p "$1" && mount --bind "$2" "$1" && shift 2 && TMPDIR=/tmp exec "$@"',
      "sh", ROOT, stash, ...TSX, join(ROOT, "server.ts")],
  });
  const said = session.server.stderr.seen.find((line) => line.startsWith("server: loopback URLs will be refused"));
  assert.equal(said, `server: loopback URLs will be refused, not forwarded: no safe directory for ssh's control sockets ` +
    `("/tmp": others may write there (mode 777, no sticky bit))`);
  assert.ok(!controlPathOrNone(session.sshLog), "ssh was given a control path");
  const refused = await send(t, session, ["http://localhost:8123/callback"]);
  assert.equal(refused.code, 65, refused.stderr);
  assert.match(refused.stderr, /its port is on the remote host, and there is no safe directory here for ssh's control sockets/);
  const opened = await send(t, session, ["https://example.org/still-opens"]);
  assert.equal(opened.code, 0, opened.stderr);
});

/** The ControlPath the server gave its (fake) ssh, if any. */
function controlPathOrNone(sshLog: string): string | undefined {
  const { args } = JSON.parse(readFileSync(sshLog, "utf8").split("\n")[0]) as { args: string[] };
  return args.find((arg) => arg.startsWith("ControlPath="))?.slice("ControlPath=".length);
}

function controlPathOf(sshLog: string): string {
  const path = controlPathOrNone(sshLog);
  assert.ok(path, "ssh was given no control path");
  return path;
}

test("servers starting together over many leftovers all get past the sweep (none ends 70), and sweep them all", { timeout: 120_000 }, async (t: TestContext) => {
  const dir = tempDir(t);
  const stale = await staleSocket(dir);
  const pid = deadPid();
  // Both names: 0.3.0 swept its own; each sweep probes every socket.
  for (let i = 0; i < 150; i++) {
    const suffix = i.toString(36).padStart(6, "0");
    leftover(dir, `urlserver-${pid}-${suffix}`, stale);
    leftover(dir, `urlserver-${pid}-ns${OUR_NAMESPACE}-${suffix}`, stale);
  }
  // An ssh that cannot be run: each server sweeps, then exits 69 at once.
  const servers = [1, 2, 3, 4].map(() => startScript(t, "server.ts", ["--ssh", join(dir, "no-ssh"), "host"], { env: { TMPDIR: dir }, stdin: "ignore" }));
  for (const server of servers) {
    const exit = await waitForExit(server, 60_000, "server.ts");
    await waitUntil(() => server.stderr.ended, 2000, "server.ts's stderr to end");
    assert.equal(exit.code, 69, server.stderr.text());
    assert.match(server.stderr.text(), /cannot run/);
  }
  const left = readdirSync(dir).filter((name) => name.startsWith(`urlserver-${pid}-ns`));
  assert.deepEqual(left, [], "leftovers of this namespace remain");
});
