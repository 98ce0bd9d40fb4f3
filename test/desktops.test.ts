// Ensures several desktops can serve one host (README: Several desktops):
// two servers, each with the fake ssh giving its client a different
// SSH_CONNECTION, serve the same socket path. The newest client holds the
// path, the other stands by (its server says so and keeps running); send.ts
// routes by its session's SSH_CONNECTION (asked of tmux inside tmux), by
// URLSERVER_DESKTOP, else to the newest; when the default goes, the other
// takes over at once, no URL lost or opened twice; --reconnect never fights.

import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { test } from "node:test";
import type { TestContext } from "node:test";
import {
  FAKE_BROWSER, ROOT, isAlive, needs, opened, run, start, startSession, tempDir, waitForExit, waitUntil,
} from "./helpers.ts";
import type { Session } from "./helpers.ts";
import { startSshd } from "./fixtures/sshd.ts";

const OFFICE = { name: "office", address: "10.1.0.1" };
const HOME = { name: "home", address: "10.1.0.2" };
type Desk = typeof OFFICE;

// What sshd gives a session: client address and port, server address and port.
function sshConnection(desk: Desk | undefined): string {
  return desk ? `${desk.address} 50022 10.1.0.100 22` : "";
}

// The test machine's own session must not leak into what the scripts see.
const CLEAN = { SSH_CONNECTION: "", TMUX: "", URLSERVER_DESKTOP: "" };

/** A desktop's server.ts, through the fake ssh, serving the shared socket path. */
async function startDesktop(t: TestContext, socket: string, desk: Desk, extraArgs: string[] = []): Promise<Session> {
  return startSession(t, ["--name", desk.name, ...extraArgs], { socket, env: { ...CLEAN, SSH_CONNECTION: sshConnection(desk) } });
}

/** send.ts as a session from desk (or from nowhere), with more environment. */
function sendFrom(t: TestContext, socket: string, desk: Desk | undefined, args: string[], env: Record<string, string> = {}) {
  return run(t, "send.ts", args, { env: { ...CLEAN, URLSERVER_SOCKET: socket, SSH_CONNECTION: sshConnection(desk), ...env } });
}

function openedUrls(session: Session): string[] {
  return opened(session.browserLog).map(([, url]) => url);
}

/** Which client's own socket the documented path is (a hard link to it). */
function holderOf(socket: string): string | undefined {
  const holder = lstatSync(socket, { throwIfNoEntry: false });
  if (!holder) return undefined;
  return readdirSync(`${socket}.d`).find((name) => {
    const info = lstatSync(join(`${socket}.d`, name), { throwIfNoEntry: false });
    return info?.ino === holder.ino && info.dev === holder.dev;
  });
}

async function twoDesktops(t: TestContext, extraArgs: string[] = []) {
  const socket = join(tempDir(t), "sock");
  const office = await startDesktop(t, socket, OFFICE, extraArgs);
  const home = await startDesktop(t, socket, HOME, extraArgs);
  await office.server.stderr.waitFor(/standing by/, 10_000);
  return { socket, office, home };
}

