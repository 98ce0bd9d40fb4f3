// Ensures `server.ts --install HOST...` sets hosts up over real OpenSSH: it
// puts client.ts and send.ts in the login directory, executable, byte for byte
// the copies beside server.ts; says which runtime send.ts starts with there,
// how fast, and the BROWSER line; changes nothing on a second run and
// replaces an older copy; leaves alone, and reports, a symbolic link or
// another program at either path; exits 0 only when every host succeeded.
// ssh logs in as a throwaway user whose home is in the test's directory, so
// nothing is ever written in the real home of the user running the tests.
// Needs root, sshd, ip, iptables, useradd: skipped without them, failing in
// CI; except the first two tests, which end before any ssh.

import assert from "node:assert/strict";
import { appendFileSync, copyFileSync, existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import type { TestContext } from "node:test";
import { FAKE_SSH, ROOT, run, start, tempDir, waitForExit, waitUntil } from "./helpers.ts";
import { startSshd } from "./fixtures/sshd.ts";
import type { Sshd } from "./fixtures/sshd.ts";

/** sshd with a throwaway remote user, who has tsx in ~/.local as the README says (found from ssh's non-login PATH). */
async function remoteHost(t: TestContext): Promise<{ sshd: Sshd; home: string } | undefined> {
  const sshd = await startSshd(t, { remoteUser: true });
  if (!sshd) return undefined;
  const home = sshd.remoteUser!.home;
  mkdirSync(join(home, ".local/lib/node_modules"), { recursive: true });
  mkdirSync(join(home, ".local/bin"));
  symlinkSync(join(ROOT, "node_modules/tsx"), join(home, ".local/lib/node_modules/tsx"));
  symlinkSync("../lib/node_modules/tsx/dist/cli.mjs", join(home, ".local/bin/tsx"));
  return { sshd, home };
}

function install(t: TestContext, sshd: Sshd, hosts: string[]) {
  return run(t, "server.ts", ["--install", "--ssh", sshd.sshWrapper, ...hosts], { timeoutMs: 60_000 });
}

function assertInstalled(home: string, uid: number) {
  for (const name of ["client.ts", "send.ts"]) {
    const path = join(home, name);
    assert.equal(readFileSync(path, "utf8"), readFileSync(join(ROOT, name), "utf8"), `${path} differs from the copy beside server.ts`);
    const stat = statSync(path);
    assert.equal(stat.mode & 0o777, 0o755, `${path} has mode ${(stat.mode & 0o777).toString(8)}`);
    assert.equal(stat.uid, uid, `${path} is not the remote user's`);
  }
  assert.deepEqual(readdirSync(home).filter((name) => name.includes("urlserver-install")), [], "a temporary file was left");
}

test("--install with --local is a usage error: there is no remote home", { timeout: 15_000 }, async (t) => {
  const result = await run(t, "server.ts", ["--install", "--local", "host"]);
  assert.equal(result.code, 64);
  assert.equal(result.stderr, 'server: --install works over ssh: --local has no remote home to install into\nRun "server.ts --help" for usage.');
});

test("--install with no client.ts beside server.ts says so and runs no ssh, exit 69", { timeout: 15_000 }, async (t) => {
  const dir = tempDir(t);
  copyFileSync(join(ROOT, "server.ts"), join(dir, "server.ts"));
  const sshLog = join(dir, "ssh.log");
  const server = start(t, "server.ts", process.execPath, ["--import", "tsx", join(dir, "server.ts"), "--install", "--ssh", FAKE_SSH, "host"],
    { env: { FAKE_SSH_LOG: sshLog }, stdin: "ignore" });
  assert.equal((await waitForExit(server, 10_000, "server.ts --install")).code, 69);
  await waitUntil(() => server.stderr.ended, 2000, "stderr to end");
  assert.equal(server.stderr.text(), `server: cannot install: "${dir}/client.ts" not found: --install copies the client.ts and send.ts beside server.ts`);
  assert.equal(existsSync(sshLog), false, "ssh was run");
});

const STARTS = /^sshd-host: send\.ts starts in \d+ ms on (node\/\d+\.\d+\.\d+( with tsx| with --experimental-strip-types)?|deno\/\S+|bun\/\S+) from \/\S+$/;
const BROWSER_LINES = [
  `sshd-host: for the programs there, set BROWSER in a start-up file of the shell there: export BROWSER="$HOME/send.ts"`,
  "sshd-host: in ~/.profile it reaches login shells; in ~/.bashrc, interactive shells, and `ssh HOST COMMAND` only above its interactive guard (case $- in ...)",
];

test("--install over real ssh: both scripts placed, executable; runtime, start-up time, BROWSER line; a second run changes nothing, a third replaces an older copy", { timeout: 120_000 }, async (t) => {
  const remote = await remoteHost(t);
  if (!remote) return;
  const { sshd, home } = remote;
  const uid = sshd.remoteUser!.uid;

  const first = await install(t, sshd, [sshd.host]);
  assert.equal(first.code, 0, first.stderr);
  assert.equal(first.stderr, "");
  const [placed, starts, ...rest] = first.stdout.split("\n");
  assert.equal(placed, `sshd-host: client.ts installed, send.ts installed, in "${home}"`);
  assert.match(starts, STARTS);
  // The machine's Node is too old to strip types: the first lines found tsx in ~/.local, from ssh's non-login PATH.
  if (/^v(20|21|22\.[0-5])\./.test(process.version)) assert.match(starts, / on node\/\S+ with tsx from \/\S+$/);
  assert.deepEqual(rest, BROWSER_LINES);
  t.diagnostic(starts);
  assertInstalled(home, uid);

  const second = await install(t, sshd, [sshd.host]);
  assert.equal(second.code, 0, second.stderr);
  assert.equal(second.stdout.split("\n")[0], `sshd-host: client.ts unchanged, send.ts unchanged, in "${home}"`);
  assertInstalled(home, uid);

  appendFileSync(join(home, "send.ts"), "// an older copy\n");
  const third = await install(t, sshd, [sshd.host]);
  assert.equal(third.code, 0, third.stderr);
  assert.equal(third.stdout.split("\n")[0], `sshd-host: client.ts unchanged, send.ts updated, in "${home}"`);
  assertInstalled(home, uid);
});

test("--install over real ssh: another program or a symbolic link at either path is left alone and reported, and nothing is written there", { timeout: 60_000 }, async (t) => {
  const remote = await remoteHost(t);
  if (!remote) return;
  const { sshd, home } = remote;

  const program = "#!/bin/sh\necho 'my own client.ts'\n";
  writeFileSync(join(home, "client.ts"), program);
  const foreign = await install(t, sshd, [sshd.host]);
  assert.equal(foreign.code, 69);
  assert.equal(foreign.stdout, "");
  assert.equal(foreign.stderr,
    `server: cannot install on "sshd-host": "${home}/client.ts" is not a urlserver script: left alone, nothing installed there`);
  assert.equal(readFileSync(join(home, "client.ts"), "utf8"), program);
  assert.deepEqual(readdirSync(home).filter((name) => name.endsWith(".ts") || name.includes("urlserver-install")), ["client.ts"]);

  symlinkSync("/etc/hostname", join(home, "send.ts"));
  const both = await install(t, sshd, [sshd.host]);
  assert.equal(both.code, 69);
  assert.equal(both.stderr, [
    `server: cannot install on "sshd-host": "${home}/client.ts" is not a urlserver script: left alone, nothing installed there`,
    `server: cannot install on "sshd-host": "${home}/send.ts" is a symbolic link: left alone, nothing installed there`,
  ].join("\n"));
  assert.equal(readFileSync(join(home, "client.ts"), "utf8"), program);
  assert.ok(lstatSync(join(home, "send.ts")).isSymbolicLink());
  assert.equal(readlinkSync(join(home, "send.ts")), "/etc/hostname");
});

test("--install over real ssh: a host ssh cannot reach fails with ssh's message, the others are set up, exit 69", { timeout: 60_000 }, async (t) => {
  const remote = await remoteHost(t);
  if (!remote) return;
  const { sshd, home } = remote;

  const result = await install(t, sshd, [sshd.closedHost, sshd.host]);
  assert.equal(result.code, 69);
  assert.match(result.stderr, /^server: cannot install on "sshd-closed": ssh exited 255: ssh: connect to host \S+ port 2223: Connection refused$/);
  const [placed, starts, ...rest] = result.stdout.split("\n");
  assert.equal(placed, `sshd-host: client.ts installed, send.ts installed, in "${home}"`);
  assert.match(starts, STARTS);
  assert.deepEqual(rest, BROWSER_LINES);
  assertInstalled(home, sshd.remoteUser!.uid);
});
