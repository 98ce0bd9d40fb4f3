// Ensures URLs get from send.ts (or any socket writer) to the desktop's
// opener: byte for byte, once each, acknowledged only once the opener runs,
// also under 50 concurrent senders, over the fake ssh and with --local.

import assert from "node:assert/strict";
import { chmodSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { test } from "node:test";
import {
  isAlive, killAtEnd, killIfAlive, needs, notOpened, opened, send, start, startSession, tempDir, waitForExit, waitUntil,
} from "./helpers.ts";
import type { Session } from "./helpers.ts";

/** Writes lines on one raw connection, half-closes, and returns the answers. */
function rawExchange(socket: string, lines: string[], timeoutMs = 10_000): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const connection = connect(socket, () => connection.end(lines.map((line) => `${line}\n`).join("")));
    let received = "";
    const timer = setTimeout(() => {
      connection.destroy();
      reject(new Error(`no end of answers within ${timeoutMs} ms; got ${JSON.stringify(received)}`));
    }, timeoutMs);
    connection.setEncoding("utf8");
    connection.on("data", (chunk: string) => { received += chunk; });
    connection.on("error", (error) => { clearTimeout(timer); reject(error); });
    connection.on("close", () => { clearTimeout(timer); resolve(received.split("\n").filter(Boolean)); });
  });
}

async function assertOpenedExactly(session: Session, urls: string[]) {
  await waitUntil(() => opened(session.browserLog).length >= urls.length, 5000, `${urls.length} opener runs`);
  assert.deepEqual(opened(session.browserLog).map(([, url]) => url).sort(), [...urls].sort());
  for (const [argc] of opened(session.browserLog)) assert.equal(argc, 1, "the opener gets the URL as its only argument");
}

test("a URL sent with send.ts is opened once, as the opener's only argument, and send.ts exits 0 silently", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t);
  const result = await send(t, session, ["https://example.org/a?b=c&d=e#f"]);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout, "");
  assert.equal(result.stderr, "");
  await assertOpenedExactly(session, ["https://example.org/a?b=c&d=e#f"]);
  assert.match(session.server.stderr.text(), /^\S+Z testhost: opened "https:\/\/example\.org\/a\?b=c&d=e#f" with /m);
});

test("ssh is run as PROGRAM -T -o ServerAliveInterval=K -o ServerAliveCountMax=3 -o ConnectTimeout=10 [control master options] -- HOST COMMAND", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t, ["--keepalive", "7"]);
  const { args } = JSON.parse(readFileSync(session.sshLog, "utf8").split("\n")[0]);
  assert.deepEqual(args.slice(0, 7), ["-T", "-o", "ServerAliveInterval=7", "-o", "ServerAliveCountMax=3", "-o", "ConnectTimeout=10"]);
  // The control master options that loopback forwarding needs (test/forward.test.ts).
  assert.deepEqual(args.slice(7, 13).filter((_: string, i: number) => i % 2 === 1).map((option: string) => option.split("=")[0]),
    ["ControlMaster", "ControlPath", "ControlPersist"]);
  assert.deepEqual(args.slice(13, 15), ["--", "testhost"]);
  assert.equal(args.length, 16, "the remote command is one argument after the host");
});

test("several URLs in one send.ts are all opened, byte for byte, including non-ASCII and shell syntax", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t);
  const urls = ["https://example.org/1", "https://例え.jp/パス?q=ü", "https://example.org/$(id)`id`;id|id", "http://example.org:8080/x"];
  const result = await send(t, session, urls);
  assert.equal(result.code, 0, result.stderr);
  await assertOpenedExactly(session, urls);
});

test("50 concurrent raw senders and 10 concurrent send.ts runs: every URL opened exactly once", { timeout: 60_000 }, async (t) => {
  const session = await startSession(t, ["--rate", "0"]);
  const raw = Array.from({ length: 50 }, (_, i) => [`https://example.org/raw/${i}/a`, `https://example.org/raw/${i}/b`]);
  const viaSend = Array.from({ length: 10 }, (_, i) => `https://example.org/send/${i}`);
  const [answers, results] = await Promise.all([
    Promise.all(raw.map((lines) => rawExchange(session.socket, lines))),
    Promise.all(viaSend.map((url) => send(t, session, [url], 30_000))),
  ]);
  for (const answer of answers) assert.deepEqual(answer, ["ok", "ok"]);
  for (const result of results) assert.equal(result.code, 0, result.stderr);
  await assertOpenedExactly(session, [...raw.flat(), ...viaSend]);
});

