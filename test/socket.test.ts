// Ensures client.ts binds, and send.ts finds, the socket the README promises
// (--socket, else $URLSERVER_SOCKET, else $XDG_RUNTIME_DIR/urlserver.sock, else
// /tmp/urlserver-UID/sock); that the socket is owner-only from the moment it
// exists and /tmp/urlserver-UID is private or refused; and that a stale socket
// is replaced while a live one, a regular file or a newer client's socket is
// never touched. The test plays the server itself: it reads "open ID URL" from
// the client's stdout and answers "ok ID" on its stdin.

import assert from "node:assert/strict";
import {
  chmodSync, chownSync, existsSync, lstatSync, linkSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync,
  symlinkSync, unlinkSync, watch, writeFileSync,
} from "node:fs";
import { connect, createServer } from "node:net";
import { basename, join } from "node:path";
import { test } from "node:test";
import type { TestContext } from "node:test";
import { SCRIPT_NODE, ROOT, START_SERVER, needs, run, start, tempDir, waitForExit, waitUntil, notOpened } from "./helpers.ts";
import type { Proc } from "./helpers.ts";

// Every process gets both variables, so the test machine's own never leak in;
// the scripts read an empty value as unset.
const UNSET = { URLSERVER_SOCKET: "", XDG_RUNTIME_DIR: "" };

// /tmp/urlserver-UID is shared by everything the user runs, so tests that need
// it run the scripts as a uid no one uses, never as the user running the tests.
const UID = 54321;
const USER_DIR = `/tmp/urlserver-${UID}`;
// At once, not after its 10 s --timeout: starting node with tsx on a loaded
// test machine takes seconds of that.
const SEND_BOUND_MS = 5000;

type User = { uid: number; gid: number; home: string };
type Launch = {
  env: Record<string, string>;
  user?: User;
  // Start under umask 000 and create this file first, to show that it was.
  permissiveUmaskProbe?: string;
  stdin?: "pipe" | "ignore";
};

/** Starts client.ts or send.ts, optionally as another user and under umask 000. */
function launch(t: TestContext, script: "client.ts" | "send.ts", args: string[], options: Launch): Proc {
  let command = [process.execPath, "--import", "tsx", join(ROOT, script), ...args];
  if (options.permissiveUmaskProbe) {
    command = ["sh", "-c", 'umask 000 && : > "$1" && shift && exec "$@"', "sh", options.permissiveUmaskProbe, ...command];
  }
  // tsx keeps its cache under $TMPDIR, so another user gets a temp dir of its own.
  const { uid, gid, home } = options.user ?? {};
  const env = home ? { HOME: home, TMPDIR: home, ...options.env } : options.env;
  return start(t, uid ? `${script} (uid ${uid})` : script, command[0], command.slice(1), { env, stdin: options.stdin, uid, gid });
}

/** Waits for the client's hello and returns the socket path it names. */
async function helloSocket(client: Proc): Promise<string> {
  const hello = await client.stdout.waitFor(/^hello /, 10_000);
  const match = /^hello urlserver\/1 runtime=\S+ pid=\d+ socket=(\S+) version=\S+$/.exec(hello);
  assert.ok(match, `unexpected hello: ${hello}`);
  return decodeURIComponent(match[1]);
}

/** Waits for a process to exit and its output to end. */
async function finished(proc: Proc, timeoutMs: number, what: string) {
  const exit = await waitForExit(proc, timeoutMs, what);
  await Promise.all([proc.stdout, proc.stderr].map((lines) => waitUntil(() => lines.ended, 2000, `${lines.name} to end`)));
  return { ...exit, stdout: proc.stdout.text(), stderr: proc.stderr.text() };
}

/**
 * Runs send.ts with args and url, answers "ok" for the URL once this client
 * forwards it, and returns send.ts's result: proof that send.ts reached this client.
 */