test("a second desktop's client serves too: the first stands by, says so once, and keeps running", { timeout: 60_000 }, async (t) => {
  const { socket, office, home } = await twoDesktops(t);
  const line = await office.server.stderr.waitFor(/standing by/);
  assert.match(line, /testhost: standing by: desktop "home" \(from 10\.1\.0\.2\) took over this host's socket path; sessions from this desktop still open here$/);
  assert.ok(office.server.alive() && isAlive(office.clientPid), "the first desktop's server or client exited");
  assert.doesNotMatch(office.server.stderr.text(), /disconnected|exited/);
  assert.doesNotMatch(home.server.stderr.text(), /standing by/);
  // The path is the newest client's; both have a socket of their own, owner-only.
  assert.equal(holderOf(socket), readdirSync(`${socket}.d`).sort().at(-1));
  assert.equal(readdirSync(`${socket}.d`).length, 2);
  assert.equal(lstatSync(`${socket}.d`).mode & 0o777, 0o700);
  for (const name of readdirSync(`${socket}.d`)) assert.equal(lstatSync(join(`${socket}.d`, name)).mode & 0o777, 0o600);
});

test("send.ts opens on the desktop its session came from, else on the newest; URLSERVER_DESKTOP picks by name", { timeout: 60_000 }, async (t) => {
  const { socket, office, home } = await twoDesktops(t);
  const fromOffice = await sendFrom(t, socket, OFFICE, ["--verbose", "https://example.org/from-office"]);
  assert.equal(fromOffice.code, 0, fromOffice.stderr);
  assert.equal(fromOffice.stderr, 'send: opened "https://example.org/from-office" on desktop "office"');
  const fromHome = await sendFrom(t, socket, HOME, ["https://example.org/from-home"]);
  assert.equal(fromHome.code, 0, fromHome.stderr);
  const fromNowhere = await sendFrom(t, socket, undefined, ["--verbose", "https://example.org/from-cron"]);
  assert.equal(fromNowhere.stderr, 'send: opened "https://example.org/from-cron" on desktop "home"');
  const fromElsewhere = await sendFrom(t, socket, { name: "?", address: "10.9.9.9" }, ["https://example.org/from-a-jump-host"]);
  assert.equal(fromElsewhere.code, 0, fromElsewhere.stderr);
  const named = await sendFrom(t, socket, HOME, ["https://example.org/named-office"], { URLSERVER_DESKTOP: "office" });
  assert.equal(named.code, 0, named.stderr);
  const unknown = await sendFrom(t, socket, HOME, ["https://example.org/named-nobody"], { URLSERVER_DESKTOP: "nobody" });
  assert.equal(unknown.code, 69);
  assert.equal(unknown.stderr, 'send: no desktop named "nobody" is connected on this host (connected: "home", "office")\nhttps://example.org/named-nobody');

  await waitUntil(() => openedUrls(office).length + openedUrls(home).length === 5, 5000, "five URLs opened");
  assert.deepEqual(openedUrls(office), ["https://example.org/from-office", "https://example.org/named-office"]);
  assert.deepEqual(openedUrls(home), ["https://example.org/from-home", "https://example.org/from-cron", "https://example.org/from-a-jump-host"]);
});

test("send.ts --status lists every desktop: name, address, since when, the default, the one this session uses", { timeout: 60_000 }, async (t) => {
  const { socket, office, home } = await twoDesktops(t);
  const status = await sendFrom(t, socket, OFFICE, ["--status"]);
  assert.equal(status.code, 0, status.stderr);
  const since = "\\d{4}-\\d\\d-\\d\\dT\\S+Z";
  const [first, second, ...rest] = status.stdout.split("\n");
  assert.deepEqual(rest, []);
  assert.match(first, new RegExp(`^connected to desktop "home" since ${since} \\(client pid ${home.clientPid} on node/\\S+( with tsx)? from \\S+\\), from 10\\.1\\.0\\.2, the default$`));
  assert.match(second, new RegExp(`^connected to desktop "office" since ${since} \\(client pid ${office.clientPid} on node/\\S+( with tsx)? from \\S+\\), from 10\\.1\\.0\\.1, used by this session$`));
  const fromNowhere = await sendFrom(t, socket, undefined, ["--status"]);
  assert.match(fromNowhere.stdout.split("\n")[0], /, from 10\.1\.0\.2, the default, used by this session$/);
});

test("old senders: nc -U and socat on the documented path reach the newest desktop", { timeout: 60_000 }, async (t) => {
  const { socket, office, home } = await twoDesktops(t);
  const tools = [["nc", "-h"], ["socat", "-V"]].filter(([tool, flag]) => spawnSync(tool, [flag]).error === undefined);
  if (!needs(t, tools.length === 2 ? undefined : "nc (netcat-openbsd) and socat")) return;
  const nc = spawnSync("sh", ["-c", `printf 'https://example.org/by-nc\\n' | nc -U "${socket}"`], { encoding: "utf8", timeout: 10_000 });
  assert.equal(nc.stdout, "ok\n", nc.stderr);
  const socat = spawnSync("sh", ["-c", `printf 'https://example.org/by-socat\\n' | socat - "UNIX-CONNECT:${socket}"`], { encoding: "utf8", timeout: 10_000 });
  assert.equal(socat.stdout, "ok\n", socat.stderr);
  await waitUntil(() => openedUrls(home).length === 2, 5000, "two URLs opened at home");
  assert.deepEqual(openedUrls(home), ["https://example.org/by-nc", "https://example.org/by-socat"]);
  assert.deepEqual(openedUrls(office), []);
});

test("the default desktop's server stopped: the next send.ts opens on the other at once; senders in a loop lose and double nothing", { timeout: 120_000 }, async (t) => {
  const { socket, office, home } = await twoDesktops(t);
  const officeSocket = readdirSync(`${socket}.d`).sort()[0];
  const results: Array<{ url: string; code: number | null; stderr: string; startedAt: number }> = [];
  let clientGoneAt: number | undefined;
  let sentAfter = 0;
  // Two senders in a loop, as programs calling $BROWSER would, across the switch.
  const loop = async (which: number) => {
    for (let i = 0; sentAfter < 6; i++) {
      const url = `https://example.org/loop-${which}-${i}`;
      const startedAt = performance.now();
      const result = await sendFrom(t, socket, undefined, [url]);
      results.push({ url, code: result.code, stderr: result.stderr, startedAt });
      if (clientGoneAt !== undefined && startedAt > clientGoneAt) sentAfter += 1;
    }
  };
  const loops = [loop(1), loop(2)];
  await waitUntil(() => results.filter((r) => r.code === 0).length >= 4, 60_000, "four URLs sent before the switch");
  process.kill(home.server.pid, "SIGTERM");
  clientGoneAt = await waitUntil(() => !isAlive(home.clientPid), 10_000, "the home client to exit");
  // The path was handed over as the client left: within a second of it, at most.
  await waitUntil(() => holderOf(socket) === officeSocket, 1000, "the office client to hold the path");
  await office.server.stderr.waitFor(/the default desktop for this host again/, 5000);
  await Promise.all(loops);

  const everywhere = [...openedUrls(office), ...openedUrls(home)];
  assert.equal(new Set(everywhere).size, everywhere.length, `a URL was opened twice: ${everywhere.join(" ")}`);
  for (const result of results) {
    if (result.code === 0) {
      assert.equal(everywhere.filter((url) => url === result.url).length, 1, `${result.url} answered ok but not opened once`);
    } else {
      // Only one in flight as the server stopped: told, and printed to be copied; never "no server".
      assert.equal(result.code, 69, result.stderr);
      assert.match(result.stderr, /: the server went away\n|lost the connection to /);
      assert.ok(result.stderr.endsWith(`\n${result.url}`), result.stderr);
    }
  }
  const failures = results.filter((r) => r.code !== 0);
  assert.ok(failures.length <= 2, `${failures.length} URLs not opened:\n${failures.map((r) => r.stderr).join("\n")}`);
  const after = results.filter((r) => r.startedAt > clientGoneAt!);
  assert.ok(after.length >= 6 && after.every((r) => r.code === 0 && openedUrls(office).includes(r.url)), JSON.stringify(after));
  t.diagnostic(`${results.length} URLs sent, ${failures.length} in flight as the server stopped`);
  assert.doesNotMatch(office.server.stderr.text(), /disconnected/);
});

test("a SIGKILLed default: the next send.ts opens on the other at once, and its dead socket is cleared", { timeout: 90_000 }, async (t) => {
  const { socket, office, home } = await twoDesktops(t);
  const officeSocket = readdirSync(`${socket}.d`).sort()[0];
  process.kill(home.clientPid, "SIGKILL");
  const killedAt = await waitUntil(() => !isAlive(home.clientPid), 5000, "the home client to die");
  // Started at once: it finds the path dead, or already taken over.
  const sending = sendFrom(t, socket, undefined, ["--verbose", "https://example.org/after-kill"]);
  const heldAt = await waitUntil(() => holderOf(socket) === officeSocket, 5000, "the office client to hold the path");
  t.diagnostic(`path taken over ${Math.round(heldAt - killedAt)} ms after the kill`);
  assert.ok(heldAt - killedAt < 1000, `the path was taken over ${Math.round(heldAt - killedAt)} ms after the kill`);
  const next = await sending;
  assert.equal(next.code, 0, next.stderr);
  assert.equal(next.stderr, 'send: opened "https://example.org/after-kill" on desktop "office"');
  await waitUntil(() => readdirSync(`${socket}.d`).length === 1, 5000, "the dead client's socket to be removed");
  const status = await sendFrom(t, socket, undefined, ["--status"]);
  assert.match(status.stdout, /^connected to desktop "office" since \S+ \(client pid \d+ on [^)]+\)$/);
  await office.server.stderr.waitFor(/the default desktop for this host again/, 5000);
  assert.deepEqual(openedUrls(home), []);
});

