// Ensures each script's command line behaves as documented: --help, one-line
// usage errors with exit 64, refusals of dangerous hosts, and start-up
// failures that end at once with a clear message.

import assert from "node:assert/strict";
import { createServer } from "node:net";
import { join } from "node:path";
import { test } from "node:test";
import { FAKE_BROWSER, FAKE_SSH, run, tempDir, notOpened } from "./helpers.ts";

for (const script of ["server.ts", "client.ts", "send.ts"] as const) {
  test(`${script} --help prints usage and exit codes on stdout and exits 0`, { timeout: 15_000 }, async (t) => {
    const result = await run(t, script, ["--help"]);
    assert.equal(result.code, 0);
    assert.match(result.stdout, new RegExp(`^Usage: ${script.replace(".", "\\.")} `));
    assert.match(result.stdout, /Exit codes: /);
    assert.equal(result.stderr, "");
  });

  test(`${script} with an unknown option says so in one line plus a pointer, exit 64`, { timeout: 15_000 }, async (t) => {
    const result = await run(t, script, ["--no-such-option"]);
    assert.equal(result.code, 64);
    const [first, pointer, ...rest] = result.stderr.split("\n");
    assert.match(first, new RegExp(`^${script.replace(".ts", "")}: .*--no-such-option`));
    assert.equal(pointer, `Run "${script} --help" for usage.`);
    assert.deepEqual(rest, []);
  });
}

const usageErrors: Array<["server.ts" | "client.ts" | "send.ts", string[], string]> = [
  ["server.ts", [], "server: missing HOST"],
  ["server.ts", ["a", "b", "a"], "server: a HOST is named twice"],
  ["server.ts", ["--local", "a", "b"], "server: --local serves one HOST: its clients would share one socket"],
  ["send.ts", ["--status", "https://example.org/"], "send: --status takes no URL"],
  ["server.ts", ["--", "-oProxyCommand=touch /tmp/x"], 'server: refusing HOST "-oProxyCommand=touch /tmp/x": it would be read as an ssh option'],
  ["server.ts", ["--keepalive", "0", "host"], 'server: --keepalive needs a number of seconds from 1 to 3600, not "0"'],
  ["server.ts", ["--keepalive", "0.5", "host"], 'server: --keepalive needs a number of seconds from 1 to 3600, not "0.5"'],
  // Past 2^31-1 ms a timer fires at once: the connection would be "lost" at start.
  ["server.ts", ["--keepalive", "1000000", "host"], 'server: --keepalive needs a number of seconds from 1 to 3600, not "1000000"'],
  ["server.ts", ["--rate=-1", "host"], 'server: --rate needs a non-negative number, not "-1"'],
  ["server.ts", ["--allow-scheme", "javascript", "host"], 'server: --allow-scheme: "javascript" can run code or read local files, and is never allowed'],
  ["send.ts", [], "send: missing URL"],
  ["send.ts", ["--timeout", "soon", "https://example.org/"], 'send: --timeout needs a number of seconds from 1 to 2147483, not "soon"'],
  // Past 2^31-1 ms a timer fires at once: send.ts would time out without sending.
  ...["0", "0.5", "2147484", "Infinity", "NaN"].map((value): ["send.ts", string[], string] => ["send.ts", ["--timeout", value, "https://example.org/"],
    `send: --timeout needs a number of seconds from 1 to 2147483, not "${value}"`]),
];
for (const [script, args, message] of usageErrors) {
  test(`${script} ${JSON.stringify(args)} is a usage error: ${message}`, { timeout: 15_000 }, async (t) => {
    const result = await run(t, script, args);
    assert.equal(result.code, 64);
    assert.equal(result.stderr, `${message}\nRun "${script} --help" for usage.`);
  });
}

test("server.ts whose ssh program does not exist exits 69 at once, saying so", { timeout: 15_000 }, async (t) => {
  const dir = tempDir(t);
  const result = await run(t, "server.ts", ["--ssh", join(dir, "no-ssh"), "--browser", FAKE_BROWSER, "host"]);
  assert.equal(result.code, 69);
  assert.match(result.stderr, new RegExp(`^\\S+Z host: cannot connect: cannot run "${dir}/no-ssh": spawn \\S+ ENOENT$`));
});

test("server.ts whose remote command fails before the hello exits 69 with its status and last message, in one line", { timeout: 15_000 }, async (t) => {
  const result = await run(t, "server.ts", ["--ssh", FAKE_SSH, "--remote-command", "echo no runtime here >&2; exit 3", "host"]);
  assert.equal(result.code, 69);
  assert.match(result.stderr, /^\S+Z host: cannot start the client: the remote command exited 3: no runtime here$/);
});

test("send.ts times out with exit 75 when nothing answers, naming the URL", { timeout: 15_000 }, async (t) => {
  const dir = tempDir(t);
  const socket = join(dir, "sock");
  // A listener that accepts and never answers: a stopped or wedged client.
  const silent = createServer(() => {});
  await new Promise<void>((resolve) => silent.listen(socket, resolve));
  t.after(() => silent.close());
  const result = await run(t, "send.ts", ["--socket", socket, "--timeout", "1", "https://example.org/slow"]);
  assert.equal(result.code, 75);
  assert.equal(result.stderr, notOpened(['send: timed out after 1 s waiting for the desktop to open "https://example.org/slow"'], ["https://example.org/slow"]));
  // --timeout 1 was heeded: well before the default 10 s, whatever the load.
  assert.ok(result.ms < 8000, `took ${Math.round(result.ms)} ms`);
});