async function sendThrough(t: TestContext, client: Proc, url: string, args: string[], options: Launch) {
  const sender = launch(t, "send.ts", [...args, url], { ...options, stdin: "ignore" });
  const forwarded = new RegExp(`^open (\\d+) ${url.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}$`);
  const open = await Promise.race([
    client.stdout.waitFor(forwarded, 10_000),
    sender.exited.then(async () => {
      const result = await finished(sender, 2000, "send.ts");
      throw new Error(`send.ts exited ${result.code} before the client forwarded ${url}; stderr:\n${result.stderr}`);
    }),
  ]);
  client.child.stdin!.write(`ok ${forwarded.exec(open)![1]}\n`);
  return finished(sender, 10_000, "send.ts");
}

/** Whether something accepts connections on path (bounded). */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const probe = connect(path);
    const timer = setTimeout(() => { probe.destroy(); reject(new Error(`connecting to ${path} hung`)); }, 2000);
    probe.on("connect", () => { clearTimeout(timer); probe.destroy(); resolve(true); });
    probe.on("error", () => { clearTimeout(timer); resolve(false); });
  });
}

/**
 * Leaves a socket nobody listens on at path, as a SIGKILLed client does.
 * Closing a listener unlinks the path it bound, so it binds a twin name and
 * path is a second link to the same socket.
 */
async function staleSocket(path: string): Promise<void> {
  const twin = `${path}.twin`;
  const listener = createServer();
  await new Promise<void>((resolve, reject) => {
    listener.once("error", reject);
    listener.listen(twin, resolve);
  });
  linkSync(twin, path);
  await new Promise<void>((resolve) => listener.close(() => resolve()));
  assert.ok(lstatSync(path).isSocket() && !existsSync(twin), "the stale socket was not set up");
  assert.equal(await answers(path), false, "the stale socket answers");
}

/**
 * A user the scripts can run as, with a home of its own, and no
 * /tmp/urlserver-UID before or after the test; undefined when the test is skipped.
 */
function otherUser(t: TestContext): User | undefined {
  let missing: string | undefined;
  if (process.getuid?.() !== 0) {
    missing = `root, to run the client as uid ${UID} (this is uid ${process.getuid?.()})`;
  } else if (readFileSync("/etc/passwd", "utf8").split("\n").some((entry) => entry.split(":")[2] === String(UID))) {
    missing = `an unused uid: ${UID} belongs to a user on this machine, whose ${USER_DIR} must not be touched`;
  }
  if (!needs(t, missing)) return undefined;
  const home = tempDir(t);
  chownSync(home, UID, UID);
  rmSync(USER_DIR, { recursive: true, force: true });
  t.after(() => rmSync(USER_DIR, { recursive: true, force: true }));
  return { uid: UID, gid: UID, home };
}

/** The client's exit and its output when it refuses to start. */
async function refusal(t: TestContext, args: string[], options: Launch) {
  const client = launch(t, "client.ts", args, options);
  return finished(client, 10_000, "client.ts");
}

test("--socket wins over $URLSERVER_SOCKET and $XDG_RUNTIME_DIR, in client.ts and send.ts", { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t);
  const xdg = join(dir, "xdg");
  mkdirSync(xdg, { mode: 0o700 });
  const env = { URLSERVER_SOCKET: join(dir, "env.sock"), XDG_RUNTIME_DIR: xdg };
  // A space shows that the hello line carries the path percent-encoded.
  const socket = join(dir, "opt sock");
  const client = launch(t, "client.ts", ["--socket", socket], { env });
  assert.equal(await helloSocket(client), socket);
  assert.match(client.stdout.seen[0], / socket=%2Ftmp%2Fus-\w+%2Fopt%20sock /);
  assert.ok(lstatSync(socket).isSocket());
  assert.equal(existsSync(env.URLSERVER_SOCKET), false);
  assert.equal(existsSync(join(xdg, "urlserver.sock")), false);

  const result = await sendThrough(t, client, "https://example.org/option", ["--socket", socket], { env });
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stderr, "");
});