test("a second client from the same desktop (after sleep) wins; the stale one stands by and ends with its heartbeat", { timeout: 90_000 }, async (t) => {
  const socket = join(tempDir(t), "sock");
  const before = await startDesktop(t, socket, OFFICE, ["--keepalive", "1"]);
  // The network under the first connection went silent, as after sleep.
  process.kill(before.sshPid, "SIGSTOP");
  t.after(() => { try { process.kill(before.sshPid, "SIGCONT"); } catch { /* gone */ } });
  const after = await startDesktop(t, socket, OFFICE, ["--keepalive", "1"]);
  assert.equal(holderOf(socket), readdirSync(`${socket}.d`).sort().at(-1));
  const sent = await sendFrom(t, socket, OFFICE, ["https://example.org/after-sleep"]);
  assert.equal(sent.code, 0, sent.stderr);
  assert.deepEqual(openedUrls(after), ["https://example.org/after-sleep"]);
  await waitUntil(() => !isAlive(before.clientPid), 20_000, "the stale client to end");
  assert.equal(readdirSync(`${socket}.d`).length, 1);
  assert.equal(holderOf(socket), readdirSync(`${socket}.d`)[0]);
  assert.doesNotMatch(after.server.stderr.text(), /standing by|disconnected/);
});

test("both servers with --reconnect for 30 s, six heartbeat intervals: no reconnect loop, each log quiet", { timeout: 120_000 }, async (t) => {
  // Heartbeats every 5 s: a standby taken for gone (15 s of silence) would be seen twice over.
  const { office, home } = await twoDesktops(t, ["--reconnect", "--keepalive", "5"]);
  // Watching for what must not happen: a window, not a wait for an event.
  await new Promise((resolve) => setTimeout(resolve, 30_000));
  assert.ok(office.server.alive() && home.server.alive());
  const lines = (session: Session) => session.server.stderr.seen.filter(Boolean);
  assert.equal(lines(home).length, 1, lines(home).join("\n"));
  assert.match(lines(home)[0], /connected: client pid/);
  assert.equal(lines(office).length, 2, lines(office).join("\n"));
  assert.match(lines(office)[1], /standing by: desktop "home"/);
  const sshRuns = (session: Session) => readFileSync(session.sshLog, "utf8").split("\n").filter(Boolean).length;
  assert.deepEqual([sshRuns(office), sshRuns(home)], [1, 1]);
});

