// Ensures `server.ts --install` makes a host with no JavaScript runtime at
// all usable, over real OpenSSH, and `--uninstall` takes it all back: the
// remote user's sessions see no runtime (a PATH of every program but node,
// npm, npx, deno, bun; a fresh home). --install then has npm fetch and verify
// Bun's release from a stand-in registry (test/fixtures/registry.ts), sends
// it over the same ssh and unpacks it where the first lines look; says which
// runtime it provisioned and how fast send.ts starts there, with one progress
// line per step on stderr when that is not a terminal; `server.ts HOST` then
// connects with the default remote command and `send.ts URL` run over ssh
// there opens the URL. A second host of the same kind costs no registry
// request (the desktop's cache); a release whose integrity does not match the
// registry's is refused, and nothing of it kept or sent; --uninstall removes
// the scripts, the runtime and our cache there, says so, and leaves a foreign
// directory beside ours alone; --runtime-file sends a release at hand with no
// registry asked. Needs root, sshd, ip, iptables, useradd, and Bun in
// .runtimes (npm run runtimes): skipped without them, failing in CI.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chownSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import type { TestContext } from "node:test";
import { FAKE_BROWSER, needs, opened, run, startScript, tempDir, waitForExit } from "./helpers.ts";
import { startSshd } from "./fixtures/sshd.ts";
import type { Sshd } from "./fixtures/sshd.ts";
import { bunTarball, startRegistry } from "./fixtures/registry.ts";
import type { Registry } from "./fixtures/registry.ts";
import { RUNTIME_RELEASES } from "../server.ts";

const BUN = RUNTIME_RELEASES.bun;
const PLATFORM = `${execFileSync("uname", ["-s"], { encoding: "utf8" }).trim()}-${execFileSync("uname", ["-m"], { encoding: "utf8" }).trim()}`;

/** server.ts --install (or other args) with npm pointed at the stand-in registry and the desktop's cache in cacheHome. */
function installing(t: TestContext, sshd: Sshd, registry: Registry, cacheHome: string, args: string[]) {
  const env = {
    npm_config_registry: registry.url,
    // A failed fetch is not retried for a minute.
    npm_config_fetch_retries: "0",
    XDG_CACHE_HOME: cacheHome,
  };
  return run(t, "server.ts", ["--ssh", sshd.sshWrapper, ...args, sshd.host], { env, timeoutMs: 240_000 });
}

function progressLines(stderr: string) {
  return stderr.split("\n").filter((line) => line.startsWith("server: downloaded ") || line.startsWith("sshd-host: sent "));
}

