// Ensures `server.ts --install` is safe against the host it installs to and
// bounded in time: a symbolic link planted at the temporary name it would
// once have used is never written through; a host that stalls is given up
// with one line while the later hosts are still set up, and ssh gets the
// same ConnectTimeout and keepalive as when serving; the BROWSER line it
// prints is quoted for the shell whatever login directory the remote reports;
// --uninstall, too, goes on past a host it cannot reach and removes nothing
// through a symbolic link; an install interrupted while the runtime streams
// leaves the runtime there as it was and no temporary directory; a host
// without gzip gets the tar itself.
// The "remote" is a shell run here by a stand-in for ssh that sets the trap
// first (no sshd needed); send.ts starts there under Node with this
// checkout's tsx, put on PATH.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import type { TestContext } from "node:test";
import { ROOT, run, startScript, tempDir, waitForExit, waitUntil } from "./helpers.ts";

/**
 * A stand-in for ssh: logs its arguments, then runs the remote command's
 * shell in the "home" named by FAKE_HOME, after the given trap (shell code;
 * $$ there is the pid the shell keeps, as it ends by exec).
 */
function trappedSsh(dir: string, trap: string, beforeLogin = ""): string {
  const path = join(dir, "ssh");
  writeFileSync(path, `#!/bin/sh
printf '%s\\n' "$*" >> "${dir}/ssh.log"
for last; do :; done
[ "$last" = "sh -s" ] || { echo "unexpected remote command: $last" >&2; exit 255; }
${beforeLogin}
cd "$FAKE_HOME" || exit 255
${trap}
exec sh -s
`);
  chmodSync(path, 0o755);
  return path;
}

function install(t: TestContext, dir: string, ssh: string, home: string, args: string[], timeoutMs = 60_000) {
  // HOME: the desktop's own caches and the remote's (one machine here) stay in the test's directory.
  const env = { FAKE_HOME: home, HOME: dir, PATH: `${join(ROOT, "node_modules/.bin")}:${process.env.PATH}` };
  return run(t, "server.ts", ["--install", "--ssh", ssh, ...args], { env, timeoutMs });
}

test("--install never writes through a symbolic link planted at its temporary names", { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t);
  const home = join(dir, "home");
  mkdirSync(home);
  const victim = join(dir, "authorized_keys");
  writeFileSync(victim, "ssh-ed25519 AAAA the user's key\n");
  // The names main's install used, with the pid its shell would have.
  const ssh = trappedSsh(dir, `ln -s "${victim}" ".client.ts.urlserver-install.$$"; ln -s "${victim}" ".send.ts.urlserver-install.$$"`);

  const result = await install(t, dir, ssh, home, ["trapped"]);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(readFileSync(victim, "utf8"), "ssh-ed25519 AAAA the user's key\n", "written through the planted link");
  for (const name of ["client.ts", "send.ts"]) assert.equal(readFileSync(join(home, name), "utf8"), readFileSync(join(ROOT, name), "utf8"));
  // The planted links are left as they were, and no temporary file of ours is.
  assert.deepEqual(readdirSync(home).filter((name) => name.includes("urlserver-install")).sort(),
    readdirSync(home).filter((name) => /^\.(client|send)\.ts\.urlserver-install\.\d+$/.test(name)).sort());
  assert.equal(readdirSync(home).filter((name) => name.includes("urlserver-install")).length, 2);
});

test("--install gives up a host that stalls after 2 min with one line, still sets up the next, and bounds ssh as serving does", { timeout: 200_000 }, async (t) => {
  const dir = tempDir(t);
  const home = join(dir, "home");
  mkdirSync(home);
  // A login that never finishes: ssh connected, the remote side silent.
  const ssh = trappedSsh(dir, ":", `case "$*" in *" stalled "*) exec sleep 600;; esac`);

  const result = await install(t, dir, ssh, home, ["stalled", "good"], 180_000);
  assert.equal(result.code, 69);
  assert.equal(result.stderr, 'server: cannot install on "stalled": no answer within 120 s');
  assert.match(result.stdout, /^good: client\.ts installed, send\.ts installed, in "/);
  assert.ok(result.ms > 119_000, `gave up after ${Math.round(result.ms)} ms`);
  for (const line of readFileSync(join(dir, "ssh.log"), "utf8").trim().split("\n")) {
    assert.match(line, /^-T -o ServerAliveInterval=15 -o ServerAliveCountMax=3 -o ConnectTimeout=10 -- (stalled|good) sh -s$/);
  }
});

test("--install quotes the BROWSER line for the shell whatever login directory the remote reports", { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t);
  const home = join(dir, `a"b'c $(touch pwned); \`touch pwned\``);
  mkdirSync(home);
  const ssh = trappedSsh(dir, ":");

  const result = await install(t, dir, ssh, home, ["odd"]);
  assert.equal(result.code, 0, result.stderr);
  const line = result.stdout.split("\n").find((l) => l.includes("export BROWSER="));
  assert.ok(line, result.stdout);
  const assignment = line.slice(line.indexOf("export BROWSER="));
  // What a user pasting the line gets: exactly that send.ts, and nothing run.
  const value = execFileSync("sh", ["-c", `${assignment}; printf %s "$BROWSER"`], { cwd: dir, encoding: "utf8" });
  assert.equal(value, join(home, "send.ts"));
  assert.equal(existsSync(join(dir, "pwned")), false, "the BROWSER line ran a command");
  assert.match(result.stdout, /in ~\/\.profile it reaches login shells; in ~\/\.bashrc, interactive shells/);
});