test("inside tmux: the session's SSH_CONNECTION, updated by a later attach, wins over the shell's stale one", { timeout: 90_000 }, async (t) => {
  const missing = ["tmux", "script"].filter((tool) => spawnSync(tool, ["-V"]).error !== undefined);
  if (!needs(t, missing.length ? `${missing.join(", ")} (Debian: tmux, util-linux)` : undefined)) return;
  const { socket, office, home } = await twoDesktops(t);
  const dir = tempDir(t);
  const tmuxSocket = join(dir, "tmux");
  const tmux = (desk: Desk, ...args: string[]) => execFileSync("tmux", ["-S", tmuxSocket, "-f", "/dev/null", ...args],
    { env: { ...process.env, ...CLEAN, SSH_CONNECTION: sshConnection(desk) }, encoding: "utf8", timeout: 10_000 });
  // Started from the office (its first window a plain sh: the machine's own
  // login files are no business of this test)...
  tmux(OFFICE, "new-session", "-d", "-s", "work", "-x", "80", "-y", "24", "sh");
  t.after(() => spawnSync("tmux", ["-S", tmuxSocket, "kill-server"]));
  // ...attached later from home: tmux updates the session's SSH_CONNECTION (update-environment).
  start(t, "tmux attach", "script", ["-qfc", `tmux -S ${tmuxSocket} attach -t work`, "/dev/null"],
    { env: { ...CLEAN, SSH_CONNECTION: sshConnection(HOME), TERM: "xterm" } });
  await waitUntil(() => tmux(HOME, "show-environment", "-t", "work", "SSH_CONNECTION").startsWith(`SSH_CONNECTION=${HOME.address} `),
    20_000, "tmux to take home's SSH_CONNECTION on attach");
  // A shell that was started from the office still has the office's address in its environment.
  const out = join(dir, "out");
  const command = `env SSH_CONNECTION='${sshConnection(OFFICE)}' URLSERVER_SOCKET='${socket}' ` +
    `${process.execPath} --import tsx send.ts --verbose https://example.org/in-tmux > ${out} 2>&1; echo "exit $?" >> ${out}`;
  tmux(HOME, "new-window", "-d", "-t", "work", "-c", ROOT, command);
  await waitUntil(() => existsSync(out) && readFileSync(out, "utf8").includes("exit "), 30_000, "send.ts in tmux to finish");
  assert.equal(readFileSync(out, "utf8"), 'send: opened "https://example.org/in-tmux" on desktop "home"\nexit 0\n');
  assert.deepEqual(openedUrls(home), ["https://example.org/in-tmux"]);
  assert.deepEqual(openedUrls(office), []);
});