test("$URLSERVER_SOCKET wins over $XDG_RUNTIME_DIR, in client.ts and send.ts", { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t);
  const xdg = join(dir, "xdg");
  mkdirSync(xdg, { mode: 0o700 });
  const env = { URLSERVER_SOCKET: join(dir, "env.sock"), XDG_RUNTIME_DIR: xdg };
  const client = launch(t, "client.ts", [], { env });
  assert.equal(await helloSocket(client), env.URLSERVER_SOCKET);
  assert.ok(lstatSync(env.URLSERVER_SOCKET).isSocket());
  assert.equal(existsSync(join(xdg, "urlserver.sock")), false);

  const result = await sendThrough(t, client, "https://example.org/env", [], { env });
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stderr, "");
});

test("$XDG_RUNTIME_DIR/urlserver.sock when $URLSERVER_SOCKET is empty, in client.ts and send.ts", { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t);
  const env = { URLSERVER_SOCKET: "", XDG_RUNTIME_DIR: dir };
  const client = launch(t, "client.ts", [], { env });
  const socket = join(dir, "urlserver.sock");
  assert.equal(await helloSocket(client), socket);
  assert.ok(lstatSync(socket).isSocket());

  const result = await sendThrough(t, client, "https://example.org/xdg", [], { env });
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stderr, "");
});

test("neither variable set: /tmp/urlserver-UID/sock, the directory created 0700 even under umask 000; send.ts finds it", { timeout: 30_000 }, async (t) => {
  const user = otherUser(t);
  if (!user) return;
  const probe = join(user.home, "umask-probe");
  const client = launch(t, "client.ts", [], { env: UNSET, user, permissiveUmaskProbe: probe });
  const socket = `${USER_DIR}/sock`;
  assert.equal(await helloSocket(client), socket);
  assert.equal(lstatSync(probe).mode & 0o777, 0o666, "the client did not start under umask 000");
  assert.match(client.stdout.seen[0], / socket=%2Ftmp%2Furlserver-54321%2Fsock /);
  const directory = lstatSync(USER_DIR);
  assert.ok(directory.isDirectory());
  assert.equal(directory.uid, UID);
  assert.equal((directory.mode & 0o777).toString(8), "700");
  const info = lstatSync(socket);
  assert.ok(info.isSocket());
  assert.equal(info.uid, UID);
  assert.equal(info.mode & 0o077, 0, `socket mode ${(info.mode & 0o777).toString(8)}`);

  const result = await sendThrough(t, client, "https://example.org/default", [], { env: UNSET, user });
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stderr, "");
});

test("the socket has no group or other bits from the moment it exists, under umask 000", { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t);
  const socket = join(dir, "sock");
  // A chmod after listen would end with the same mode; inotify reports it as a
  // "change" of the socket, so none may come between its creation and hello.
  const events: string[] = [];
  const watcher = watch(dir, (event, name) => events.push(`${event} ${name}`));
  t.after(() => watcher.close());
  const probe = join(dir, "umask-probe");
  const client = launch(t, "client.ts", [], { env: { ...UNSET, URLSERVER_SOCKET: socket }, permissiveUmaskProbe: probe });
  assert.equal(await helloSocket(client), socket);
  const info = lstatSync(socket);
  assert.equal(lstatSync(probe).mode & 0o777, 0o666, "the client did not start under umask 000");
  assert.ok(info.isSocket());
  assert.equal(info.mode & 0o077, 0, `socket mode ${(info.mode & 0o777).toString(8)}`);
  assert.equal(info.mode & 0o600, 0o600, `socket mode ${(info.mode & 0o777).toString(8)}: the owner cannot use it`);

  // inotify delivers in order: once the marker's event is in, so is every earlier one.
  writeFileSync(join(dir, "marker"), "");
  await waitUntil(() => events.includes("rename marker"), 5000, "the watcher to report the marker");
  assert.ok(events.includes("rename sock"), `the socket's creation was not seen: ${events.join(", ")}`);
  assert.deepEqual(events.filter((event) => event === "change sock"), [], "the socket's mode or owner changed after it was created");
});