test("--local runs the client on this machine without ssh, and delivers", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t, [], { local: true });
  const result = await send(t, session, ["https://example.org/local"]);
  assert.equal(result.code, 0, result.stderr);
  await assertOpenedExactly(session, ["https://example.org/local"]);
});

test("an opener that keeps running and prints does not hold up the answer nor reach the terminal", { timeout: 20_000 }, async (t) => {
  const dir = tempDir(t);
  const lingering = join(dir, "lingering-browser");
  const pids = join(dir, "pids");
  writeFileSync(lingering, `#!/bin/sh\necho $$ >> ${pids}\necho OPENER-NOISE; echo OPENER-NOISE >&2\nexec sleep 30\n`);
  chmodSync(lingering, 0o755);
  // Remembered as seen: the temporary directory goes before the after hooks that kill.
  const seen = new Set<number>();
  const openerPids = () => {
    if (existsSync(pids)) readFileSync(pids, "utf8").split("\n").filter(Boolean).forEach((pid) => seen.add(Number(pid)));
    return [...seen];
  };
  t.after(() => openerPids().forEach((pid) => killIfAlive(pid)));
  const session = await startSession(t, ["--browser", lingering]);
  const first = await send(t, session, ["https://example.org/one"]);
  const again = await send(t, session, ["https://example.org/two"]);
  assert.equal(first.code, 0, first.stderr);
  assert.equal(again.code, 0, again.stderr);
  await waitUntil(() => openerPids().length === 2, 5000, "two opener runs");
  assert.ok(openerPids().every((pid) => isAlive(pid)), "both openers are still running");
  assert.doesNotMatch(session.server.stderr.text(), /OPENER-NOISE/);
});

test("an opener that cannot be run is a refusal saying how to choose another, exit 65", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t, ["--browser", "/nonexistent/browser"]);
  const result = await send(t, session, ["https://example.org/x"]);
  assert.equal(result.code, 65);
  assert.equal(result.stderr, notOpened(['send: refused "https://example.org/x": the desktop cannot run its opener "/nonexistent/browser" ' +
    "(spawn /nonexistent/browser ENOENT): choose one with server.ts --browser PROGRAM or URLSERVER_BROWSER"], ["https://example.org/x"]));
});

test("an opener that fails (xdg-open finding no browser exits 3) is a refusal with its status and last line, naming --browser; logged and audited", { timeout: 20_000 }, async (t) => {
  const dir = tempDir(t);
  const failing = join(dir, "xdg-open");
  writeFileSync(failing, "#!/bin/sh\necho 'some earlier line' >&2\necho \"xdg-open: no method available for opening '$1'\" >&2\nexit 3\n");
  chmodSync(failing, 0o755);
  const log = join(dir, "urls.log");
  const session = await startSession(t, ["--browser", failing, "--log", log], { dir });
  const result = await send(t, session, ["https://example.org/nowhere"]);
  assert.equal(result.code, 65);
  const reason = `the desktop's opener "${failing}" failed (exit 3: xdg-open: no method available for opening 'https://example.org/nowhere'): ` +
    "choose one with server.ts --browser PROGRAM or URLSERVER_BROWSER";
  assert.equal(result.stderr, notOpened([`send: refused "https://example.org/nowhere": ${reason}`], ["https://example.org/nowhere"]));
  assert.match(session.server.stderr.text(), new RegExp(`testhost: cannot open "https://example.org/nowhere": ${reason.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}`));
  const [entry] = readFileSync(log, "utf8").split("\n").filter(Boolean).map((line) => JSON.parse(line));
  assert.deepEqual([entry.decision, entry.reason], ["refused", reason]);
});