test("over real OpenSSH, two desktops with different addresses, one sshd: each desktop's session opens on its own desktop", { timeout: 120_000 }, async (t) => {
  const sshd = await startSshd(t, { separateDesktop: true, secondDesktop: true });
  if (!sshd) return;
  const second = sshd.secondDesktop!;
  const socket = join(tempDir(t), "sock");
  const common = { host: sshd.host, remoteCommand: sshd.remoteCommand, socket, env: CLEAN };
  const office = await startSession(t, ["--name", "office"], { ...common, ssh: sshd.sshWrapper });
  const home = await startSession(t, ["--name", "home"], { ...common, ssh: second.sshWrapper });
  const standing = await office.server.stderr.waitFor(/standing by/, 10_000);
  assert.ok(standing.endsWith(`standing by: desktop "home" (from ${second.address}) took over this host's socket path; sessions from this desktop still open here`), standing);
  // A session of each desktop's own on the host, as a user's shell there would be.
  const sendOver = async (ssh: string, url: string) => {
    const proc = start(t, "ssh send.ts", ssh, ["--", sshd.host,
      `cd ${ROOT} && URLSERVER_SOCKET=${socket} exec ${process.execPath} --import tsx send.ts --verbose ${url}`], { stdin: "ignore", env: CLEAN });
    const exit = await waitForExit(proc, 30_000, "send.ts over ssh");
    await waitUntil(() => proc.stderr.ended, 2000, "ssh's stderr to end");
    return { ...exit, stderr: proc.stderr.text() };
  };
  const fromOffice = await sendOver(sshd.sshWrapper, "https://example.org/office-session");
  assert.equal(fromOffice.code, 0, fromOffice.stderr);
  assert.equal(fromOffice.stderr, 'send: opened "https://example.org/office-session" on desktop "office"');
  const fromHome = await sendOver(second.sshWrapper, "https://example.org/home-session");
  assert.equal(fromHome.code, 0, fromHome.stderr);
  assert.equal(fromHome.stderr, 'send: opened "https://example.org/home-session" on desktop "home"');
  await waitUntil(() => openedUrls(office).length + openedUrls(home).length === 2, 5000, "both URLs opened");
  assert.deepEqual(openedUrls(office), ["https://example.org/office-session"]);
  assert.deepEqual(openedUrls(home), ["https://example.org/home-session"]);
});