test("/tmp/urlserver-UID owned by the user with mode 0700 is used as it is", { timeout: 30_000 }, async (t) => {
  const user = otherUser(t);
  if (!user) return;
  mkdirSync(USER_DIR);
  chownSync(USER_DIR, UID, UID);
  chmodSync(USER_DIR, 0o700);
  const before = lstatSync(USER_DIR);
  const client = launch(t, "client.ts", [], { env: UNSET, user });
  assert.equal(await helloSocket(client), `${USER_DIR}/sock`);
  const after = lstatSync(USER_DIR);
  assert.equal(after.ino, before.ino, "the directory was replaced");
  assert.equal((after.mode & 0o777).toString(8), "700");

  const result = await sendThrough(t, client, "https://example.org/existing-dir", [], { env: UNSET, user });
  assert.equal(result.code, 0, result.stderr);
});

test("/tmp/urlserver-UID with mode 0755: client exits 77 and leaves it alone", { timeout: 30_000 }, async (t) => {
  const user = otherUser(t);
  if (!user) return;
  mkdirSync(USER_DIR);
  chownSync(USER_DIR, UID, UID);
  chmodSync(USER_DIR, 0o755);
  const result = await refusal(t, [], { env: UNSET, user });
  assert.equal(result.code, 77);
  assert.equal(result.stderr, `client: refusing to use socket directory "${USER_DIR}": its mode 755 lets others in`);
  assert.equal(result.stdout, "");
  assert.equal((lstatSync(USER_DIR).mode & 0o777).toString(8), "755");
  assert.deepEqual(readdirSync(USER_DIR), []);
});

test("/tmp/urlserver-UID owned by another uid: client exits 77", { timeout: 30_000 }, async (t) => {
  const user = otherUser(t);
  if (!user) return;
  mkdirSync(USER_DIR);
  chownSync(USER_DIR, UID + 1, UID + 1);
  chmodSync(USER_DIR, 0o700);
  const result = await refusal(t, [], { env: UNSET, user });
  assert.equal(result.code, 77);
  assert.equal(result.stderr, `client: refusing to use socket directory "${USER_DIR}": it is owned by uid ${UID + 1}, not ${UID}`);
  assert.equal(result.stdout, "");
  assert.deepEqual(readdirSync(USER_DIR), []);
});

test("/tmp/urlserver-UID a symlink, even to a private directory of the user: client exits 77", { timeout: 30_000 }, async (t) => {
  const user = otherUser(t);
  if (!user) return;
  const target = join(user.home, "elsewhere");
  mkdirSync(target);
  chownSync(target, UID, UID);
  chmodSync(target, 0o700);
  symlinkSync(target, USER_DIR);
  const result = await refusal(t, [], { env: UNSET, user });
  assert.equal(result.code, 77);
  assert.equal(result.stderr, `client: refusing to use socket directory "${USER_DIR}": it is not a directory`);
  assert.equal(result.stdout, "");
  assert.ok(lstatSync(USER_DIR).isSymbolicLink());
  assert.deepEqual(readdirSync(target), []);
});

test("a stale socket left by a SIGKILLed client is replaced: the next client binds and works", { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t);
  const socket = join(dir, "sock");
  const env = { ...UNSET, URLSERVER_SOCKET: socket };
  const killed = launch(t, "client.ts", [], { env });
  await helloSocket(killed);
  process.kill(killed.pid, "SIGKILL");
  await waitForExit(killed, 5000, "the killed client");
  assert.ok(lstatSync(socket).isSocket(), "a SIGKILLed client cannot remove its socket");
  assert.equal(await answers(socket), false);

  const client = launch(t, "client.ts", [], { env });
  assert.equal(await helloSocket(client), socket);
  // No inode comparison: the stale socket's inode is freed when it is
  // unlinked, and the new socket may well get the same number.
  assert.ok(lstatSync(socket).isSocket());
  const result = await sendThrough(t, client, "https://example.org/after-stale", [], { env });
  assert.equal(result.code, 0, result.stderr);
});

