// Ensures bad input gets a clear refusal and nothing is lost: refused schemes,
// whitespace, control characters, overlong and option-like URLs are answered
// with `error <reason>` (by the client where it can tell, always again by the
// server), good URLs reach the opener byte for byte, broken lines on the socket
// are answered and never opened, and a flood is rate-limited with one answer
// per URL. Real processes throughout: server.ts, the fake ssh, client.ts,
// send.ts, raw socket senders and a rogue client.

import assert from "node:assert/strict";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { test } from "node:test";
import type { TestContext } from "node:test";
import {
  FAKE_BROWSER, Lines, ROOT, killAtEnd, notOpened, opened, pidFrom, quoted, send, startScript, startSession, tempDir, waitUntil,
} from "./helpers.ts";
import type { Proc, Session } from "./helpers.ts";

const ROGUE_CLIENT = join(ROOT, "test/fixtures/rogue-client.mjs");

/** A sender on the client's socket that writes what send.ts cannot. */
function connectRaw(t: TestContext, socketPath: string, name = "raw sender") {
  const socket = connect(socketPath);
  t.after(() => socket.destroy());
  const answers = new Lines(name, socket);
  const closed = new Promise<void>((resolve) => socket.on("close", () => resolve()));
  return { socket, answers, closed };
}

/** Waits until the client has closed a raw connection, failing with what it answered. */
async function untilClosed(raw: ReturnType<typeof connectRaw>, timeoutMs: number) {
  await waitUntil(() => raw.answers.ended, timeoutMs, `the client to close the connection; it answered:\n${raw.answers.text()}`)
    .catch(() => { throw new Error(`the client did not close the connection within ${timeoutMs} ms; it answered:\n${raw.answers.text()}`); });
  await raw.closed;
  return raw.answers.seen;
}

/** Waits until the server has decided on every opener it started, so the browser log is complete. */
async function openersDone(session: { server: Proc }, count: number) {
  const opens = () => session.server.stderr.seen.filter((line) => /: opened "/.test(line)).length;
  await waitUntil(() => opens() >= count, 5000, `${count} opener runs to end; server said:\n${session.server.stderr.text()}`);
}

/** Waits for the browser log to hold count runs, then for all openers to end. */
async function openedRuns(session: Session, count: number) {
  await waitUntil(() => opened(session.browserLog).length >= count, 5000,
    `${count} runs in the browser log; it has ${JSON.stringify(opened(session.browserLog))}`);
  await openersDone(session, count);
  return opened(session.browserLog);
}

// The refusal names the limits and the options that set them.
const RATE_LIMITED = "rate limited: more than 10 URLs at once, or more than 1 per second after them, from this host (server.ts --burst and --rate set these)";
const NOT_SENT = "it contains a line break or another control or format character: not sent";
// [what, URL as send.ts gets it, the reason send.ts reports]
const refused: Array<[string, string, string]> = [
  ["javascript:", "javascript:alert(document.cookie)", 'scheme "javascript" is not allowed'],
  ["file:", "file:///etc/passwd", 'scheme "file" is not allowed'],
  ["data:", "data:text/html,<script>alert(1)</script>", 'scheme "data" is not allowed'],
  ["an unknown custom scheme", "foo:bar", 'scheme "foo" is not allowed'],
  ["a space", "https://example.org/a b", "URL contains whitespace or control characters"],
  // send.ts refuses these itself, never sending them (one argument is one URL);
  // the client and the server refuse them too (raw socket and rogue client tests).
  ["a tab", "https://example.org/a\tb", NOT_SENT],
  ["a control character (BEL)", "https://example.org/\u0007", NOT_SENT],
  ["an escape sequence", "https://example.org/\u001b[31mred", NOT_SENT],
  ["a bidi override (format character)", "https://example.org/\u202egpj.exe", NOT_SENT],
  ["a no-break space", "https://example.org/a\u00a0b", "URL contains whitespace or control characters"],
  ["a URL over 8 KiB", `https://example.org/${"a".repeat(9000)}`, "line longer than 8192 bytes"],
  ["-h after --", "-h", "not a URL"],
  ["an ssh-style option after --", "-oProxyCommand=touch", "not a URL"],
  ["--help after --", "--help", "not a URL"],
];
for (const [what, url, reason] of refused) {
  test(`refused: ${what}; send.ts exits 65 with one line saying why; nothing opened`, { timeout: 20_000 }, async (t) => {
    const session = await startSession(t);
    const result = await send(t, session, ["--", url]);
    assert.equal(result.code, 65, result.stderr);
    assert.equal(result.stderr, notOpened([`send: refused ${quoted(url)}: ${reason}`], [url]));
    assert.equal(result.stdout, "");
    assert.deepEqual(opened(session.browserLog), []);
    assert.doesNotMatch(session.server.stderr.text(), / opened "/);
  });
}

test("a URL of exactly 8192 bytes opens whole; one of 8193 bytes is refused by the server", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t);
  const longest = `https://example.org/${"a".repeat(8192 - 20)}`;
  const tooLong = `${longest}b`;
  assert.equal(Buffer.byteLength(longest), 8192);
  const ok = await send(t, session, [longest]);
  assert.equal(ok.code, 0, ok.stderr);
  const result = await send(t, session, [tooLong]);
  assert.equal(result.code, 65);
  assert.equal(result.stderr, notOpened([`send: refused ${JSON.stringify(tooLong)}: URL longer than 8192 bytes`], [tooLong]));
  assert.deepEqual(await openedRuns(session, 1), [[1, longest]]);
});