test("every client's socket passes the single socket's checks: PATH.d another user's, or open to others, is refused (77) by client.ts and send.ts", { timeout: 60_000 }, async (t) => {
  if (!needs(t, process.getuid?.() === 0 ? undefined : "root, to give a directory to another uid")) return;
  for (const [why, prepare] of [
    ["it is owned by uid 54321, not 0", (directory: string) => chownSync(directory, 54321, 54321)],
    ["its mode 755 lets others in", (directory: string) => chmodSync(directory, 0o755)],
  ] as const) {
    const socket = join(tempDir(t), "sock");
    mkdirSync(`${socket}.d`, { mode: 0o700 });
    prepare(`${socket}.d`);
    const env = { ...CLEAN, URLSERVER_SOCKET: socket };
    const client = await run(t, "client.ts", [], { env });
    assert.equal(client.code, 77);
    assert.equal(client.stderr, `client: refusing to use socket directory "${socket}.d": ${why}`);
    assert.equal(existsSync(socket), false);
    const sender = await run(t, "send.ts", ["https://example.org/not-sent"], { env });
    assert.equal(sender.code, 77);
    assert.equal(sender.stderr, `send: refusing to use socket directory "${socket}.d": ${why}\nhttps://example.org/not-sent`);
  }
});

test("an address from the environment only picks among the user's own sockets: another user's socket in PATH.d gets nothing", { timeout: 60_000 }, async (t) => {
  if (!needs(t, process.getuid?.() === 0 ? undefined : "root, to give a socket to another uid")) return;
  const { socket, office, home } = await twoDesktops(t);
  // The newest name, claiming the office's address, owned by someone else.
  const received: string[] = [];
  const impostor = createServer((connection) => {
    connection.on("data", (chunk) => received.push(chunk.toString()));
    connection.end("ok desktop=office address=10.1.0.1 since=x runtime=x pid=1 default=no\n");
  });
  const impostorPath = join(`${socket}.d`, "zzzzzzzz-1");
  await new Promise<void>((resolve) => impostor.listen(impostorPath, resolve));
  t.after(() => impostor.close());
  chownSync(impostorPath, 54321, 54321);
  const sent = await sendFrom(t, socket, OFFICE, ["--verbose", "https://example.org/not-for-them"]);
  assert.equal(sent.code, 0, sent.stderr);
  assert.deepEqual(received, []);
  await waitUntil(() => openedUrls(office).length === 1, 5000, "the office to open it");
  assert.deepEqual(openedUrls(home), []);
});

test("a hostile remote's standby line: its names and addresses reach the terminal escaped, never raw", { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t);
  const replies = join(dir, "replies");
  writeFileSync(join(dir, "lines"), [
    "standby desktop=%C2%9B2J%E2%80%AEevil address=%1B%5D0%3Bt%07",
    "standby desktop=\u009b31m\u2028x address=\u202e1.2.3.4",
    "default",
    "open 1 https://example.org/after-the-role-lines",
    "",
  ].join("\n"));
  const rogue = `exec ${process.execPath} ${join(ROOT, "test/fixtures/rogue-client.mjs")}`;
  const server = start(t, "server.ts", process.execPath, ["--import", "tsx", join(ROOT, "server.ts"), "--local", "--remote-command", rogue,
    "--browser", FAKE_BROWSER, "testhost"], { env: { FAKE_BROWSER_LOG: join(dir, "opened"), ROGUE_REPLIES: replies, ROGUE_LINES: join(dir, "lines") } });
  await waitUntil(() => existsSync(replies) && readFileSync(replies, "utf8").includes("ok 1\n"), 15_000, "the answer to the URL");
  const terminal = server.stderr.text();
  assert.doesNotMatch(terminal, /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\p{Cf}\u2028\u2029]/u, "a raw character on the terminal");
  assert.match(terminal, /standing by: desktop "\\u009b2J\\u202eevil" \(from \\u001b\]0;t\\u0007\) took over/);
  assert.match(terminal, /standing by: desktop "\\u009b31m\\u2028x" \(from \\u202e1\.2\.3\.4\) took over/);
  assert.match(terminal, /the default desktop for this host again/);
});
