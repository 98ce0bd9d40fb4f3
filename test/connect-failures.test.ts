// Ensures a connection that fails before the client's hello is reported as
// what it is, in one line: ssh's own failure with its exit status and last
// message, client.ts missing (or finding no runtime) with the command that
// puts it (or one) there, or the remote command's status and last message;
// never as "remote:" output and a lost client. What the remote side says before a hello that does come (a
// login banner) is shown, and so is what it says before a hello that is slow
// to come. Through the fake ssh, then through real OpenSSH (needs root, sshd,
// ip and iptables: skipped without them, failing in CI).

import assert from "node:assert/strict";
import { copyFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import type { TestContext } from "node:test";
import { CLIENT_COMMAND, FAKE_BROWSER, FAKE_SSH, ROOT, run, startScript, tempDir, waitForExit, waitUntil } from "./helpers.ts";
import { startSshd } from "./fixtures/sshd.ts";

/** server.ts's stderr without the time at the start of each line. */
const untimed = (stderr: string) => stderr.split("\n").map((line) => line.replace(/^\d{4}-\d\d-\d\dT\S+Z /, ""));

async function failsWith(t: TestContext, args: string[], env: Record<string, string>, expected: string[]) {
  const result = await run(t, "server.ts", [...args, "--browser", FAKE_BROWSER, "build1"], { env });
  assert.equal(result.code, 69, result.stderr);
  assert.deepEqual(untimed(result.stderr), expected);
}

test("ssh's own failure (exit 255) is one line with its message, not remote output and a lost client", { timeout: 15_000 }, async (t) => {
  const message = "ssh: Could not resolve hostname build1: Name or service not known";
  await failsWith(t, ["--ssh", FAKE_SSH], { FAKE_SSH_FAIL: message },
    [`build1: cannot connect: ssh exited 255: ${message}`]);
});

test("client.ts missing from the remote home: one line naming server.ts --install", { timeout: 15_000 }, async (t) => {
  // The default remote command, "exec sh client.ts", in a home without it.
  await failsWith(t, ["--ssh", FAKE_SSH], { FAKE_SSH_HOME: tempDir(t) },
    ['build1: client.ts is not in the remote home directory: run "server.ts --install build1"']);
});

test("a host where client.ts finds no runtime: one line naming server.ts --install, for this client's words and an older one's", { timeout: 30_000 }, async (t) => {
  const home = tempDir(t);
  copyFileSync(join(ROOT, "client.ts"), join(home, "client.ts"));
  const expected = 'build1: cannot start the client: no runtime for it there (Deno 2, Bun 1, Node 22.6+, or Node 20+ with tsx or npx): run "server.ts --install build1" to bring one';
  // Nothing on PATH, and a home with no runtime in it.
  await failsWith(t, ["--ssh", FAKE_SSH, "--remote-command", "PATH=/nonexistent HOME=$PWD exec /bin/sh client.ts"], { FAKE_SSH_HOME: home }, [expected]);
  const older = "client.ts: no runtime found: needs Deno 2, Bun 1, Node 22.6+, or Node 20+ with tsx or npx";
  await failsWith(t, ["--ssh", FAKE_SSH, "--remote-command", `echo '${older}' >&2; exit 69`], {}, [expected]);
});

test("a remote command that ends before the hello: its earlier lines, then its status and last message", { timeout: 15_000 }, async (t) => {
  await failsWith(t, ["--ssh", FAKE_SSH, "--remote-command", "echo trying node >&2; echo no runtime here >&2; exit 3"], {}, [
    "build1: remote: trying node",
    "build1: cannot start the client: the remote command exited 3: no runtime here",
  ]);
});

test("a login banner before the hello is shown, before the line that says the client connected", { timeout: 15_000 }, async (t) => {
  const banner = `echo 'Welcome to build1' >&2; echo 'Last login: yesterday'; ${CLIENT_COMMAND}`;
  const server = startScript(t, "server.ts", ["--ssh", FAKE_SSH, "--remote-command", banner, "--browser", FAKE_BROWSER, "build1"],
    { env: { URLSERVER_SOCKET: `${tempDir(t)}/sock` } });
  await server.stderr.waitFor(/ build1: connected: client pid \d+/, 10_000);
  const lines = untimed(server.stderr.text());
  assert.deepEqual(lines.slice(0, 2).sort(), ["build1: remote: Last login: yesterday", "build1: remote: Welcome to build1"]);
  assert.match(lines[2], /^build1: connected: client pid \d+ /);
  assert.equal(lines.length, 3);
});

test("ssh's own lines are labelled ssh:, not remote:, and the remote side's remote:", { timeout: 15_000 }, async (t) => {
  // The fake ssh relays the remote command's stderr as ssh does: ssh's own words come the same way.
  const said = `echo 'Warning: Permanently added build1 (ED25519) to the list of known hosts.' >&2; echo 'Welcome to build1' >&2; ${CLIENT_COMMAND}`;
  const server = startScript(t, "server.ts", ["--ssh", FAKE_SSH, "--remote-command", said, "--browser", FAKE_BROWSER, "build1"],
    { env: { URLSERVER_SOCKET: `${tempDir(t)}/sock` } });
  await server.stderr.waitFor(/ build1: connected: client pid \d+/, 10_000);
  const lines = untimed(server.stderr.text());
  assert.deepEqual(lines.slice(0, 2).sort(), [
    "build1: remote: Welcome to build1",
    "build1: ssh: Warning: Permanently added build1 (ED25519) to the list of known hosts.",
  ]);
});

test("what the remote side says before a hello that is slow to come is shown after a few seconds", { timeout: 20_000 }, async (t) => {
  const slow = "echo 'npm warn exec The following package was not found and will be installed: tsx' >&2; exec sleep 60";
  const server = startScript(t, "server.ts", ["--ssh", FAKE_SSH, "--remote-command", slow, "--browser", FAKE_BROWSER, "build1"]);
  const started = performance.now();
  await server.stderr.waitFor(/ build1: remote: npm warn exec The following package was not found and will be installed: tsx$/, 10_000);
  const shownAfter = performance.now() - started;
  t.diagnostic(`shown after ${Math.round(shownAfter)} ms`);
  assert.ok(shownAfter > 4000, `shown after ${Math.round(shownAfter)} ms: before the hello had a chance`);
  assert.ok(server.alive(), "the server gave up on a start still in progress");
  process.kill(server.pid, "SIGTERM");
  assert.equal((await waitForExit(server, 5000, "server")).code, 143);
});

test("over real ssh: an unknown host and a closed port, each one line with ssh's message", { timeout: 30_000 }, async (t) => {
  const sshd = await startSshd(t);
  if (!sshd) return;
  for (const [host, message] of [
    ["no-such-host.invalid", /^ssh: Could not resolve hostname no-such-host\.invalid: .+$/],
    [sshd.closedHost, /^ssh: connect to host 127\.0\.0\.1 port 2223: Connection refused$/],
  ] as const) {
    const result = await run(t, "server.ts", ["--ssh", sshd.sshWrapper, "--browser", FAKE_BROWSER, host]);
    assert.equal(result.code, 69, result.stderr);
    const lines = untimed(result.stderr);
    assert.equal(lines.length, 1, result.stderr);
    const prefix = `${host}: cannot connect: ssh exited 255: `;
    assert.ok(lines[0].startsWith(prefix), lines[0]);
    assert.match(lines[0].slice(prefix.length), message);
  }
});

test("over real ssh: client.ts missing from the remote home, one line naming server.ts --install", { timeout: 30_000 }, async (t) => {
  const sshd = await startSshd(t, { remoteUser: true });
  if (!sshd) return;
  // No --remote-command: the default one, in the throwaway user's empty home.
  const result = await run(t, "server.ts", ["--ssh", sshd.sshWrapper, "--browser", FAKE_BROWSER, sshd.host]);
  assert.equal(result.code, 69, result.stderr);
  assert.deepEqual(untimed(result.stderr), [`${sshd.host}: client.ts is not in the remote home directory: run "server.ts --install ${sshd.host}"`]);
});

test("the remote's last stderr line is shown even without its newline", { timeout: 20_000 }, async (t) => {
  const server = startScript(t, "server.ts", ["--ssh", FAKE_SSH, "--remote-command", "printf 'no newline at the end' >&2; exit 3", "host"]);
  const exit = await waitForExit(server, 10_000, "server");
  assert.equal(exit.code, 69);
  await waitUntil(() => server.stderr.ended, 2000, "the server's stderr to end");
  assert.match(server.stderr.text(), /host: cannot start the client: the remote command exited 3: no newline at the end$/m);
});
