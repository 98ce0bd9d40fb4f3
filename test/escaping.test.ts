// Ensures nothing raw from the other side reaches a terminal or the --log
// file: every control, format, line and paragraph separator character (C0,
// C1 such as U+009B CSI and U+0085 NEL, bidi controls such as U+202E, U+2028,
// U+2029) is escaped in the server's log lines, in --log entries (which stay
// one valid JSON line each under any line splitter, Python's splitlines()
// included), and in everything send.ts prints.

import assert from "node:assert/strict";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { test } from "node:test";
import { FAKE_BROWSER, ROOT, killAtEnd, notOpened, pidFrom, quoted, run, startScript, tempDir, waitUntil } from "./helpers.ts";

const ROGUE_CLIENT = join(ROOT, "test/fixtures/rogue-client.mjs");
// What must never appear raw: C0 but the newline, DEL, C1, format (bidi, zero
// width, BOM), line and paragraph separators.
const RAW = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\p{Cf}\u2028\u2029]/u;
// Every boundary Python's str.splitlines() splits at.
const PYTHON_LINE_BREAKS = /\r\n|[\n\r\u000b\u000c\u001c\u001d\u001e\u0085\u2028\u2029]/;
const HOSTILE = "http://x.example/\u009b2J\u202egpj.exe\u0085\u2028\u2029\u001b]0;t\u0007";

test("a remote host's C1, bidi and separator characters: escaped on the terminal and in --log, one JSON entry per line", { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t);
  const replies = join(dir, "replies");
  const log = join(dir, "urls.log");
  writeFileSync(join(dir, "lines"), [
    `open 1 ${HOSTILE}`,
    `open 2 https://example.org/\u2028next`,
    `open 3 https://example.org/\u0085next`,
    `open 4 ftp://example.org/\u202e`,
    `pong \u009b31m`,
    `nonsense \u2029\u009b2J`,
    "open 5 https://example.org/good",
    "",
  ].join("\n"));
  // Before its hello, it says something on stderr too.
  const rogue = `printf '\\302\\233[2J\\342\\200\\256stderr\\342\\200\\250line\\n' >&2; exec ${process.execPath} ${ROGUE_CLIENT}`;
  const server = startScript(t, "server.ts", ["--local", "--remote-command", rogue, "--browser", FAKE_BROWSER, "--log", log, "testhost"], {
    env: { FAKE_BROWSER_LOG: join(dir, "opened"), ROGUE_REPLIES: replies, ROGUE_LINES: join(dir, "lines") },
  });
  const roguePid = await pidFrom(`${replies}.pid`, 10_000, "the rogue client");
  killAtEnd(t, roguePid);
  await waitUntil(() => existsSync(replies) && readFileSync(replies, "utf8").includes("ok 5\n"), 15_000, "the answer to the good URL");
  await server.stderr.waitFor(/testhost: remote: .*stderr/, 5000);

  const terminal = server.stderr.text();
  assert.doesNotMatch(terminal, RAW, "a raw character on the terminal");
  assert.match(terminal, /remote: \\u009b\[2J\\u202estderr\\u2028line/);
  assert.match(terminal, /ignoring a message the client should not send: nonsense \\u2029\\u009b2J/);

  const text = readFileSync(log, "utf8");
  assert.doesNotMatch(text, RAW, "a raw character in --log");
  const entries = text.split("\n").filter(Boolean);
  assert.equal(text.split(PYTHON_LINE_BREAKS).filter(Boolean).length, entries.length, "an entry splits in two under splitlines()");
  const parsed = entries.map((line) => JSON.parse(line));
  // The escapes are JSON's: the URL comes back exactly as the remote sent it.
  assert.deepEqual(parsed.map(({ url, decision }) => [url, decision]), [
    [HOSTILE, "refused"],
    ["https://example.org/\u2028next", "refused"],
    ["https://example.org/\u0085next", "refused"],
    ["ftp://example.org/\u202e", "refused"],
    ["https://example.org/good", "opened"],
  ]);
});

test("send.ts prints a URL with C1 and bidi characters escaped, never raw, and does not send it", { timeout: 20_000 }, async (t) => {
  const socket = join(tempDir(t), "sock");
  const result = await run(t, "send.ts", ["--socket", socket, HOSTILE]);
  assert.equal(result.code, 65);
  assert.doesNotMatch(result.stderr, RAW);
  assert.equal(result.stderr, notOpened([`send: refused ${quoted(HOSTILE)}: it contains a line break or another control or format character: not sent`], [HOSTILE]));
  assert.equal(quoted(HOSTILE), '"http://x.example/\\u009b2J\\u202egpj.exe\\u0085\\u2028\\u2029\\u001b]0;t\\u0007"');
});

test("send.ts escapes what the socket answers: a refusal reason with C1 and bidi characters", { timeout: 20_000 }, async (t) => {
  const socket = join(tempDir(t), "sock");
  // A client that answers with raw control characters in its reason.
  const listener = createServer((connection) => {
    connection.on("data", () => connection.end("error \u009b2J\u202ereason\u2028\n"));
  });
  await new Promise<void>((resolve) => listener.listen(socket, resolve));
  t.after(() => listener.close());
  const result = await run(t, "send.ts", ["--socket", socket, "https://example.org/x"]);
  assert.equal(result.code, 65);
  assert.doesNotMatch(result.stderr, RAW);
  assert.equal(result.stderr, notOpened(['send: refused "https://example.org/x": \\u009b2J\\u202ereason\\u2028'], ["https://example.org/x"]));
});