test("a live socket is taken over by a newer client in one rename: the first stands by, reachable on its own socket", { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t);
  const socket = join(dir, "sock");
  const env = { ...UNSET, URLSERVER_SOCKET: socket };
  const first = launch(t, "client.ts", [], { env });
  await helloSocket(first);
  const firstOwn = join(`${socket}.d`, readdirSync(`${socket}.d`)[0]);
  assert.equal(lstatSync(socket).ino, lstatSync(firstOwn).ino, "the path is not a link to the first client's socket");

  const second = launch(t, "client.ts", [], { env });
  assert.equal(await helloSocket(second), socket);
  const secondOwn = join(`${socket}.d`, readdirSync(`${socket}.d`).find((name) => join(`${socket}.d`, name) !== firstOwn)!);
  assert.equal(lstatSync(socket).ino, lstatSync(secondOwn).ino, "the path is not the newer client's");
  assert.ok(first.alive(), "the first client exited");
  assert.equal(first.stderr.text(), "");

  const result = await sendThrough(t, second, "https://example.org/newest", [], { env });
  assert.equal(result.code, 0, result.stderr);
  const direct = await sendThrough(t, first, "https://example.org/still-first", ["--socket", firstOwn], { env });
  assert.equal(direct.code, 0, direct.stderr);
  // The newer one leaving gives the path back to the first.
  second.child.stdin!.end();
  await waitForExit(second, 5000, "the newer client");
  assert.equal(lstatSync(socket).ino, lstatSync(firstOwn).ino, "the path was not handed back");
  assert.deepEqual(readdirSync(`${socket}.d`), [basename(firstOwn)]);
});

test("a regular file at the socket path is never touched: client exits 69", { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t);
  const socket = join(dir, "sock");
  writeFileSync(socket, "someone's data\n", { mode: 0o644 });
  const before = lstatSync(socket);
  const result = await refusal(t, [], { env: { ...UNSET, URLSERVER_SOCKET: socket } });
  assert.equal(result.code, 69);
  assert.equal(result.stderr, `client: "${socket}" exists and is not a socket: not touching it`);
  assert.equal(result.stdout, "");
  const after = lstatSync(socket);
  assert.ok(after.isFile());
  assert.equal(after.ino, before.ino);
  assert.equal(readFileSync(socket, "utf8"), "someone's data\n");
});

for (const moved of ["renamed", "unlinked"] as const) {
  test(`an old client ending after its socket was ${moved} and replaced leaves the new client's socket alone`, { timeout: 30_000 }, async (t) => {
    const dir = tempDir(t);
    const socket = join(dir, "sock");
    const env = { ...UNSET, URLSERVER_SOCKET: socket };
    const old = launch(t, "client.ts", [], { env });
    await helloSocket(old);
    if (moved === "renamed") renameSync(socket, join(dir, "old.sock"));
    else unlinkSync(socket);

    const client = launch(t, "client.ts", [], { env });
    assert.equal(await helloSocket(client), socket);
    const ours = lstatSync(socket);
    // The old client's stdin ends: it exits and runs its socket cleanup.
    old.child.stdin!.end();
    const exit = await waitForExit(old, 5000, "the old client");
    assert.equal(exit.code, 0, old.stderr.text());
    const now = lstatSync(socket, { throwIfNoEntry: false });
    assert.ok(now, "the old client deleted the new client's socket");
    assert.equal(now.ino, ours.ino);
    const result = await sendThrough(t, client, `https://example.org/after-${moved}`, [], { env });
    assert.equal(result.code, 0, result.stderr);
  });
}

test("send.ts with no socket: exits 69 at once saying no server is connected", { timeout: 30_000 }, async (t) => {
  const socket = join(tempDir(t), "sock");
  const result = await run(t, "send.ts", ["https://example.org/nobody"], { env: { ...UNSET, URLSERVER_SOCKET: socket } });
  assert.equal(result.code, 69);
  assert.ok(result.ms < SEND_BOUND_MS, `send.ts took ${Math.round(result.ms)} ms`);
  assert.equal(result.stderr, notOpened([`send: cannot connect to "${socket}": no server is connected on this host: ${START_SERVER}`], ["https://example.org/nobody"]));
  assert.equal(result.stdout, "");
});

