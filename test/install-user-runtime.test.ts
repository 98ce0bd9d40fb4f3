// Ensures a runtime the user installed without root, the way its own
// installer does it (Deno in ~/.deno/bin, Bun in ~/.bun/bin), is what
// `server.ts --install` uses on a host whose PATH has no runtime: nothing is
// provisioned (npm is pointed at a registry that refuses every connection,
// so an attempt would fail the install), the report names that runtime and
// where it runs from, `server.ts HOST` connects with the default remote
// command, and send.ts run over ssh there opens a URL. Over real OpenSSH on
// a bare host (test/fixtures/sshd.ts); needs root, sshd, ip, iptables,
// useradd and the runtimes in .runtimes: skipped without them, failing in CI.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmodSync, chownSync, copyFileSync, existsSync, mkdirSync, realpathSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import type { TestContext } from "node:test";
import { FAKE_BROWSER, ROOT, needs, opened, run, startScript, tempDir, waitForExit } from "./helpers.ts";
import { startSshd } from "./fixtures/sshd.ts";

for (const [name, directory] of [["deno", ".deno/bin"], ["bun", ".bun/bin"]] as const) {
  test(`${name} only in ~/${directory}: --install uses it, provisions nothing, and the server connects`, { timeout: 300_000 }, async (t) => {
    const binary = join(ROOT, ".runtimes/node_modules/.bin", name);
    if (!needs(t, existsSync(binary) ? undefined : `${name} in .runtimes (npm run runtimes)`)) return;
    const dir = tempDir(t);
    const sshd = await startSshd(t, { bareHost: true });
    if (!sshd) return;
    const { home, uid, gid } = sshd.remoteUser!;
    t.after(() => rmSync(`/tmp/urlserver-${uid}`, { recursive: true, force: true }));
    installedByTheUser(home, uid, gid, join(directory, name), realpathSync(binary));

    const installed = await installWithoutRegistry(t, sshd.sshWrapper, sshd.host);
    assert.equal(installed.code, 0, `${installed.stdout}\n${installed.stderr}`);
    const lines = installed.stdout.split("\n");
    assert.equal(lines[0], `sshd-host: client.ts installed, send.ts installed, in "${home}"`);
    assert.match(lines[1], new RegExp(`^sshd-host: send\\.ts starts in \\d+ ms on ${name}/\\S+ from ${home}/${directory}/${name}$`));
    assert.equal(installed.stdout.includes("provisioned"), false, installed.stdout);
    assert.equal(existsSync(join(home, ".local/share/urlserver/runtime")), false, "a runtime was provisioned");

    const browserLog = join(dir, "opened");
    const server = startScript(t, "server.ts", ["--ssh", sshd.sshWrapper, "--browser", FAKE_BROWSER, sshd.host],
      { env: { FAKE_BROWSER_LOG: browserLog } });
    const hello = await server.stderr.waitFor(/sshd-host: connected: client pid \d+/, 60_000);
    assert.match(hello, new RegExp(`${name}/\\S+ from ${home}/${directory}/${name}`));
    const url = `https://example.org/${name}-in-home`;
    const sent = execFileSync(sshd.sshWrapper, [sshd.host, `./send.ts ${url}`], { encoding: "utf8", timeout: 60_000 });
    assert.equal(sent, "");
    assert.deepEqual(opened(browserLog), [[1, url]]);
    server.child.kill("SIGTERM");
    await waitForExit(server, 10_000, "server.ts");
  });
}

/** The runtime where its installer puts it, owned by the user. */
function installedByTheUser(home: string, uid: number, gid: number, file: string, binary: string): void {
  let path = home;
  for (const part of dirname(file).split("/")) {
    path = join(path, part);
    mkdirSync(path);
    chownSync(path, uid, gid);
  }
  // A copy, not a link: the runtime reports the path it was started from resolved.
  copyFileSync(binary, join(home, file));
  chmodSync(join(home, file), 0o755);
  chownSync(join(home, file), uid, gid);
}

/** --install with npm pointed at a registry that refuses connections: provisioning, if tried, fails. */
function installWithoutRegistry(t: TestContext, ssh: string, host: string) {
  const env = { npm_config_registry: "http://127.0.0.1:9/", npm_config_fetch_retries: "0" };
  return run(t, "server.ts", ["--ssh", ssh, "--install", host], { env, timeoutMs: 240_000 });
}