test("a failing opener's last line is shown escaped and cut, on both ends", { timeout: 20_000 }, async (t) => {
  const dir = tempDir(t);
  const failing = join(dir, "opener");
  // An escape sequence, then a line far longer than a message should be.
  writeFileSync(failing, `#!/bin/sh\nprintf 'bad \\033]0;title\\007 opener %0500d\\n' 0 >&2\nexit 4\n`);
  chmodSync(failing, 0o755);
  const session = await startSession(t, ["--browser", failing], { dir });
  const result = await send(t, session, ["https://example.org/escaped"]);
  assert.equal(result.code, 65);
  const [line] = result.stderr.split("\n");
  assert.match(line, /^send: refused "https:\/\/example\.org\/escaped": the desktop's opener "\S+" failed \(exit 4: bad \\u001b\]0;title\\u0007 opener 0+… \(\d+ more bytes not shown\)\): choose one with server\.ts --browser PROGRAM or URLSERVER_BROWSER$/);
  assert.ok(line.length < 500, `${line.length} characters`);
  assert.doesNotMatch(session.server.stderr.text(), /[\u0007\u001b]/);
  assert.match(session.server.stderr.text(), /testhost: cannot open "https:\/\/example\.org\/escaped": the desktop's opener .* --browser PROGRAM or URLSERVER_BROWSER$/m);
});

test("one line per URL opened: the opener's exit is in it, not on a line of its own", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t);
  const result = await send(t, session, ["https://example.org/one-line"]);
  assert.equal(result.code, 0, result.stderr);
  await assertOpenedExactly(session, ["https://example.org/one-line"]);
  // A later line would come at the opener's exit, which the "exit 0" says has been.
  const lines = session.server.stderr.seen.filter((line) => !/ connected: /.test(line));
  assert.equal(lines.length, 1, lines.join("\n"));
  assert.match(lines[0], /Z testhost: opened "https:\/\/example\.org\/one-line" with \S+ \(pid \d+, exit 0\)$/);
});

test("an opener still running after 1 s (a browser in the foreground) counts as opened: ok after 1 s, while it runs", { timeout: 20_000 }, async (t) => {
  const dir = tempDir(t);
  const foreground = join(dir, "browser");
  writeFileSync(foreground, `#!/bin/sh\necho $$ >> ${join(dir, "pids")}\nexec sleep 30\n`);
  chmodSync(foreground, 0o755);
  const session = await startSession(t, ["--browser", foreground], { dir });
  const sent = performance.now();
  const answers = await rawExchange(session.socket, ["https://example.org/foreground"]);
  const ms = performance.now() - sent;
  for (const pid of readFileSync(join(dir, "pids"), "utf8").split("\n").filter(Boolean)) killAtEnd(t, Number(pid));
  assert.deepEqual(answers, ["ok"]);
  t.diagnostic(`ok after ${Math.round(ms)} ms`);
  // Not before the second, and while the opener still runs (its 30 s sleep):
  // how soon after the second is load's to decide, and the bench's to time.
  assert.ok(ms >= 1000 && ms < 10_000, `ok after ${Math.round(ms)} ms`);
  assert.ok(readFileSync(join(dir, "pids"), "utf8").split("\n").filter(Boolean).every((pid) => isAlive(Number(pid))), "the opener had ended");
  assert.match(session.server.stderr.text(), /testhost: opened "https:\/\/example.org\/foreground" with \S+ \(pid \d+, still running after 1 s\)/);
});

/** Where a program is on PATH, or undefined. */
function onPath(program: string): string | undefined {
  return (process.env.PATH ?? "").split(":").map((dir) => join(dir, program)).find((path) => existsSync(path));
}

// The one-liners people already use as a remote shim (superbrothers/opener's
// is the nc one). OpenBSD's nc never half-closes when its input ends: the
// client ends the connection once the line has its answer.
for (const [tool, packageName, command] of [
  ["nc", "netcat-openbsd", 'echo "$URL" | nc -U "$SOCK"'],
  ["socat", "socat", 'echo "$URL" | socat - UNIX-CONNECT:"$SOCK"'],
] as const) {
  test(`the one-liner \`${command}\` gets "ok" and ends by itself; the URL opens once`, { timeout: 20_000 }, async (t) => {
    if (!needs(t, onPath(tool) ? undefined : `${tool} (Debian: ${packageName})`)) return;
    const session = await startSession(t);
    const url = `https://example.org/one-liner/${tool}`;
    const started = performance.now();
    const oneLiner = start(t, tool, "sh", ["-c", command], { env: { URL: url, SOCK: session.socket }, stdin: "ignore" });
    const exit = await waitForExit(oneLiner, 10_000, command);
    const ms = performance.now() - started;
    t.diagnostic(`${tool} ended after ${Math.round(ms)} ms`);
    assert.equal(exit.code, 0, oneLiner.stderr.text());
    await waitUntil(() => oneLiner.stdout.ended, 2000, `${tool}'s output to end`);
    assert.equal(oneLiner.stdout.text(), "ok");
    // Ended by the client's 300 ms after the answer, not its 10 s idle bound.
    assert.ok(ms < 8000, `${tool} took ${Math.round(ms)} ms`);
    await assertOpenedExactly(session, [url]);
  });
}