test("send.ts with a stale socket nobody listens on: exits 69 at once saying no server is connected", { timeout: 30_000 }, async (t) => {
  const socket = join(tempDir(t), "sock");
  await staleSocket(socket);
  const result = await run(t, "send.ts", ["https://example.org/stale"], { env: { ...UNSET, URLSERVER_SOCKET: socket } });
  assert.equal(result.code, 69);
  assert.ok(result.ms < SEND_BOUND_MS, `send.ts took ${Math.round(result.ms)} ms`);
  assert.equal(result.stderr, notOpened([`send: cannot connect to "${socket}": no server is connected on this host: ${START_SERVER}`], ["https://example.org/stale"]));
  assert.equal(result.stdout, "");
});

/**
 * Starts the eavesdropper as uid, listening on path with a socket anyone can
 * connect to; returns the file it records what it receives in.
 */
async function eavesdropper(t: TestContext, path: string, uid: number): Promise<string> {
  const dir = tempDir(t);
  chownSync(dir, uid, uid);
  const log = join(dir, "received");
  writeFileSync(log, "");
  chownSync(log, uid, uid);
  const listener = start(t, `eavesdropper (uid ${uid})`, process.execPath, [join(ROOT, "test/fixtures/eavesdropper.mjs"), path, log],
    { uid, gid: uid });
  await listener.stdout.waitFor(/^listening$/, 10_000);
  return log;
}

test("another user made /tmp/urlserver-UID first and listens in it: send.ts exits 77 and sends them nothing", { timeout: 30_000 }, async (t) => {
  const user = otherUser(t);
  if (!user) return;
  const intruder = UID + 1;
  mkdirSync(USER_DIR);
  chownSync(USER_DIR, intruder, intruder);
  chmodSync(USER_DIR, 0o755);
  const received = await eavesdropper(t, `${USER_DIR}/sock`, intruder);
  const url = "https://example.org/reset?token=SECRET";
  const result = await finished(launch(t, "send.ts", [url], { env: UNSET, user, stdin: "ignore" }), 10_000, "send.ts");
  assert.equal(result.code, 77);
  assert.equal(result.stderr, notOpened([`send: refusing to use socket directory "${USER_DIR}": it is owned by uid ${intruder}, not ${UID}`], [url]));
  assert.equal(readFileSync(received, "utf8"), "", "the other user received the URL");
});

test("/tmp/urlserver-UID ours but open to others (0755): send.ts exits 77, as the client would", { timeout: 30_000 }, async (t) => {
  const user = otherUser(t);
  if (!user) return;
  mkdirSync(USER_DIR);
  chownSync(USER_DIR, UID, UID);
  chmodSync(USER_DIR, 0o755);
  const url = "https://example.org/open-dir";
  const result = await finished(launch(t, "send.ts", [url], { env: UNSET, user, stdin: "ignore" }), 10_000, "send.ts");
  assert.equal(result.code, 77);
  assert.equal(result.stderr, notOpened([`send: refusing to use socket directory "${USER_DIR}": its mode 755 lets others in`], [url]));
});

for (const how of ["--socket", "$URLSERVER_SOCKET"] as const) {
  test(`a socket of another user's at the ${how} path: send.ts exits 77 and sends them nothing`, { timeout: 30_000 }, async (t) => {
    const user = otherUser(t);
    if (!user) return;
    const intruder = UID + 1;
    // A directory everyone may create in, as /tmp is.
    const shared = tempDir(t);
    chmodSync(shared, 0o1777);
    const socket = join(shared, "sock");
    const received = await eavesdropper(t, socket, intruder);
    const url = "https://example.org/private";
    const args = how === "--socket" ? ["--socket", socket, url] : [url];
    const env = how === "--socket" ? UNSET : { ...UNSET, URLSERVER_SOCKET: socket };
    const result = await finished(launch(t, "send.ts", args, { env, user, stdin: "ignore" }), 10_000, "send.ts");
    assert.equal(result.code, 77);
    assert.equal(result.stderr, notOpened([`send: refusing to use socket "${socket}": it is owned by uid ${intruder}, not ${UID}`], [url]));
    assert.equal(readFileSync(received, "utf8"), "", "the other user received the URL");
  });
}