test("send.ts -x without -- is a usage error, never sent", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t);
  const result = await send(t, session, ["-x"]);
  assert.equal(result.code, 64);
  assert.match(result.stderr, /^send: .*'-x'.*\nRun "send\.ts --help" for usage\.$/);
  assert.deepEqual(opened(session.browserLog), []);
});

test("a URL with shell syntax opens verbatim as the opener's single argument and runs nothing", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t);
  const marker = join(session.dir, "pwned");
  const url = `https://example.org/$(touch$IFS${marker})`;
  const result = await send(t, session, [url]);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stderr, "");
  assert.deepEqual(await openedRuns(session, 1), [[1, url]]);
  assert.equal(existsSync(marker), false, `${marker} was created: the URL went through a shell`);
});

test("a URL's query, fragment and escapes reach the opener byte for byte, not re-serialised", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t);
  // The WHATWG parser would lower-case the host, drop :443 and encode the quote.
  const url = "HTTPS://Example.ORG:443/a/../b?q='x'&r=%zz#frag'ment";
  const result = await send(t, session, [url]);
  assert.equal(result.code, 0, result.stderr);
  assert.deepEqual(await openedRuns(session, 1), [[1, url]]);
});

test("--allow-scheme mailto opens mailto: URLs; without it they are refused", { timeout: 30_000 }, async (t) => {
  const url = "mailto:a@example.org";
  const plain = await startSession(t);
  const refusedResult = await send(t, plain, [url]);
  assert.equal(refusedResult.code, 65);
  assert.equal(refusedResult.stderr, notOpened([`send: refused "${url}": scheme "mailto" is not allowed`], [url]));
  assert.deepEqual(opened(plain.browserLog), []);

  const allowing = await startSession(t, ["--allow-scheme", "mailto"]);
  const result = await send(t, allowing, [url, "https://example.org/still"]);
  assert.equal(result.code, 0, result.stderr);
  assert.deepEqual((await openedRuns(allowing, 2)).sort(), [[1, "https://example.org/still"], [1, url]]);
});

test("the server checks everything again: a rogue client's bad URLs are refused, garbage skipped, only the good one opened", { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t);
  const replies = join(dir, "replies");
  const browserLog = join(dir, "opened");
  const messages: Array<string | Buffer> = [
    "open 1 javascript:alert(1)",
    "open 2 https://example.org/\u0007\u001b[2J",
    `open 3 https://example.org/${"a".repeat(9000 - 20)}`,
    `open 4 https://example.org/${"a".repeat(8200 - 20)}`,
    "open 5 -x",
    "open 6 https://example.org/a b",
    "open 7 file:///etc/passwd",
    "open 8 not a url",
    // 100 KB without a newline: longer than any message, so it must be skipped whole.
    Buffer.alloc(100 * 1024, "garbage\u00ff\u0001 "),
    Buffer.concat([Buffer.from("open 9 https://example.org/"), Buffer.from([0xff, 0xfe, 0xc0, 0xaf])]),
    "open 10 https://example.org/good",
  ];
  writeFileSync(join(dir, "lines"), Buffer.concat(messages.flatMap((m) => [Buffer.from(m), Buffer.from("\n")])));
  const rogue = `exec ${process.execPath} ${ROGUE_CLIENT}`;
  const server = startScript(t, "server.ts", ["--local", "--remote-command", rogue, "--browser", FAKE_BROWSER, "testhost"], {
    env: { FAKE_BROWSER_LOG: browserLog, ROGUE_REPLIES: replies, ROGUE_LINES: join(dir, "lines") },
  });
  const roguePid = await pidFrom(`${replies}.pid`, 10_000, "the rogue client");
  killAtEnd(t, roguePid);
  await server.stderr.waitFor(/testhost: connected: client pid \d+ on rogue, socket "x"/, 10_000);

  const answers = () => existsSync(replies) ? readFileSync(replies, "utf8").split("\n").filter((l) => /^(ok|error) /.test(l)) : [];
  await waitUntil(() => answers().includes("ok 10"), 15_000,
    `the answer to the good URL; the server answered:\n${answers().join("\n")}\nand said:\n${server.stderr.text()}`);
  assert.deepEqual(answers(), [
    'error 1 scheme "javascript" is not allowed',
    "error 2 URL contains whitespace or control characters",
    "error 3 URL longer than 8192 bytes",
    "error 4 URL longer than 8192 bytes",
    'error 5 URL starts with "-"',
    "error 6 URL contains whitespace or control characters",
    'error 7 scheme "file" is not allowed',
    "error 8 URL contains whitespace or control characters",
    "error 9 line is not valid UTF-8",
    "ok 10",
  ]);
  assert.match(server.stderr.text(), /testhost: ignoring a message the client should not send: garbage.* \(a 102400-byte line is too long\)\n/);
  // The remote's bytes reach the terminal only made printable.
  assert.doesNotMatch(server.stderr.text(), /[\u0007\u001b]/);
  await waitUntil(() => opened(browserLog).length >= 1, 5000, "the fake browser to run");
  await openersDone({ server }, 1);
  assert.deepEqual(opened(browserLog), [[1, "https://example.org/good"]]);
  assert.ok(server.alive(), `the server exited; it said:\n${server.stderr.text()}`);
});

