// Ensures several desktops can serve one host (README: Several desktops):
// two servers, each with the fake ssh giving its client a different
// SSH_CONNECTION, serve the same socket path. The newest client holds the
// path, the other stands by (its server says so and keeps running); send.ts
// routes by its session's SSH_CONNECTION (asked of tmux inside tmux), by
// URLSERVER_DESKTOP, else to the newest; when the default goes, the other
// takes over at once, no URL lost or opened twice; --reconnect never fights.

import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, lstatSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import type { TestContext } from "node:test";
import {
  ROOT, isAlive, needs, opened, run, start, startSession, tempDir, waitForExit, waitUntil,
} from "./helpers.ts";
import type { Session } from "./helpers.ts";

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
  assert.doesNotMatch(office.server.stderr.text(), /disconnected|exit|69/);
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
  assert.match(first, new RegExp(`^connected to desktop "home" since ${since} \\(client pid ${home.clientPid} on node/\\S+ with tsx\\), from 10\\.1\\.0\\.2, the default$`));
  assert.match(second, new RegExp(`^connected to desktop "office" since ${since} \\(client pid ${office.clientPid} on node/\\S+ with tsx\\), from 10\\.1\\.0\\.1, used by this session$`));
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