test("a host with no runtime: --install provisions Bun, the server connects with the default command, send.ts opens a URL; warm cache, bad integrity, --uninstall", { timeout: 600_000 }, async (t) => {
  const dir = tempDir(t);
  const tarball = bunTarball(dir);
  if (!needs(t, tarball ? undefined : "Bun in .runtimes (npm run runtimes)")) return;
  const sshd = await startSshd(t, { bareHost: true });
  if (!sshd) return;
  const { home, uid } = sshd.remoteUser!;
  t.after(() => rmSync(`/tmp/urlserver-${uid}`, { recursive: true, force: true }));
  const registry = await startRegistry(t, tarball!);
  const cacheHome = join(dir, "desktop-cache");
  const runtimeDir = join(home, ".local/share/urlserver/runtime", PLATFORM);

  // No runtime there, as on a stock server.
  const found = execFileSync(sshd.sshWrapper, [sshd.host, "command -v node nodejs npx deno bun tsx; true"], { encoding: "utf8", timeout: 60_000 });
  assert.equal(found, "");

  const cold = await installing(t, sshd, registry, cacheHome, ["--install"]);
  assert.equal(cold.code, 0, cold.stderr);
  const lines = cold.stdout.split("\n");
  assert.equal(lines[0], `sshd-host: client.ts installed, send.ts installed, in "${home}"`);
  assert.match(lines[1], new RegExp(`^sshd-host: provisioned bun ${BUN.replaceAll(".", "\\.")} in "${runtimeDir}" \\(\\d+\\.\\d MB, downloaded, verified by npm\\)$`));
  assert.match(lines[2], new RegExp(`^sshd-host: send\\.ts starts in \\d+ ms on bun/\\S+ from ${runtimeDir}/bin/bun$`));
  t.diagnostic(lines[2]);
  // Not a terminal: one line for the download, one for the transfer, nothing updated in place.
  const progress = progressLines(cold.stderr);
  assert.equal(progress.length, 2, cold.stderr);
  assert.match(progress[0], new RegExp(`^server: downloaded @oven/bun-linux-\\S+@${BUN.replaceAll(".", "\\.")}: \\d+\\.\\d MB in \\d+\\.\\d s, \\d+\\.\\d MB/s$`));
  assert.match(progress[1], new RegExp(`^sshd-host: sent bun ${BUN.replaceAll(".", "\\.")}: (\\d+\\.\\d) MB in \\d+\\.\\d s, \\d+\\.\\d MB/s$`));
  assert.equal(cold.stderr.includes("\r"), false);
  assert.equal(cold.stderr, progress.join("\n"));
  assert.ok(registry.requests.some((path) => path.startsWith("/-/tarball/")), registry.requests.join(", "));
  // On the host: the runtime alone, ours by its marker, nothing left over; on the desktop, the release cached privately.
  assert.deepEqual(readdirSync(runtimeDir).sort(), [".urlserver-runtime", "bin"]);
  assert.deepEqual(readdirSync(join(runtimeDir, "bin")), ["bun"]);
  assert.equal(statSync(join(runtimeDir, "bin/bun")).uid, uid);
  assert.deepEqual(readdirSync(join(runtimeDir, "..")), [PLATFORM]);
  const cache = join(cacheHome, "urlserver/runtimes");
  assert.equal(statSync(cache).mode & 0o777, 0o700);
  assert.deepEqual(readdirSync(cache).map((name) => name.replace(/-linux-\S+/, "")), [`oven-bun`]);

  // The default remote command finds the runtime; send.ts over ssh opens a URL on the desktop.
  const browserLog = join(dir, "opened");
  const server = startScript(t, "server.ts", ["--ssh", sshd.sshWrapper, "--browser", FAKE_BROWSER, sshd.host],
    { env: { FAKE_BROWSER_LOG: browserLog } });
  await server.stderr.waitFor(/sshd-host: connected: client pid \d+/, 60_000);
  const url = "https://example.org/provisioned";
  const sent = execFileSync(sshd.sshWrapper, [sshd.host, `./send.ts ${url}`], { encoding: "utf8", timeout: 60_000 });
  assert.equal(sent, "");
  assert.deepEqual(opened(browserLog), [[1, url]]);
  server.child.kill("SIGTERM");
  await waitForExit(server, 10_000, "server.ts");

  // --uninstall: ours removed and said; a directory beside ours that is not ours left alone.
  const foreign = join(home, ".local/share/urlserver/runtime/Linux-mine");
  // Node's compile cache, which the first lines keep there under Node (Bun keeps none).
  for (const path of [".cache", ".cache/urlserver", ".cache/urlserver/v24", ".local/share/urlserver/runtime/Linux-mine"]) {
    mkdirSync(join(home, path), { recursive: true });
    chownSync(join(home, path), uid, sshd.remoteUser!.gid);
  }
  writeFileSync(join(foreign, "notes"), "mine\n");
  const removed = await run(t, "server.ts", ["--ssh", sshd.sshWrapper, "--uninstall", sshd.host], { timeoutMs: 60_000 });
  assert.equal(removed.code, 0, `${removed.stdout}\n${removed.stderr}`);
  assert.equal(removed.stderr, "");
  const said = removed.stdout.split("\n");
  assert.equal(said[0], `sshd-host: removed "${home}/client.ts", "${home}/send.ts", "${runtimeDir}", "${home}/.cache/urlserver"`);
  assert.equal(said[1], `sshd-host: left alone "${foreign}": not a runtime urlserver provisioned`);
  assert.equal(said[2], "sshd-host: take the BROWSER line out of the shell's start-up file there");
  for (const gone of ["client.ts", "send.ts", `.local/share/urlserver/runtime/${PLATFORM}`, ".cache/urlserver"]) {
    assert.equal(existsSync(join(home, gone)), false, `${gone} is still there`);
  }
  assert.equal(readFileSync(join(foreign, "notes"), "utf8"), "mine\n");

  // The same host again, now bare: the desktop's cache serves it, with no request to the registry.
  const before = registry.requests.length;
  const warm = await installing(t, sshd, registry, cacheHome, ["--install"]);
  assert.equal(warm.code, 0, `${warm.stdout}\n${warm.stderr}`);
  assert.match(warm.stdout.split("\n")[1], /^sshd-host: provisioned bun \S+ in "\S+" \(\d+\.\d MB, from the cache\)$/);
  assert.deepEqual(progressLines(warm.stderr).map((line) => line.split(":")[0]), ["sshd-host"]);
  assert.deepEqual(registry.requests.slice(before), [], "the warm install asked the registry");

  // A release whose hash is not the registry's is refused: nothing cached, nothing sent, the host's runtime as it was.
  const badRegistry = await startRegistry(t, tarball!, { badIntegrity: true });
  const badCache = join(dir, "bad-cache");
  const bad = await installing(t, sshd, badRegistry, badCache, ["--install", "--runtime", "node"]);
  assert.equal(bad.code, 69);
  assert.match(bad.stderr, new RegExp(`^server: cannot install on "sshd-host": no runtime provisioned: cannot download node-linux-\\S+@${RUNTIME_RELEASES.node.replaceAll(".", "\\.")} with npm \\(exit 1\\): EINTEGRITY: .*integrity checksum failed`, "m"));
  assert.deepEqual(readdirSync(join(badCache, "urlserver/runtimes")), []);
  assert.deepEqual(readdirSync(join(runtimeDir, "bin")), ["bun"]);

  // --runtime-file: a release at hand, no registry asked; it replaces the runtime there.
  const requests = badRegistry.requests.length;
  const fromFile = await installing(t, sshd, badRegistry, badCache, ["--install", "--runtime-file", tarball!]);
  assert.equal(fromFile.code, 0, `${fromFile.stdout}\n${fromFile.stderr}`);
  const name = tarball!.split("/").pop();
  assert.match(fromFile.stdout.split("\n")[1], new RegExp(`^sshd-host: provisioned bun from "${name}" in "${runtimeDir}" \\(\\d+\\.\\d MB, from --runtime-file\\)$`));
  assert.match(fromFile.stdout.split("\n")[2], /^sshd-host: send\.ts starts in \d+ ms on bun\//);
  assert.equal(badRegistry.requests.length, requests);
  assert.equal(readFileSync(join(runtimeDir, ".urlserver-runtime"), "utf8"), `bun file ${name}\n`);
  assert.deepEqual(readdirSync(join(runtimeDir, "..")).sort(), [PLATFORM, "Linux-mine"].sort());

  // A directory at the runtime's place without our marker is not ours: left alone, nothing sent.
  rmSync(join(runtimeDir, ".urlserver-runtime"));
  const notOurs = await installing(t, sshd, badRegistry, badCache, ["--install", "--runtime-file", tarball!]);
  assert.equal(notOurs.code, 69);
  assert.equal(notOurs.stderr, `server: cannot install on "sshd-host": no runtime provisioned: "${runtimeDir}" is not a runtime urlserver provisioned: left alone`);
  assert.deepEqual(readdirSync(runtimeDir), ["bin"]);
});