test("a raw line over 8 KiB is answered at once, nothing after it is taken, the connection closed; others are still served", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t);
  const patient = connectRaw(t, session.socket, "patient sender");
  patient.socket.write("https://example.org/pati");
  const flooding = connectRaw(t, session.socket, "flooding sender");
  // No newline and no end: the client must not wait for the rest of the line.
  flooding.socket.write(`https://example.org/${"a".repeat(9000)}`);
  assert.deepEqual(await untilClosed(flooding, 5000), ["error line longer than 8192 bytes"]);

  const overlong = connectRaw(t, session.socket, "overlong-then-good sender");
  overlong.socket.end(`https://example.org/${"a".repeat(9000)}\nhttps://example.org/after-overlong\n`);
  assert.deepEqual(await untilClosed(overlong, 5000), ["error line longer than 8192 bytes"]);

  patient.socket.end("ent\n");
  assert.deepEqual(await untilClosed(patient, 5000), ["ok"]);
  assert.deepEqual(await openedRuns(session, 1), [[1, "https://example.org/patient"]]);
});

test("raw socket: answers come one per line in order; empty, incomplete, non-UTF-8 lines are refused; CRLF works", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t);
  const raw = connectRaw(t, session.socket);
  raw.socket.write("https://example.org/1\n");
  raw.socket.write("javascript:alert(1)\n");
  raw.socket.write("https://example.org/crlf\r\n");
  raw.socket.write("\n");
  raw.socket.write(Buffer.concat([Buffer.from("https://example.org/"), Buffer.from([0xc3, 0x28, 0xff]), Buffer.from("\n")]));
  raw.socket.write("https://example.org/2\n");
  raw.socket.write("   \n");
  raw.socket.end("https://example.org/half-written");
  assert.deepEqual(await untilClosed(raw, 5000), [
    "ok",
    'error scheme "javascript" is not allowed',
    "ok",
    "error empty line",
    "error line is not valid UTF-8",
    "ok",
    "error URL contains whitespace or control characters",
    "error incomplete line (no newline before the end of input)",
  ]);
  assert.deepEqual((await openedRuns(session, 3)).sort(),
    [[1, "https://example.org/1"], [1, "https://example.org/2"], [1, "https://example.org/crlf"]]);
});

test("a connection that completes no line within 10 s is answered and closed; others are served meanwhile", { timeout: 45_000 }, async (t) => {
  const session = await startSession(t);
  const connected = performance.now();
  const silent = connectRaw(t, session.socket, "silent sender");
  const halfWritten = connectRaw(t, session.socket, "half-written sender");
  halfWritten.socket.write("https://example.org/half-written");

  const meanwhile = await send(t, session, ["https://example.org/meanwhile"]);
  assert.equal(meanwhile.code, 0, meanwhile.stderr);
  assert.ok(silent.answers.seen.length === 0 && halfWritten.answers.seen.length === 0, "idle connections answered early");

  for (const raw of [silent, halfWritten]) {
    assert.deepEqual(await untilClosed(raw, 25_000), ["error no complete line within 10 s"]);
  }
  // Never before the 10 s; how soon after them is load's to decide (a bound
  // twice as long still tells a closed connection from one held for good).
  const waited = performance.now() - connected;
  assert.ok(waited >= 9900 && waited < 20_000, `closed after ${Math.round(waited)} ms`);
  assert.deepEqual(await openedRuns(session, 1), [[1, "https://example.org/meanwhile"]]);
});