test("--uninstall: a host ssh cannot reach is one line, the next is still done; a symbolic link at a script's name is left alone", { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t);
  const home = join(dir, "home");
  mkdirSync(home);
  writeFileSync(join(home, "client.ts"), readFileSync(join(ROOT, "client.ts")));
  const victim = join(dir, "notes");
  writeFileSync(victim, "mine\n");
  symlinkSync(victim, join(home, "send.ts"));
  const ssh = trappedSsh(dir, ":", `case "$*" in *" down "*) echo "ssh: connect to host down port 22: Connection refused" >&2; exit 255;; esac`);

  const result = await run(t, "server.ts", ["--uninstall", "--ssh", ssh, "down", "up"], { env: { FAKE_HOME: home, HOME: dir } });
  assert.equal(result.code, 69);
  assert.equal(result.stderr, 'server: cannot uninstall from "down": ssh exited 255: ssh: connect to host down port 22: Connection refused');
  assert.equal(result.stdout, [
    `up: removed "${home}/client.ts"`,
    `up: left alone "${home}/send.ts": a symbolic link`,
  ].join("\n"));
  assert.deepEqual(readdirSync(home), ["send.ts"]);
  assert.equal(readFileSync(victim, "utf8"), "mine\n");
});

test("an --install interrupted while the runtime streams leaves the runtime there as it was, and no temporary directory", { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t);
  const home = join(dir, "home");
  const platform = `${execFileSync("uname", ["-s"], { encoding: "utf8" }).trim()}-${execFileSync("uname", ["-m"], { encoding: "utf8" }).trim()}`;
  mkdirSync(home);
  // $HOME there is the desktop's here (HOME=dir): a runtime provisioned before, ours by its marker.
  const runtimes = join(dir, ".local/share/urlserver/runtime");
  mkdirSync(join(runtimes, platform, "bin"), { recursive: true });
  writeFileSync(join(runtimes, platform, ".urlserver-runtime"), "bun file older.tgz\n");
  writeFileSync(join(runtimes, platform, "bin/bun"), "the old runtime\n");
  // A release of 4 MB that cannot be compressed, and a tar there that reads it slowly, to its end.
  mkdirSync(join(dir, "release/package/bin"), { recursive: true });
  writeFileSync(join(dir, "release/package/bin/bun"), randomBytes(4_000_000));
  execFileSync("tar", ["-czf", join(dir, "bun-new.tgz"), "-C", join(dir, "release"), "package"]);
  mkdirSync(join(dir, "slow-bin"));
  writeFileSync(join(dir, "slow-bin/tar"), '#!/bin/sh\nwhile [ "$(head -c 65536 | wc -c)" -gt 0 ]; do sleep 0.05; done\nexit 2\n', { mode: 0o755 });
  const ssh = trappedSsh(dir, `PATH="${dir}/slow-bin:$PATH"`);

  const env = { FAKE_HOME: home, HOME: dir, PATH: `${join(ROOT, "node_modules/.bin")}:${process.env.PATH}` };
  const server = startScript(t, "server.ts", ["--install", "--ssh", ssh, "--runtime-file", join(dir, "bun-new.tgz"), "host"], { env, stdin: "ignore" });
  const incoming = () => readdirSync(runtimes).filter((name) => name.startsWith(".incoming."));
  await waitUntil(() => incoming().length === 1, 30_000, "the temporary directory of the transfer");
  process.kill(server.pid, "SIGINT");
  assert.equal((await waitForExit(server, 10_000, "server.ts")).code, 130);
  await waitUntil(() => incoming().length === 0, 10_000, "the temporary directory to be removed");
  assert.deepEqual(readdirSync(runtimes), [platform]);
  assert.equal(readFileSync(join(runtimes, platform, "bin/bun"), "utf8"), "the old runtime\n");
  assert.equal(readFileSync(join(runtimes, platform, ".urlserver-runtime"), "utf8"), "bun file older.tgz\n");
});

test("--runtime-file to a host without gzip: the desktop sends the tar itself, and the runtime arrives whole", { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t);
  const home = join(dir, "home");
  mkdirSync(home);
  // A stand-in runtime that answers send.ts --version as a runtime would.
  const fake = '#!/bin/sh\necho "send.ts 0.0.0 on bun/0.0.0-stand-in"\n';
  mkdirSync(join(dir, "release/package/bin"), { recursive: true });
  writeFileSync(join(dir, "release/package/bin/bun"), fake, { mode: 0o755 });
  execFileSync("tar", ["-czf", join(dir, "bun-stand-in.tgz"), "-C", join(dir, "release"), "package"]);
  // The host's programs, gzip left out.
  mkdirSync(join(dir, "no-gzip"));
  for (const name of readdirSync("/usr/bin").filter((name) => name !== "gzip")) symlinkSync(join("/usr/bin", name), join(dir, "no-gzip", name));
  const ssh = trappedSsh(dir, `PATH="${join(ROOT, "node_modules/.bin")}:${dir}/no-gzip"`);

  const result = await install(t, dir, ssh, home, ["--runtime-file", join(dir, "bun-stand-in.tgz"), "plain"]);
  assert.equal(result.code, 0, result.stderr);
  const runtime = join(dir, ".local/share/urlserver/runtime", readdirSync(join(dir, ".local/share/urlserver/runtime"))[0]);
  assert.match(result.stdout, new RegExp(`^plain: provisioned bun from "bun-stand-in\\.tgz" in "${runtime}" \\(0\\.0 MB, from --runtime-file\\)$`, "m"));
  assert.match(result.stdout, /^plain: send\.ts starts in \d+ ms on bun\/0\.0\.0-stand-in$/m);
  assert.equal(readFileSync(join(runtime, "bin/bun"), "utf8"), fake);
});