test("something other than a socket at the path: send.ts exits 77 without writing to it", { timeout: 30_000 }, async (t) => {
  const path = join(tempDir(t), "sock");
  writeFileSync(path, "");
  const result = await run(t, "send.ts", ["https://example.org/file"], { env: { ...UNSET, URLSERVER_SOCKET: path } });
  assert.equal(result.code, 77);
  assert.equal(result.stderr, notOpened([`send: refusing to use socket "${path}": it is not a socket`], ["https://example.org/file"]));
  assert.equal(readFileSync(path, "utf8"), "");
});

test("a stale socket owned by another user: the client exits 77 saying so and leaves it", { timeout: 30_000 }, async (t) => {
  const socket = join(tempDir(t), "sock");
  await staleSocket(socket);
  chownSync(socket, UID + 1, UID + 1);
  const result = await refusal(t, [], { env: { ...UNSET, URLSERVER_SOCKET: socket } });
  assert.equal(result.code, 77);
  assert.equal(result.stderr, `client: refusing to use socket "${socket}": it is owned by uid ${UID + 1}, not ${process.getuid!()}`);
  assert.equal(lstatSync(socket).uid, UID + 1);
});

test("a socket path longer than the system allows: client and send.ts say so (exit 64), nothing is bound", { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t);
  const socket = join(dir, `${"s".repeat(120 - dir.length)}.sock`);
  const bytes = Buffer.byteLength(socket);
  const client = await refusal(t, ["--socket", socket], { env: UNSET });
  assert.equal(client.code, 64);
  assert.equal(client.stderr, `client: socket path "${socket}" is ${bytes} bytes long; this system allows at most 107\nRun "client.ts --help" for usage.`);
  assert.deepEqual(readdirSync(dir), []);
  const sender = await run(t, "send.ts", ["--socket", socket, "https://example.org/long-path"], { env: UNSET });
  assert.equal(sender.code, 64);
  assert.equal(sender.stderr, notOpened([`send: socket path "${socket}" is ${bytes} bytes long; this system allows at most 107`], ["https://example.org/long-path"]));
});

// Node 22.18+ when .runtimes has it: clients that start in 60 ms rather than
// 400 ms start closer together, which is when they race.

test("clients started together on one stale socket: all serve, the path leads to exactly one of them, the others stand by", { timeout: 300_000 }, async (t) => {
  // The race is won or lost by microseconds: many rounds make a lost one show
  // (before turns were taken, one round in ten left two clients "listening";
  // before the client holding the path could leave after the last other had
  // removed the directory, some rounds left the path behind).
  const command = [...SCRIPT_NODE, join(ROOT, "client.ts")];
  for (let round = 0; round < 20; round++) {
    const dir = tempDir(t);
    const socket = join(dir, "sock");
    await staleSocket(socket);
    const env = { ...UNSET, URLSERVER_SOCKET: socket };
    const clients = Array.from({ length: 5 }, (_, i) => start(t, `client ${i}`, command[0], command.slice(1), { env }));
    await Promise.all(clients.map((client) => client.stdout.waitFor(/^hello /, 15_000)));
    const own = readdirSync(`${socket}.d`).map((name) => lstatSync(join(`${socket}.d`, name)));
    assert.equal(own.length, 5, `round ${round}: ${readdirSync(`${socket}.d`).join(" ")}`);
    assert.equal(own.filter((info) => info.ino === lstatSync(socket).ino).length, 1, `round ${round}: the path is none of the clients' sockets`);
    for (const path of readdirSync(`${socket}.d`)) assert.ok(await answers(join(`${socket}.d`, path)), `round ${round}: ${path} does not answer`);
    const holder = clients.find((client) => String(client.pid) === readdirSync(`${socket}.d`)
      .find((name) => lstatSync(join(`${socket}.d`, name)).ino === lstatSync(socket).ino)!.split("-")[1])!;
    const result = await sendThrough(t, holder, `https://example.org/race-${round}`, [], { env });
    assert.equal(result.code, 0, result.stderr);
    for (const client of clients) client.child.stdin!.end();
    await Promise.all(clients.map((client) => waitForExit(client, 5000, "a client")));
    assert.deepEqual(readdirSync(dir), [], `a socket, its directory or a stale one moved aside was left behind: ${clients.map((c) => c.stderr.text()).join("\n")}`);
  }
});