test("rate limiting: 25 URLs from one send.ts get at least 10 opens, the rest `rate limited`; opens match opener runs", { timeout: 30_000 }, async (t) => {
  const session = await startSession(t);
  const urls = Array.from({ length: 25 }, (_, i) => `https://example.org/flood/${i}`);
  const result = await send(t, session, urls);
  assert.equal(result.code, 65, result.stderr);
  const lines = result.stderr.split("\n");
  const refusals = lines.filter((line) => line.startsWith("send: "));
  const refusedUrls = refusals.map((line) => {
    const match = /^send: refused "(.*)": (.*)$/.exec(line);
    assert.equal(match?.[2], RATE_LIMITED, `unexpected stderr line: ${line}`);
    assert.ok(match, `unexpected stderr line: ${line}`);
    return match[1];
  });
  const openedUrls = urls.filter((url) => !refusedUrls.includes(url));
  assert.ok(openedUrls.length >= 10, `only ${openedUrls.length} opened`);
  assert.ok(refusedUrls.length >= 1, "nothing was rate limited");
  assert.equal(new Set(refusedUrls).size, refusedUrls.length, "a URL was answered twice");
  assert.deepEqual(lines.slice(refusals.length), refusedUrls, "each URL not opened, printed to be copied");
  const runs = await openedRuns(session, openedUrls.length);
  assert.deepEqual(runs.map(([, url]) => url).sort(), openedUrls.sort());
  assert.ok(runs.every(([argc]) => argc === 1));
});

test("rate limiting: 25 lines on one raw connection get exactly 25 answers, as many `ok` as opener runs", { timeout: 30_000 }, async (t) => {
  const session = await startSession(t);
  const raw = connectRaw(t, session.socket);
  raw.socket.end(Array.from({ length: 25 }, (_, i) => `https://example.org/flood/${i}\n`).join(""));
  const answers = await untilClosed(raw, 10_000);
  assert.equal(answers.length, 25, answers.join("\n"));
  for (const answer of answers) assert.ok(answer === "ok" || answer === `error ${RATE_LIMITED}`, answer);
  const oks = answers.filter((answer) => answer === "ok").length;
  assert.ok(oks >= 10 && oks < 25, `${oks} of 25 opened`);
  assert.equal((await openedRuns(session, oks)).length, oks);
  assert.equal(session.server.stderr.seen.filter((line) => line.endsWith(`: ${RATE_LIMITED}`)).length, 25 - oks);
});

test("--rate 0 turns rate limiting off: all 25 URLs open, each once", { timeout: 30_000 }, async (t) => {
  const session = await startSession(t, ["--rate", "0"]);
  const urls = Array.from({ length: 25 }, (_, i) => `https://example.org/flood/${i}`);
  const result = await send(t, session, urls);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stderr, "");
  const runs = await openedRuns(session, 25);
  assert.deepEqual(runs.map(([, url]) => url).sort(), [...urls].sort());
});

test("the server outlives the refusals: after bad input it still opens good URLs", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t);
  const bad = await send(t, session, ["javascript:x", "https://example.org/ a", "--", "-h"]);
  assert.equal(bad.code, 65);
  assert.equal(bad.stderr.split("\n").filter((line) => line.startsWith("send: refused ")).length, 3, bad.stderr);
  const good = await send(t, session, ["https://example.org/after"]);
  assert.equal(good.code, 0, good.stderr);
  assert.deepEqual(await openedRuns(session, 1), [[1, "https://example.org/after"]]);
  assert.ok(session.server.alive(), session.server.stderr.text());
});

test("one argument is one URL: one with a line break is refused by send.ts (65), never sent; the others still are", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t);
  const split = "http://a.example/\nhttp://b.example/";
  const result = await send(t, session, [split, "https://example.org/alongside"]);
  assert.equal(result.code, 65);
  assert.equal(result.stderr, notOpened([`send: refused ${quoted(split)}: ${NOT_SENT}`], [split]));
  assert.deepEqual(await openedRuns(session, 1), [[1, "https://example.org/alongside"]]);
  assert.doesNotMatch(session.server.stderr.text(), /a\.example|b\.example/, "the client or server saw it");
});

test("`send.ts status` is refused (65), not taken for the status request", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t);
  const result = await send(t, session, ["status"]);
  assert.equal(result.code, 65);
  assert.equal(result.stderr, notOpened(['send: refused "status": not a URL (send.ts --status asks whether a desktop is connected)'], ["status"]));
  assert.equal(result.stdout, "");
});
