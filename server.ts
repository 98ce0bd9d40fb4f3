#!/bin/sh
":" //; s=$0; [ -L "$s" ] && s=$(readlink -f "$s")
":" //; command -v deno >/dev/null && exec deno run --no-prompt --allow-run --allow-read --allow-write --allow-env --allow-sys "$s" "$@"
":" //; command -v bun >/dev/null && exec bun "$s" -- "$@"
":" //; v=$(node --version 2>/dev/null); w="--disable-warning=ExperimentalWarning --disable-warning=MODULE_TYPELESS_PACKAGE_JSON"
":" //; export NODE_COMPILE_CACHE="${NODE_COMPILE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/urlserver}"
":" //; case $v in v2[4-9]*|v[3-9]?.*|v23.[6-9]*|v23.[1-9]?.*|v22.1[89]*|v22.[2-9]?.*) exec node $w "$s" "$@";; esac
":" //; case $v in v23.*|v22.[6-9].*|v22.1?.*) exec node $w --experimental-strip-types "$s" "$@";; esac
":" //; [ "$v" ] && for t in "$(command -v tsx)" "$HOME/.local/bin/tsx" "$HOME"/.npm/_npx/*/node_modules/.bin/tsx; do
":" //;   t=$(readlink -f "$t") && [ -f "${t%/*}/loader.mjs" ] && exec node --import "${t%/*}/loader.mjs" "$s" "$@"; done
":" //; command -v npx >/dev/null && exec npx --yes tsx "$s" "$@"
":" //; echo "server.ts: no runtime found: needs Deno 2, Bun 1, Node 22.6+, or Node 20+ with tsx or npx" >&2; exit 69
// server.ts: the desktop end of urlserver. It runs `ssh HOST` with client.ts
// as the remote command and opens every URL the client forwards with this
// desktop's opener, until the connection ends.
//
//   ./server.ts HOST                             the first runtime found (above)
//   npx tsx server.ts HOST                       Node 20+ with tsx
//   node server.ts HOST                          Node 22.18+ (type stripping)
//   deno run --allow-run --allow-read --allow-write --allow-env --allow-sys server.ts HOST
//   bun server.ts HOST
//   ./server.ts --install HOST                   put client.ts, send.ts on HOST
//   ./server.ts --service HOST                   always on: a user service
//
// Exit codes: 64 usage, 69 every host's client or connection went away (or
// --install failed on a HOST), 70 internal error, 73 cannot write the --log
// file (or --service's, or will not replace one it did not write), 76
// protocol mismatch, 128+N ended by signal N (130 Ctrl-C, 143 TERM, 129 HUP,
// 141 stderr closed).

import { spawn } from "node:child_process";
import type { ChildProcess, ChildProcessWithoutNullStreams } from "node:child_process";
import {
  accessSync, appendFileSync, constants, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, realpathSync,
  renameSync, rmSync, statSync, writeFileSync,
} from "node:fs";
import { createRequire } from "node:module";
import { connect } from "node:net";
import { homedir, hostname, networkInterfaces, release, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import type { Readable } from "node:stream";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const PROGRAM = "server";
const USAGE = `Usage: server.ts [options] HOST...
       server.ts --install [--ssh PROGRAM] HOST...
       server.ts --service [options] HOST... | --service --remove

Run client.ts on each HOST over ssh and open here every URL sent there with
send.ts. Runs until the last connection ends; Ctrl-C ends it. With --install,
set each HOST up for that first.

Options:
  --ssh PROGRAM          ssh program, run as PROGRAM [ssh options] -- HOST CMD
                         (default: $URLSERVER_SSH, else ssh)
  --remote-command CMD   command that starts the client on HOST (default:
                         $URLSERVER_REMOTE_COMMAND, else "exec sh client.ts":
                         ~/client.ts with the first of Deno, Bun, Node 22.6+,
                         Node with tsx, or npx tsx found on HOST)
  --browser PROGRAM      opener, run with the URL as its last argument (default:
                         $URLSERVER_BROWSER, else xdg-open; open on macOS;
                         rundll32 url.dll,FileProtocolHandler on Windows, WSL)
  --keepalive SECONDS    heartbeat interval, 1 to 3600; each end gives up
                         after three silent intervals (default: 15)
  --allow-scheme SCHEME  also open URLs with this scheme, such as mailto;
                         repeatable (http and https are always allowed)
  --rate PER_SECOND      steady rate of opens per host once the burst is spent
                         (default: 1); 0 turns rate limiting off
  --burst N              opens allowed in a burst, per host (default: 10)
  --reconnect            reconnect a lost host, and retry one not reached:
                         attempts 1 s apart, doubling to 8 s while they fail
  --notify               show a desktop notification for each URL opened
  --name NAME            this desktop's name on the hosts, for send.ts --status
                         and URLSERVER_DESKTOP=NAME (default: its hostname)
  --log FILE             append a JSON line per URL: time, host, URL, decision
  --no-forward-loopback  refuse URLs to the remote host's own loopback
                         (localhost, 127.x.y.z, [::1] and the other forms in
                         the README, or such a redirect_uri or oauth_callback)
                         instead of forwarding their port over the connection
  --local                run client.ts from beside this script on this
                         machine, without ssh (one HOST, used as a label)
  --install              instead of serving: put client.ts and send.ts from
                         beside this script in each HOST's home over ssh
                         (never over a file that is not theirs), then say
                         which runtime send.ts starts with there, and how fast
  --service              instead of serving: write a user service (systemd on
                         Linux, launchd on macOS) that runs this server with
                         --reconnect and the other options given, with the
                         desktop session, restarted on failure; print how to
                         start it and see its log. With --remove, remove it
  -h, --help             show this help
  --version              print the version and the runtime running this

Environment: URLSERVER_SSH, URLSERVER_REMOTE_COMMAND, URLSERVER_BROWSER as
above; the remote side uses URLSERVER_SOCKET and XDG_RUNTIME_DIR.

Examples:
  npx tsx server.ts --install build1       set a host up (again after upgrades)
  npx tsx server.ts build1 build2          serve two hosts from one terminal
  npx tsx server.ts --reconnect laptop-vm  survive sleep and network changes
  npx tsx server.ts --service build1       always on, from the next login
  npx tsx server.ts --allow-scheme mailto --log ~/urls.log mail.example.org

Exit codes: 0 --help, --version, --install done; 64 usage; 69 every host's
client or connection went away, or --install failed on a HOST; 70 internal
error; 73 cannot write the --log file (or the --service file, or will not
replace one it did not write); 76 protocol mismatch (one HOST); 128+N
ended by signal N (130 Ctrl-C, 131 Ctrl-\\, 143 TERM, 129 HUP, 141 stderr closed)
`;

// BEGIN exit stanza: identical in server.ts, client.ts and send.ts (test/stanza.test.ts)
// The release, kept here so that the three copies and package.json must agree.
const VERSION = "0.3.0";
// The runtime the first lines picked, and how it reads TypeScript: --version
// says it (server.ts --install reports it from each host), so does the hello.
function runtimeName(): string {
  const versions = process.versions as Record<string, string | undefined>;
  if (versions.deno) return `deno/${versions.deno}`;
  if (versions.bun) return `bun/${versions.bun}`;
  const flags = process.execArgv.join(" ");
  const how = process.env.npm_lifecycle_event === "npx" ? " through npx tsx"
    : flags.includes("tsx") ? " with tsx"
    : flags.includes("--experimental-strip-types") ? " with --experimental-strip-types" : "";
  return `node/${versions.node}${how}`;
}
// Every way out runs the cleanups first, told the signal if that is the way:
// a signal, a closed stdout or stderr, a crash.
const cleanups: Array<(signal?: string) => void> = [];
function exitNow(code: number, signal?: string): never {
  for (const cleanup of cleanups.splice(0).reverse()) {
    try { cleanup(signal); } catch { /* exiting anyway */ }
  }
  process.exit(code);
}
for (const [signal, number] of [["SIGHUP", 1], ["SIGINT", 2], ["SIGQUIT", 3], ["SIGTERM", 15]] as const) {
  process.on(signal, () => exitNow(128 + number, signal));
}
// Node reports a vanished reader of stdout or stderr as an unhandled EPIPE
// rather than dying of SIGPIPE: end as if it had. (No error listener on them:
// Bun would create both streams at start for it, 4 ms of every send.ts.)
function crash(error: unknown): never {
  if ((error as NodeJS.ErrnoException | undefined)?.code === "EPIPE") return exitNow(128 + 13);
  process.stderr.write(`${PROGRAM}: internal error: ${error instanceof Error ? error.message : error}\n`);
  return exitNow(70);
}
process.on("uncaughtException", crash);
process.on("unhandledRejection", crash);
// END exit stanza

const PROTOCOL = "urlserver/1";
const MAX_URL_BYTES = 8192;
// Room for "open ID " before a longest URL; anything longer is not from a client.
const MAX_CHANNEL_LINE_BYTES = MAX_URL_BYTES + 64;
const LINE_HEAD_BYTES = 32;
// The remote side's stderr is for people: a longer line is shown cut.
const MAX_REMOTE_LINE_BYTES = 1024;
// A host's refusals, ignored messages and stderr lines are logged one by one
// up to this many per window, then only counted, and the count said once.
const LOG_BUDGET = 20;
const LOG_WINDOW_MS = 10_000;
// setTimeout takes at most 2^31-1 ms; an hour is more than any network needs.
const MAX_KEEPALIVE_SECONDS = 3600;
// client.ts's first lines pick the runtime; sh runs them whatever the login
// shell (fish, csh) and whether or not scp kept the executable bit.
const DEFAULT_REMOTE_COMMAND = "exec sh client.ts";
// Privileged ports would need root on the desktop to listen on.
const MIN_FORWARDED_PORT = 1024;
// How long an opener that has not exited yet is waited for: one still
// running then is a browser that stays in the foreground.
const OPENER_WAIT_MS = 1000;
// An ssh master that does not answer within this long is not going to.
const FORWARD_TIMEOUT_MS = 10_000;
// What one connection may have the desktop listen on, at most.
const MAX_FORWARDED_PORTS = 32;
// How far above a busy desktop port a direct loopback URL's new port is looked for.
const MAX_PORT_MOVE = 32;
// ssh binds its control socket as PATH plus 17 characters, then renames it;
// Unix socket paths end at 104 bytes on macOS, 108 on Linux.
const MAX_CONTROL_DIRECTORY_LENGTH = 80;
// ssh's ConnectTimeout: the TCP connect, handshake and key exchange of an
// attempt. A dropped SYN is sent again 1, 3 and 7 s in, and the next attempt
// starts at 10 s, so a network that comes back is never more than 4 s from
// the next try; a slow link's handshake takes a few seconds, not ten.
const CONNECT_TIMEOUT_SECONDS = 10;
// The server's own bound on an attempt that has not said hello, for what ssh
// does not bound: authentication (a password being typed, a Kerberos lookup
// that hangs) and the remote start (npx fetching tsx over a slow link). As
// long as sshd's own LoginGraceTime: a start that takes longer is not going
// to finish. A network lost meanwhile is noticed sooner, by ConnectTimeout or
// the keepalive, so this does not hold up a reconnect.
const HELLO_TIMEOUT_SECONDS = 120;
// Before the hello, the remote side's lines (ssh's errors, a login banner)
// are held, the last few, to be shown once the hello comes or folded into one
// line if it never does; a hello this late has them shown as they come.
const MAX_HELD_LINES = 10;
const SHOW_HELD_AFTER_MS = 5000;
// How long the end of an attempt waits for the last word of ssh, whose
// stderr a process it started may hold open.
const LAST_WORD_MS = 1000;
// --reconnect: attempts start at least 1 s apart, doubling to 8 s while they
// keep failing, so a host that is down for a day costs one ssh run every 8 s
// and is reconnected within 8 s of its return. An attempt that itself took
// that long (a connect timing out) is followed at once. A connection this
// long past its hello starts the doubling over.
const FIRST_ATTEMPT_SPACING_MS = 1000;
const MAX_ATTEMPT_SPACING_MS = 8000;
const STABLE_CONNECTION_MS = 60_000;
// During an outage the first failed attempts are logged one by one, then one
// line at 1, 2, 4, 8... minutes, at most an hour apart.
const FAILURES_LOGGED = 3;
const FIRST_SUMMARY_MS = 60_000;
const MAX_SUMMARY_GAP_MS = 3_600_000;

type Options = {
  hosts: string[];
  ssh: string;
  remoteCommand?: string;
  browser: string[];
  keepaliveSeconds: number;
  schemes: Set<string>;
  rate: number;
  burst: number;
  reconnect: boolean;
  notifier?: string[];
  auditLog?: string;
  /** What the hosts call this desktop (send.ts --status, URLSERVER_DESKTOP). */
  name: string;
  local: boolean;
  install: boolean;
  /** --service: write (or with remove, remove) the service that runs this server with args. */
  service?: { remove: boolean; args: string[] };
  /** Why loopback URLs' ports are not forwarded, if they are not. */
  noForwardReason?: string;
  /** Where the ssh masters' control sockets live; only when loopback ports are forwarded. */
  controlDirectory?: string;
};

// How a connection ended: the exit code, whether trying again could help, and
// for one that ended before the client's hello, why, not yet logged.
type Ending = { code: number; final: boolean; failure?: Failure };

async function main(argv: string[]): Promise<number> {
  let options: Options;
  try {
    const parsed = parseOptions(argv);
    if (parsed === "help" || parsed === "version") {
      process.stdout.write(parsed === "help" ? USAGE : `${PROGRAM}.ts ${VERSION} on ${runtimeName()}\n`);
      return 0;
    }
    options = parsed;
  } catch (error) {
    process.stderr.write(`${PROGRAM}: ${(error as Error).message.split("\n")[0]}\nRun "server.ts --help" for usage.\n`);
    return 64;
  }
  if (options.install) return installHosts(options);
  if (options.service) return setUpService(options.service);
  if (options.auditLog && !prepareAuditLog(options.auditLog)) return 73;
  if (options.noForwardReason === DESKTOP.noMultiplexing && DESKTOP.noMultiplexing && !options.local) {
    process.stderr.write(`${PROGRAM}: loopback URLs will be refused, not forwarded: ${DESKTOP.noMultiplexing}\n`);
  }
  if (!options.noForwardReason && !options.local) {
    await removeLeftoverControlDirectories();
    const directory = makeControlDirectory();
    // Pushed first, so run last: after the masters have been told to go.
    cleanups.push(() => rmSync(directory, { recursive: true, force: true }));
    options.controlDirectory = directory;
  }
  const live = new Set<ChildProcess>();
  cleanups.push(() => live.forEach((child) => child.kill("SIGTERM")));
  watchForWakes();
  const serving = options.hosts.map((host) => serveHost(host, options, live));
  // Pushed last, so said first: a server ended by a signal says so.
  cleanups.push((signal) => {
    if (signal) process.stderr.write(`${new Date().toISOString()} stopping: ${signal}\n`);
  });
  const codes = await Promise.all(serving);
  return codes.length === 1 ? codes[0] : 69;
}

function parseOptions(argv: string[]): Options | "help" | "version" {
  const { values, positionals } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: true,
    options: {
      ssh: { type: "string" },
      "remote-command": { type: "string" },
      browser: { type: "string" },
      keepalive: { type: "string", default: "15" },
      "allow-scheme": { type: "string", multiple: true, default: [] },
      rate: { type: "string", default: "1" },
      burst: { type: "string", default: "10" },
      reconnect: { type: "boolean", default: false },
      notify: { type: "boolean", default: false },
      log: { type: "string" },
      name: { type: "string" },
      local: { type: "boolean", default: false },
      install: { type: "boolean", default: false },
      service: { type: "boolean", default: false },
      remove: { type: "boolean", default: false },
      "no-forward-loopback": { type: "boolean", default: false },
      help: { type: "boolean", short: "h" },
      version: { type: "boolean" },
    },
  });
  if (values.help) return "help";
  if (values.version) return "version";
  if (values.remove && !values.service) throw new Error("--remove goes with --service: server.ts --service --remove");
  if (values.service && values.install) throw new Error("--service and --install are two steps: run --install first");
  if (values.service && values.remove && positionals.length > 0) throw new Error("--service --remove takes no HOST");
  if (positionals.length === 0 && !values.remove) throw new Error("missing HOST");
  for (const host of positionals) {
    // ssh would read it as an option, whatever "--" says about the rest.
    if (host.startsWith("-") || host === "") throw new Error(`refusing HOST "${host}": it would be read as an ssh option`);
  }
  if (new Set(positionals).size !== positionals.length) throw new Error("a HOST is named twice");
  if (values.local && positionals.length > 1) throw new Error("--local serves one HOST: its clients would share one socket");
  if (values.local && values.install) throw new Error("--install works over ssh: --local has no remote home to install into");
  const env = process.env;
  const browser = values.browser ?? env.URLSERVER_BROWSER;
  return {
    hosts: positionals,
    ssh: values.ssh ?? env.URLSERVER_SSH ?? "ssh",
    remoteCommand: values["remote-command"] ?? env.URLSERVER_REMOTE_COMMAND,
    browser: browser ? [browser] : DESKTOP.opener,
    keepaliveSeconds: keepaliveSeconds(values.keepalive),
    schemes: new Set(["http", "https", ...values["allow-scheme"].map(checkedScheme)]),
    rate: positiveNumber("--rate", values.rate, true),
    burst: Math.max(1, Math.floor(positiveNumber("--burst", values.burst, false))),
    reconnect: values.reconnect,
    notifier: values.notify ? findNotifier() : undefined,
    auditLog: values.log,
    name: values.name === undefined ? hostname() : desktopName(values.name),
    local: values.local,
    install: values.install,
    service: values.service ? { remove: values.remove, args: serviceArguments(argv) } : undefined,
    noForwardReason: values["no-forward-loopback"] ? "--no-forward-loopback is set" : DESKTOP.noMultiplexing,
  };
}

function positiveNumber(option: string, text: string, zeroAllowed: boolean): number {
  const value = Number(text);
  if (text.trim() === "" || !Number.isFinite(value) || value < 0 || (value === 0 && !zeroAllowed)) {
    throw new Error(`${option} needs a ${zeroAllowed ? "non-negative" : "positive"} number, not "${text}"`);
  }
  return value;
}

function desktopName(text: string): string {
  if (!/^[^\p{Cc}\p{Cf}\p{Z}]{1,64}$/u.test(text)) throw new Error(`--name needs 1 to 64 characters, no spaces or control characters, not ${JSON.stringify(text)}`);
  return text;
}

function keepaliveSeconds(text: string): number {
  const seconds = Number(text);
  if (text.trim() === "" || !(seconds >= 1 && seconds <= MAX_KEEPALIVE_SECONDS)) {
    throw new Error(`--keepalive needs a number of seconds from 1 to ${MAX_KEEPALIVE_SECONDS}, not "${text}"`);
  }
  return seconds;
}

function checkedScheme(text: string): string {
  const scheme = text.toLowerCase().replace(/:$/, "");
  if (!/^[a-z][a-z0-9+.-]*$/.test(scheme)) throw new Error(`--allow-scheme: "${text}" is not a URL scheme`);
  if (["javascript", "file", "data", "vbscript", "blob"].includes(scheme)) {
    throw new Error(`--allow-scheme: "${scheme}" can run code or read local files, and is never allowed`);
  }
  return scheme;
}

// What differs with the desktop's platform, decided in one place from the
// platform, the OS release and the environment (so that a test can ask for
// each): the default opener, the notifier, and whether ssh can multiplex a
// connection, which forwarding a loopback URL's port needs.
export type Desktop = { opener: string[]; notifier?: string; noMultiplexing?: string; pathSeparator: string };

export function desktopPlatform(platform: string, osRelease: string, env: Record<string, string | undefined>): Desktop {
  // No shell on the way: cmd's "start" would interpret & and ^ in URLs.
  const rundll = ["url.dll,FileProtocolHandler"];
  if (platform === "darwin") return { opener: ["open"], notifier: "osascript", pathSeparator: ":" };
  if (platform === "win32") {
    return { opener: ["rundll32", ...rundll], noMultiplexing: "Windows' OpenSSH has no connection multiplexing", pathSeparator: ";" };
  }
  // WSL: a Linux whose desktop, and browser, are Windows'.
  if (/microsoft/i.test(osRelease) || env.WSL_DISTRO_NAME) return { opener: ["rundll32.exe", ...rundll], notifier: "notify-send", pathSeparator: ":" };
  return { opener: ["xdg-open"], notifier: "notify-send", pathSeparator: ":" };
}

const DESKTOP = desktopPlatform(process.platform, release(), process.env);

// A missing notifier is said once, here, rather than for every URL.
function findNotifier(): string[] | undefined {
  const program = DESKTOP.notifier;
  if (!program) {
    process.stderr.write(`${PROGRAM}: warning: --notify has no notifier on this platform: no notifications\n`);
    return undefined;
  }
  const found = (process.env.PATH ?? "").split(DESKTOP.pathSeparator).some((dir) => {
    try {
      accessSync(join(dir || ".", program), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
  if (!found) {
    process.stderr.write(`${PROGRAM}: warning: --notify needs ${program}, which is not on PATH: no notifications\n`);
    return undefined;
  }
  // osascript takes the texts as arguments, never inside the script's source.
  return program === "osascript"
    ? [program, "-e", "on run argv", "-e", "display notification (item 2 of argv) with title (item 1 of argv)", "-e", "end run"]
    : [program, "--app-name=urlserver"];
}

// --install: one ssh run per host, whose shell reads installScript() on its
// stdin (one connection: one password prompt at most), one host at a time so
// that prompts do not interleave.
async function installHosts(options: Options): Promise<number> {
  let script: string;
  try {
    script = installScript();
  } catch (error) {
    process.stderr.write(`${PROGRAM}: cannot install: ${(error as Error).message}\n`);
    return 69;
  }
  let failed = false;
  for (const host of options.hosts) {
    const problems = await installOn(host, options.ssh, script);
    for (const problem of problems) process.stderr.write(`${PROGRAM}: cannot install on "${host}": ${problem}\n`);
    failed ||= problems.length > 0;
  }
  return failed ? 69 : 0;
}

// Lines it prints start with INSTALL_TAG; anything else (a shell start-up
// file that talks) is not ours. Files go where ssh starts the shell, which is
// where the default remote command finds client.ts. A file there that is not
// a urlserver script (by its header line), a symbolic link or not a regular
// file stops the install on that host before anything is written. Each file
// is written to a temporary name, made executable, then renamed over the old
// one. Then send.ts --version runs through its own first lines, once to warm
// caches (npx's download, Node's compile cache), once timed with the remote
// clock where `date` has %N. The whole script is one { } group, which the
// shell reads to its end before running any of it: a connection cut short
// leaves a syntax error, never a half-written file installed.
const INSTALL_TAG = "urlserver-install ";
const MAX_INSTALL_LINES = 100;

function installScript(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const files = ["client.ts", "send.ts"].map((name) => {
    const path = join(here, name);
    let text: string;
    try {
      text = readFileSync(path, "utf8");
    } catch {
      throw new Error(`"${path}" not found: --install copies the client.ts and send.ts beside server.ts`);
    }
    let end = "URLSERVER_END_OF_FILE";
    while (text.split("\n").includes(end)) end += "_";
    return `put ${name} <<'${end}'\n${text.endsWith("\n") ? text : `${text}\n`}${end}\n`;
  });
  return `{
say() { printf '${INSTALL_TAG}%s\\n' "$*"; }
say dir "$PWD"
say home "$HOME"
refused=
for f in client.ts send.ts; do
  if [ -L "$f" ]; then say foreign "$f" is a symbolic link; refused=1
  elif [ -e "$f" ] && [ ! -f "$f" ]; then say foreign "$f" is not a regular file; refused=1
  elif [ -f "$f" ] && ! grep -q "^// $f: .*urlserver" "$f"; then say foreign "$f" is not a urlserver script; refused=1
  fi
done
[ -z "$refused" ] || exit 1
put() {
  tmp=".$1.urlserver-install.$$"
  if ! { cat > "$tmp" && chmod 755 "$tmp"; }; then rm -f "$tmp"; say failed cannot write "$PWD/$tmp"; exit 1; fi
  if [ ! -e "$1" ]; then how=installed; elif cmp -s "$tmp" "$1"; then how=unchanged; else how=updated; fi
  mv -f "$tmp" "$1" || { rm -f "$tmp"; say failed cannot rename "$PWD/$tmp" to "$1"; exit 1; }
  say placed "$1" "$how"
}
${files.join("")}"$PWD/send.ts" --version </dev/null >/dev/null 2>&1
say starting
t0=$(date +%s%N 2>/dev/null)
said=$("$PWD/send.ts" --version </dev/null 2>&1)
status=$?
t1=$(date +%s%N 2>/dev/null)
say ran "$status" "$t0" "$t1"
printf '%s\\n' "$said" | sed 's/^/${INSTALL_TAG}said /'
}
`;
}

// Runs the script on host; prints what was done, returns what went wrong.
function installOn(host: string, ssh: string, script: string): Promise<string[]> {
  return new Promise((resolve) => {
    const child = spawn(ssh, ["-T", "--", host, "sh -s"], { stdio: ["pipe", "pipe", "pipe"] });
    const stop = () => child.kill("SIGTERM");
    cleanups.push(stop);
    const lines: string[] = [];
    // For a `date` without %N: the arrival of "starting" and "ran" here.
    let startedAt = 0;
    let ranAt = 0;
    let stderr = "";
    // What the remote host says is read bounded, as on any connection.
    readLines(child.stdout, MAX_REMOTE_LINE_BYTES, (bytes) => {
      const line = bytes.toString().replace(/\r$/, "");
      if (!line.startsWith(INSTALL_TAG) || lines.length >= MAX_INSTALL_LINES) return;
      const fields = line.slice(INSTALL_TAG.length);
      if (fields === "starting") startedAt = performance.now();
      if (fields.startsWith("ran ")) ranAt = performance.now();
      lines.push(printable(fields));
    });
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk: string) => { stderr = (stderr + chunk).slice(-4096); });
    // An ssh that fails to connect stops reading: its exit status says why.
    child.stdin.on("error", () => {});
    child.stdin.end(script);
    child.on("error", (error) => {
      cleanups.splice(cleanups.indexOf(stop), 1);
      resolve([`cannot run "${ssh}": ${error.message}`]);
    });
    child.on("close", (code) => {
      cleanups.splice(cleanups.indexOf(stop), 1);
      const lastError = printable(stderr.trim().split("\n").pop() ?? "");
      resolve(installReport(host, lines, code, lastError, ranAt - startedAt));
    });
  });
}

function installReport(host: string, lines: string[], code: number | null, lastError: string, arrivalMs: number): string[] {
  const field = (key: string) => lines.find((line) => line.startsWith(`${key} `))?.slice(key.length + 1);
  const dir = field("dir") ?? "~";
  const foreign = lines.filter((line) => line.startsWith("foreign "));
  if (foreign.length > 0) {
    return foreign.map((line) => {
      const [, name, ...why] = line.split(" ");
      return `"${dir}/${name}" ${why.join(" ")}: left alone, nothing installed there`;
    });
  }
  const failure = field("failed");
  if (failure) return [`${failure}${lastError ? `: ${lastError}` : ""}`];
  const placed = lines.filter((line) => line.startsWith("placed ")).map((line) => line.slice(7));
  if (placed.length < 2) {
    const why = code === 255 ? "ssh exited 255" : `the remote shell exited ${code ?? "on a signal"}`;
    return [`${why}${lastError ? `: ${lastError}` : ""}`];
  }
  const ran = field("ran")?.split(" ") ?? [];
  const said = lines.filter((line) => line.startsWith("said ")).map((line) => line.slice(5)).filter(Boolean);
  if (ran[0] !== "0") {
    return [`client.ts and send.ts are in "${dir}", but send.ts does not start there (exit ${ran[0] ?? "unknown"}): ${said.at(-1) ?? (lastError || "no message")}`];
  }
  const [start, end] = ran.slice(1);
  const ms = /^\d+$/.test(start ?? "") && /^\d+$/.test(end ?? "") ? Number(BigInt(end) - BigInt(start)) / 1e6 : arrivalMs;
  const runtime = / on (.*)$/.exec(said.at(-1) ?? "")?.[1] ?? "an unknown runtime";
  const hint = runtime.includes("npx") ? "; it starts faster with tsx installed there: npm install -g --prefix ~/.local tsx" : "";
  const browser = dir === field("home") ? "$HOME/send.ts" : `${dir}/send.ts`;
  process.stdout.write([
    `${host}: ${placed.join(", ")}, in "${dir}"`,
    `${host}: send.ts starts in ${Math.round(ms)} ms on ${runtime}${hint}`,
    `${host}: add to the shell's start-up file there: export BROWSER="${browser}"`,
  ].map((line) => `${line}\n`).join(""));
  return [];
}

// --service: this server as a service of the desktop session, started with
// it and restarted on failure, under --reconnect: a systemd user unit on
// Linux, a launchd agent on macOS. It runs the runtime running this script
// and this script by their absolute paths, with the options given here, so
// that neither the service manager's PATH nor its directory changes what runs.
// Only a file that says it was written so is ever replaced or removed.
// (No "--" in it: an XML comment cannot hold one.)
const SERVICE_MARK = "Written by urlserver's server.ts, as a service";
const SERVICE_NAME = "urlserver";
const LAUNCHD_LABEL = "local.urlserver";
// Options that take a value, and those whose value is a path to make absolute.
const VALUE_OPTIONS = new Set(["--ssh", "--remote-command", "--browser", "--keepalive", "--allow-scheme", "--rate", "--burst", "--log"]);
const PATH_OPTIONS = new Set(["--ssh", "--browser", "--log"]);
// What the service passes on from this shell's environment when set here.
const SERVICE_ENVIRONMENT = ["PATH", "URLSERVER_SSH", "URLSERVER_BROWSER", "URLSERVER_REMOTE_COMMAND"];

// The server's own arguments for the service: --reconnect first, and every
// path (--log, an --ssh or --browser given as a path) made absolute.
function serviceArguments(argv: string[]): string[] {
  const args: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const equals = argv[i].startsWith("--") ? argv[i].indexOf("=") : -1;
    const name = equals === -1 ? argv[i] : argv[i].slice(0, equals);
    if (name === "--service" || name === "--remove") continue;
    if (!VALUE_OPTIONS.has(name)) {
      args.push(argv[i]);
      continue;
    }
    const value = equals === -1 ? argv[++i] : argv[i].slice(equals + 1);
    args.push(name, PATH_OPTIONS.has(name) && (name === "--log" || value.includes("/")) ? resolve(value) : value);
  }
  return args.includes("--reconnect") ? args : ["--reconnect", ...args];
}

// The runtime running this script, as an absolute command: Node's loader
// (tsx given by its package name) resolved to its file.
function runtimeCommand(): string[] {
  const script = fileURLToPath(import.meta.url);
  const versions = process.versions as Record<string, string | undefined>;
  if (versions.deno) return [process.execPath, "run", "--no-prompt", "--allow-run", "--allow-read", "--allow-write", "--allow-env", "--allow-sys", script];
  if (versions.bun) return [process.execPath, script];
  const resolveFrom = createRequire(join(process.cwd(), "noop.js"));
  const absolute = (module: string) => {
    if (module.startsWith("/") || module.startsWith("file:")) return module;
    try {
      return resolveFrom.resolve(module);
    } catch {
      return module;
    }
  };
  const flags = process.execArgv.map((flag, i, all) => {
    const loader = /^(--import|--loader|--experimental-loader|--require|-r)=(.*)$/.exec(flag);
    if (loader) return `${loader[1]}=${absolute(loader[2])}`;
    return ["--import", "--loader", "--experimental-loader", "--require", "-r"].includes(all[i - 1]) ? absolute(flag) : flag;
  });
  return [process.execPath, ...flags, script];
}

export type ServiceSpec = { platform: string; home: string; uid: number; command: string[]; hosts: string[]; env: Record<string, string | undefined> };
/** The service's file and the commands that start it, show its log and stop it. */
export type Service = { path: string; text: string; start: string; log: string; stop: string; also?: string };

export function serviceDefinition(spec: ServiceSpec): Service | string {
  const environment = SERVICE_ENVIRONMENT.flatMap((name) => spec.env[name] ? [[name, spec.env[name]!]] : []);
  if (spec.platform === "darwin") {
    const path = join(spec.home, "Library/LaunchAgents", `${LAUNCHD_LABEL}.plist`);
    const log = join(spec.home, "Library/Logs", `${SERVICE_NAME}.log`);
    return { path, text: launchdAgent(spec.command, environment, log), start: `launchctl bootout gui/${spec.uid}/${LAUNCHD_LABEL} 2>/dev/null; launchctl bootstrap gui/${spec.uid} ${shellWord(path)}`,
      log: `tail -f ${shellWord(log)}`, stop: `launchctl bootout gui/${spec.uid}/${LAUNCHD_LABEL}` };
  }
  if (spec.platform === "win32") return "Windows has neither systemd nor launchd: start server.ts --reconnect HOST from a shortcut in the Startup folder";
  const path = join(spec.home, ".config/systemd/user", `${SERVICE_NAME}.service`);
  return { path, text: systemdUnit(spec.command, environment, spec.hosts),
    start: `systemctl --user daemon-reload && systemctl --user enable ${SERVICE_NAME}.service && systemctl --user restart ${SERVICE_NAME}.service`,
    log: `journalctl --user -u ${SERVICE_NAME}.service -f`,
    stop: `systemctl --user stop ${SERVICE_NAME}.service; systemctl --user daemon-reload`,
    also: join(spec.home, ".config/systemd/user/graphical-session.target.wants", `${SERVICE_NAME}.service`) };
}

// The session's DISPLAY, WAYLAND_DISPLAY, DBUS_SESSION_BUS_ADDRESS and
// SSH_AUTH_SOCK (what the opener and ssh need) are in the user manager's
// environment once the desktop has imported them at login, as GNOME, KDE and
// most others do when they start graphical-session.target.
function systemdUnit(command: string[], environment: string[][], hosts: string[]): string {
  // systemd reads %specifiers and $variables in these lines, and C escapes in quotes.
  const quoted = (text: string) => `"${text.replace(/[\\"%$\n]/g, (c) => ({ "\\": "\\\\", '"': '\\"', "%": "%%", $: "$$", "\n": "\\n" })[c]!)}"`;
  return [
    `# ${SERVICE_MARK}; "server.ts --service --remove" removes it.`,
    "[Unit]",
    `Description=urlserver: open URLs from ${hosts.join(" ").replace(/%/g, "%%").replace(/[\p{Cc}]/gu, "")} in this desktop's browser`,
    "# Started with the graphical session, whose DISPLAY, WAYLAND_DISPLAY,",
    "# DBUS_SESSION_BUS_ADDRESS and SSH_AUTH_SOCK the desktop imports at login; a",
    "# desktop that does not: systemctl --user import-environment DISPLAY SSH_AUTH_SOCK",
    "PartOf=graphical-session.target",
    "After=graphical-session.target",
    "",
    "[Service]",
    `ExecStart=${command.map(quoted).join(" ")}`,
    ...environment.map(([name, value]) => `Environment=${quoted(`${name}=${value}`)}`),
    "Restart=on-failure",
    "RestartSec=5",
    "",
    "[Install]",
    "WantedBy=graphical-session.target",
    "",
  ].join("\n");
}

// launchd gives agents of the GUI session (Aqua) the user's SSH_AUTH_SOCK;
// macOS's opener needs nothing more.
function launchdAgent(command: string[], environment: string[][], log: string): string {
  const xml = (text: string) => text.replace(/[&<>]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;" })[c]!);
  const string = (text: string) => `<string>${xml(text)}</string>`;
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">',
    `<!-- ${SERVICE_MARK}; server.ts with its options service and remove removes it. -->`,
    '<plist version="1.0">',
    "<dict>",
    `  <key>Label</key>${string(LAUNCHD_LABEL)}`,
    "  <key>ProgramArguments</key>",
    "  <array>",
    ...command.map((arg) => `    ${string(arg)}`),
    "  </array>",
    "  <key>EnvironmentVariables</key>",
    "  <dict>",
    ...environment.map(([name, value]) => `    <key>${xml(name)}</key>${string(value)}`),
    "  </dict>",
    "  <key>LimitLoadToSessionType</key><string>Aqua</string>",
    "  <key>RunAtLoad</key><true/>",
    "  <key>KeepAlive</key><dict><key>SuccessfulExit</key><false/></dict>",
    `  <key>StandardErrorPath</key>${string(log)}`,
    "</dict>",
    "</plist>",
    "",
  ].join("\n");
}

function shellWord(text: string): string {
  return /^[\w./-]+$/.test(text) ? text : `'${text.replace(/'/g, "'\\''")}'`;
}

// Writes (or removes) the service; what to run next goes to stdout.
function setUpService(service: { remove: boolean; args: string[] }): number {
  const hosts = service.args.filter((arg, i, all) => !arg.startsWith("-") && !VALUE_OPTIONS.has(all[i - 1]));
  const definition = serviceDefinition({ platform: process.platform, home: homedir(), uid: process.getuid?.() ?? 0,
    command: [...runtimeCommand(), ...service.args], hosts, env: process.env });
  const problem = (why: string, code = 73) => {
    process.stderr.write(`${PROGRAM}: ${why}\n`);
    return code;
  };
  if (typeof definition === "string") return problem(`cannot set up a service: ${definition}`, 69);
  const say = (line: string) => process.stdout.write(`${line}\n`);
  const current = lstatSync(definition.path, { throwIfNoEntry: false });
  if (current && !(current.isFile() && readFileSync(definition.path, "utf8").includes(SERVICE_MARK))) {
    return problem(`will not ${service.remove ? "remove" : "replace"} "${definition.path}": server.ts --service did not write it`);
  }
  if (service.remove) {
    if (!current) return (say(`no service to remove: "${definition.path}" does not exist`), 0);
    rmSync(definition.path);
    // The link "systemctl enable" made, if it leads to the file removed.
    const link = definition.also && lstatSync(definition.also, { throwIfNoEntry: false });
    if (link && link.isSymbolicLink() && readlinkSync(definition.also!) === definition.path) rmSync(definition.also!);
    say(`removed "${definition.path}"`);
    say(`stop the one running now: ${definition.stop}`);
    return 0;
  }
  const temporary = `${definition.path}.${process.pid}.tmp`;
  try {
    mkdirSync(dirname(definition.path), { recursive: true });
    writeFileSync(temporary, definition.text, { flag: "wx", mode: 0o644 });
    renameSync(temporary, definition.path);
  } catch (error) {
    rmSync(temporary, { force: true });
    return problem(`cannot write "${definition.path}": ${(error as Error).message}`);
  }
  say(`wrote "${definition.path}": server.ts ${service.args.join(" ")}, with the desktop session, restarted on failure`);
  say(`start it now and at every login: ${definition.start}`);
  say(`see its log: ${definition.log}`);
  return 0;
}

// The ssh masters' control sockets give access to the connections, so they
// live in a directory only this user can enter (mkdtemp makes it 0700). ssh
// reads a ControlPath as words with %-tokens, and socket paths are short: a
// temporary directory with spaces or a long name gives way to /tmp. The name
// holds this server's pid, so that a later server can tell it is left over.
function makeControlDirectory(): string {
  const prefix = `urlserver-${process.pid}-`;
  const directory = mkdtempSync(join(tmpdir(), prefix));
  if (/^[\w./-]+$/.test(directory) && directory.length <= MAX_CONTROL_DIRECTORY_LENGTH) return directory;
  rmSync(directory, { recursive: true, force: true });
  return mkdtempSync(`/tmp/${prefix}`);
}

// A server killed with SIGKILL cannot remove its control directory. Removed
// here: this user's own directories whose server is gone and in which no ssh
// master answers any more (the pid alone could be another pid namespace's).
async function removeLeftoverControlDirectories(): Promise<void> {
  const uid = process.getuid?.();
  if (uid === undefined) return;
  for (const base of new Set([tmpdir(), "/tmp"])) {
    let names: string[];
    try {
      names = readdirSync(base);
    } catch {
      continue;
    }
    for (const name of names) {
      const pid = /^urlserver-([0-9]+)-[A-Za-z0-9]{6}$/.exec(name)?.[1];
      if (!pid || Number(pid) === process.pid || processExists(Number(pid))) continue;
      const directory = join(base, name);
      const info = lstatSync(directory, { throwIfNoEntry: false });
      if (!info?.isDirectory() || info.uid !== uid) continue;
      if (await anySocketAnswers(directory)) continue;
      rmSync(directory, { recursive: true, force: true });
    }
  }
}

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists, as another user's process.
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

function anySocketAnswers(directory: string): Promise<boolean> {
  const sockets = readdirSync(directory).map((name) => join(directory, name))
    .filter((path) => lstatSync(path, { throwIfNoEntry: false })?.isSocket());
  return Promise.all(sockets.map((path) => new Promise<boolean>((resolve) => {
    const probe = connect(path);
    probe.on("connect", () => { probe.destroy(); resolve(true); });
    probe.on("error", () => resolve(false));
  }))).then((answers) => answers.includes(true));
}

// What a host keeps whatever its connection: its rate limit and its log budget.
type HostState = { takeToken: () => boolean; budget: LogBudget };

// One host's connection, and with --reconnect its successors, each attempt
// starting at least spacingMs after the one before.
async function serveHost(host: string, options: Options, live: Set<ChildProcess>): Promise<number> {
  const state = { takeToken: rateLimiter(options.rate, options.burst), budget: logBudget(host, options) };
  // What was counted but not yet said is said also when the server is stopped.
  cleanups.push(state.budget.flush);
  const outage = outageLog(host, state.budget);
  let spacingMs = FIRST_ATTEMPT_SPACING_MS;
  for (let attempt = 1; ; attempt++) {
    const started = Date.now();
    let helloAt: number | undefined;
    const ending = await serveConnection(host, options, live, state, () => {
      helloAt = Date.now();
      outage.back();
    });
    state.budget.flush();
    if (!options.reconnect || ending.final) {
      if (ending.failure) outage.report(ending.failure);
      return ending.code;
    }
    if (helloAt !== undefined && Date.now() - helloAt >= STABLE_CONNECTION_MS) spacingMs = FIRST_ATTEMPT_SPACING_MS;
    const waitMs = Math.max(0, started + spacingMs - Date.now());
    if (ending.failure) outage.failed(attempt, started, ending.failure, waitMs);
    else outage.lost(attempt + 1, waitMs);
    await waitOrWake(waitMs);
    spacingMs = Math.min(MAX_ATTEMPT_SPACING_MS, spacingMs * 2);
  }
}

// What --reconnect says while a host is away: the loss, the first failed
// attempts one by one, then a line now and then, and one when it is back.
function outageLog(host: string, budget: LogBudget) {
  // When the connection that had said hello was lost; since when nothing has connected.
  let lostAt: number | undefined;
  let since = 0;
  let failures = 0;
  let nextSummaryMs = FIRST_SUMMARY_MS;
  const starting = (at: number) => {
    since = at;
    failures = 0;
    nextSummaryMs = FIRST_SUMMARY_MS;
  };
  // A failure's line, after the remote side's own lines that came before it.
  const report = (failure: Failure, suffix = "") => {
    for (const line of failure.earlier) if (budget.allows("remote")) log(host, `remote: ${line}`);
    log(host, `${failure.message}${suffix}`);
  };
  const lost = (attempt: number, waitMs: number) => {
    lostAt = Date.now();
    starting(lostAt);
    log(host, `reconnecting${inSeconds(waitMs)} (attempt ${attempt})`);
  };
  const failed = (attempt: number, startedAt: number, failure: Failure, waitMs: number) => {
    if (failures === 0 && lostAt === undefined) starting(startedAt);
    failures += 1;
    const again = `again${inSeconds(waitMs) || " at once"}`;
    if (failures < FAILURES_LOGGED) return report(failure, ` (attempt ${attempt}, ${again})`);
    if (failures === FAILURES_LOGGED) return report(failure, ` (attempt ${attempt}, ${again}; from now on a line now and then)`);
    const elapsed = Date.now() - since;
    if (elapsed < nextSummaryMs) return;
    log(host, `still ${failure.unreachable ? "unreachable" : "not connected"} after ${duration(elapsed)} (attempt ${attempt}): ${failure.cause}`);
    while (nextSummaryMs <= elapsed) nextSummaryMs = Math.min(2 * nextSummaryMs, nextSummaryMs + MAX_SUMMARY_GAP_MS);
  };
  const back = () => {
    if (lostAt !== undefined) log(host, `reconnected after ${duration(Date.now() - lostAt)}`);
    lostAt = undefined;
    failures = 0;
  };
  return { report, lost, failed, back };
}

// " in 0.4 s", " in 4 s", or nothing for no wait at all.
function inSeconds(ms: number): string {
  if (ms === 0) return "";
  return ms < 1000 ? ` in ${(ms / 1000).toFixed(1)} s` : ` in ${Math.round(ms / 1000)} s`;
}

// 4.5 s, 45 s, 6 min 12 s, 2 h 5 min.
function duration(ms: number): string {
  const seconds = Math.round(ms / 1000);
  if (ms < 10_000) return `${(ms / 1000).toFixed(1)} s`;
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min${seconds % 60 ? ` ${seconds % 60} s` : ""}`;
  const minutes = Math.round(seconds / 60);
  return `${Math.floor(minutes / 60)} h${minutes % 60 ? ` ${minutes % 60} min` : ""}`;
}

// Sleep, freezes and network changes. A connection whose network went away
// while the desktop slept is otherwise found dead only after three silent
// keepalive intervals. Every WAKE_CHECK_MS the clocks and the desktop's
// interface addresses are looked at: the wall clock ahead of the monotonic
// one is a suspend (the monotonic clock stops while the machine sleeps), a
// check that came late is a freeze (a stopped process, a paused VM), another
// set of addresses a network change. Then every connection is probed at once,
// and one that does not answer within PROBE_MS is lost (reconnected under
// --reconnect), its ssh master and forwards with it; hosts waiting to
// reconnect try again at once.
const WAKE_CHECK_MS = 2000;
// Late or ahead by this much: more than a loaded machine's timers lag.
const WAKE_SLACK_MS = 5000;
const PROBE_MS = 3000;

export type WakeSample = { wallMs: number; monotonicMs: number; addresses: string };

/** What happened between two samples taken intervalMs apart, in words, or undefined for nothing. */
export function wakeReason(before: WakeSample, now: WakeSample, intervalMs: number): string | undefined {
  const wall = now.wallMs - before.wallMs;
  const monotonic = now.monotonicMs - before.monotonicMs;
  if (wall - monotonic > WAKE_SLACK_MS) return `the desktop slept (for ${duration(wall - monotonic)})`;
  if (monotonic - intervalMs > WAKE_SLACK_MS) return `this server was frozen (for ${duration(monotonic - intervalMs)})`;
  if (now.addresses !== before.addresses) return "the desktop's network changed";
  return undefined;
}

/** The desktop's own addresses, loopback left out, in one comparable string. */
export function desktopAddresses(interfaces: ReturnType<typeof networkInterfaces>): string {
  return Object.values(interfaces).flatMap((entries) => (entries ?? []).filter((entry) => !entry.internal).map((entry) => entry.address))
    .sort().join(" ");
}

// What a wake sets going: each live connection's probe, each waiting host's next attempt.
const onWake = new Set<(reason: string) => void>();

function watchForWakes(): void {
  const sample = (): WakeSample => ({ wallMs: Date.now(), monotonicMs: performance.now(), addresses: desktopAddresses(networkInterfaces()) });
  let last = sample();
  const timer = setInterval(() => {
    const now = sample();
    const reason = wakeReason(last, now, WAKE_CHECK_MS);
    last = now;
    if (!reason) return;
    process.stderr.write(`${new Date().toISOString()} ${reason}: checking every connection\n`);
    for (const wake of [...onWake]) wake(reason);
  }, WAKE_CHECK_MS);
  timer.unref();
}

// A ping that must be answered within PROBE_MS, sent on a wake once the
// client has said hello; any line from the client answers it.
function wakeProbe(greeted: () => boolean, send: (line: string) => void, lost: (why: string) => void) {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const probe = (reason: string) => {
    if (!greeted() || timer) return;
    send("ping");
    timer = setTimeout(() => lost(`no answer within ${PROBE_MS / 1000} s to a ping after ${reason.replace(/ \(.*\)$/, "")}: connection lost`), PROBE_MS);
  };
  onWake.add(probe);
  return {
    heard() {
      clearTimeout(timer);
      timer = undefined;
    },
    stop() {
      clearTimeout(timer);
      onWake.delete(probe);
    },
  };
}

// The wait before a host's next attempt, cut short by a wake.
function waitOrWake(ms: number): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      onWake.delete(done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    onWake.add(done);
  });
}

// The child whose stdin and stdout are the channel: ssh, or the client itself.
function startConnection(host: string, options: Options, controlPath?: string): ChildProcessWithoutNullStreams | string {
  let command: string;
  let args: string[];
  if (options.local) {
    const clientPath = join(dirname(fileURLToPath(import.meta.url)), "client.ts");
    if (options.remoteCommand) {
      [command, args] = ["sh", ["-c", options.remoteCommand]];
    } else if (existsSync(clientPath)) {
      [command, args] = [process.execPath, [...localRuntimeFlags(), clientPath]];
    } else {
      return `cannot start the local client: "${clientPath}" not found (--local needs client.ts beside server.ts)`;
    }
  } else {
    const alive = Math.max(1, Math.ceil(options.keepaliveSeconds));
    command = options.ssh;
    // As the master of its control socket, this ssh can add port forwards on
    // request; ControlPersist=no keeps a user's own setting from sending it to
    // the background, where it and its forwards would outlive this server.
    const master = controlPath ? ["-o", "ControlMaster=yes", "-o", `ControlPath=${controlPath}`, "-o", "ControlPersist=no"] : [];
    args = ["-T", "-o", `ServerAliveInterval=${alive}`, "-o", "ServerAliveCountMax=3",
      "-o", `ConnectTimeout=${CONNECT_TIMEOUT_SECONDS}`, ...master,
      "--", host, options.remoteCommand ?? DEFAULT_REMOTE_COMMAND];
  }
  return spawn(command, args, { stdio: ["pipe", "pipe", "pipe"] });
}

// The runtime that runs this script runs the local client: with the same
// loader flags (tsx), or with the client's own permissions under Deno.
function localRuntimeFlags(): string[] {
  if (!(process.versions as Record<string, string | undefined>).deno) return process.execArgv;
  return ["run", "--no-prompt", "--allow-read", "--allow-write", "--allow-net",
    "--allow-env=URLSERVER_SOCKET,XDG_RUNTIME_DIR,SSH_CONNECTION", "--allow-sys"];
}

// Each connection has a control socket of its own: a master killed without
// removing its socket cannot stand in the way of the next one.
let connections = 0;

// Resolves once the connection has ended, by whichever sign comes first, and
// has been torn down: timers stopped, ssh (or the local client) told to go.
// An ending after the client's hello is a lost connection, logged here; one
// before it is a failure to connect, which the caller logs (or not).
function serveConnection(host: string, options: Options, live: Set<ChildProcess>, state: HostState,
  onHello: () => void): Promise<Ending> {
  const controlPath = options.controlDirectory ? join(options.controlDirectory, String(++connections)) : undefined;
  const child = startConnection(host, options, controlPath);
  if (typeof child === "string") return Promise.resolve({ code: 69, final: true, failure: failureOf(child) });
  live.add(child);
  if (controlPath) forwardsAsked.set(controlPath, new Map());
  return new Promise((resolve) => {
    let ended = false;
    const finish = (ending: Ending, why?: string) => {
      if (ended) return;
      ended = true;
      if (why) log(host, `disconnected: ${why}`);
      session.stop();
      beforeHello.stop();
      probe.stop();
      if (controlPath) forwardsAsked.delete(controlPath);
      child.kill("SIGTERM");
      live.delete(child);
      resolve(ending);
    };
    const end = (code: number, why: string, final = false) => finish({ code, final }, why);
    const beforeHello = helloWait(host, options, state.budget, (failure, final) => finish({ code: 69, final, failure }), onHello);
    const send = writeWithBackpressure(child);
    const session = sessionState(host, options, send, end, state, { controlPath, live }, beforeHello);
    const probe = wakeProbe(() => beforeHello.greeted, send, (why) => end(69, why));
    const what = options.local ? "the client" : "ssh";
    child.on("error", (error) => {
      const why = `cannot run "${options.local ? "sh" : options.ssh}": ${error.message}`;
      return beforeHello.greeted ? end(69, why, true) : beforeHello.fail(why, true);
    });
    child.on("exit", (code, signal) => afterOwnSignals(() => beforeHello.greeted
      ? end(69, `${what} exited with ${signal ?? `status ${code}`}`) : beforeHello.exited(code, signal)));
    child.stdout.on("end", () => afterOwnSignals(() => beforeHello.greeted
      ? end(69, "the client's output ended (client or connection gone)") : beforeHello.outputEnded()));
    child.stdin.on("error", () => { /* the exit or end above reports it */ });
    // The remote side's own messages, and ssh's: bounded, budgeted, made safe for the terminal.
    readLines(child.stderr, MAX_REMOTE_LINE_BYTES, (line, length) => {
      const text = printable(cut(line, length, MAX_REMOTE_LINE_BYTES));
      if (!beforeHello.hold(text, "stderr")) showStderrLine(host, text, !options.local, controlPath, state.budget);
    }, true);
    child.stderr.on("end", () => afterOwnSignals(() => beforeHello.stderrEnded()));
    readLines(child.stdout, MAX_CHANNEL_LINE_BYTES, (line, length) => {
      probe.heard();
      if (length > MAX_CHANNEL_LINE_BYTES) session.onLine(line.subarray(0, LINE_HEAD_BYTES).toString(), `a ${length}-byte line is too long`);
      else decodeLine(line, session.onLine);
    });
    child.stdin.write(`hello ${PROTOCOL} keepalive=${options.keepaliveSeconds} schemes=${[...options.schemes].join(",")}` +
      ` desktop=${encodeURIComponent(options.name)} version=${VERSION} standby=1\n`);
  });
}

// Ctrl-C in the terminal signals ssh too (it is in the same process group,
// and must stay there to ask for a password): its end is looked at a moment
// later, so that a server being stopped says "stopping" and nothing else.
// Not a session of its own for ssh: /dev/tty would be gone for its prompts.
const OWN_SIGNAL_GRACE_MS = 100;

function afterOwnSignals(then: () => void): void {
  setTimeout(then, OWN_SIGNAL_GRACE_MS);
}

// ssh's own lines on its stderr, told from the remote side's by their words
// (the remote side could imitate them: all it gains is the label): OpenSSH's
// errors and notices, the function-prefixed ones included.
const SSH_OWN_LINE = new RegExp("^(bind \\[[^\\]]*\\]:\\d+: |channel_setup_fwd_listener_tcpip: |mux_[a-z_]+: |channel \\d+: |" +
  "client_loop: |Connection to \\S+ closed|Shared connection to \\S+ closed|Timeout, server \\S+ not responding|" +
  "Warning: Permanently added |Read from remote host |packet_write_wait: |Connection closed by |Transferred: )");
// Its words for a forward that could not listen, and the desktop port they name.
const FORWARD_FAILED = /^(?:bind \[[^\]]*\]:(\d+): |channel_setup_fwd_listener_tcpip: cannot listen to port: (\d+)$|mux_master_process_open_fwd: .*?forward (?:\[[^\]]*\]|[^\s:]*):(\d+)\b)/;
// Its line as it dies of a signal: said in the line about the connection's end.
const KILLED_BY_SIGNAL = /^Killed by signal \d+\.?$/;
// The desktop ports each live connection's master was asked to forward, and when.
const forwardsAsked = new Map<string, Map<number, number>>();

// A line of ssh's stderr after the hello: ssh's own ("ssh:"), or the remote
// side's ("remote:"). A forward that failed for a port this server asked for
// is not shown: the URL's own line says what became of it (another port, or
// a refusal), and a port moved as expected is no error.
function showStderrLine(host: string, text: string, viaSsh: boolean, controlPath: string | undefined, budget: LogBudget): void {
  if (viaSsh && KILLED_BY_SIGNAL.test(text)) return;
  const own = viaSsh && SSH_OWN_LINE.test(text);
  const failed = own && controlPath ? FORWARD_FAILED.exec(text) : null;
  const port = failed ? Number(failed[1] ?? failed[2] ?? failed[3]) : undefined;
  const askedAt = port === undefined ? undefined : forwardsAsked.get(controlPath!)?.get(port);
  if (askedAt !== undefined && Date.now() - askedAt < 2 * FORWARD_TIMEOUT_MS) return;
  if (budget.allows("remote")) log(host, `${own ? "ssh" : "remote"}: ${text}`);
}

// A connection that ended before the client's hello: the line that says why,
// and what a line about a long outage says of it; the remote side's lines
// that came before, to be shown first.
type Failure = { message: string; cause: string; unreachable: boolean; earlier: string[] };

function failureOf(message: string, earlier: string[] = []): Failure {
  return { message, cause: message, unreachable: false, earlier };
}

type HelloWait = ReturnType<typeof helloWait>;

// One connection until the client's hello. What the remote side says
// meanwhile (ssh's errors, a login banner) is held, the last few lines: shown
// when the hello comes, or folded into the one line that says why the
// connection failed if it ends first. After SHOW_HELD_AFTER_MS without a
// hello they are shown anyway, and later ones as they come: a slow start is
// never silent. An attempt is given HELLO_TIMEOUT_SECONDS in all.
function helloWait(host: string, options: Options, budget: LogBudget, fail: (failure: Failure, final: boolean) => void,
  onHello: () => void) {
  const held: string[] = [];
  let notKept = 0;
  let lastError = "";
  let greeted = false;
  let showing = false;
  // Ended, one way or the other: what comes later is not held, nor waited for.
  let stopped = false;
  let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  let stderrEnded = false;
  let showTimer: ReturnType<typeof setTimeout> | undefined;
  let lastWord: ReturnType<typeof setTimeout> | undefined;
  const failing = options.local ? "cannot start the client" : "cannot connect";
  const failWith = (why: string, final = false) => fail(failureOf(`${failing}: ${why}`, held.splice(0)), final);
  const helloTimer = setTimeout(() => failWith(`no hello from the client within ${HELLO_TIMEOUT_SECONDS} s`), HELLO_TIMEOUT_SECONDS * 1000);
  const stop = () => {
    stopped = true;
    clearTimeout(helloTimer);
    clearTimeout(showTimer);
    clearTimeout(lastWord);
  };
  const show = () => {
    if (notKept > 0 && budget.allows("remote")) log(host, `… ${notKept} earlier remote lines before the hello, not kept`);
    notKept = 0;
    for (const line of held.splice(0)) if (budget.allows("remote")) log(host, `${!options.local && SSH_OWN_LINE.test(line) ? "ssh" : "remote"}: ${line}`);
  };
  // ssh has exited, and said its last word (or has had the time to).
  const failExited = () => {
    clearTimeout(lastWord);
    const earlier = held.at(-1) === lastError ? held.slice(0, -1) : held.slice();
    fail(exitFailure(host, options, exit!.code, exit!.signal, lastError, earlier), false);
  };
  return {
    get greeted() { return greeted; },
    /** Whether a remote line is held here; if not, the caller shows it. */
    hold(text: string, from: "stderr" | "stdout"): boolean {
      if (from === "stderr") lastError = text;
      if (greeted || showing || stopped) return false;
      held.push(text);
      if (held.length > MAX_HELD_LINES) {
        held.shift();
        notKept += 1;
      }
      showTimer ??= setTimeout(() => {
        showing = true;
        show();
      }, SHOW_HELD_AFTER_MS);
      return true;
    },
    /** The client said hello: what was held is shown before the line that says so. */
    hello(connected: string) {
      greeted = true;
      stop();
      show();
      log(host, connected);
      onHello();
    },
    fail: failWith,
    exited(code: number | null, signal: NodeJS.Signals | null) {
      if (stopped) return;
      exit = { code, signal };
      clearTimeout(lastWord);
      if (stderrEnded) return failExited();
      lastWord = setTimeout(failExited, LAST_WORD_MS);
    },
    stderrEnded() {
      stderrEnded = true;
      if (exit && !stopped) failExited();
    },
    // Nothing can say hello now; ssh's exit, due any moment, says why.
    outputEnded() {
      if (!exit && !stopped) lastWord = setTimeout(() => failWith("the client's output ended before its hello"), LAST_WORD_MS);
    },
    stop,
  };
}

// Why a connection whose ssh (or local client) exited before the hello
// failed, in one line: ssh's own error (exit 255) or death by a signal, with
// its last message; client.ts missing where the default remote command looks
// for it; or the remote command's exit status and last message.
function exitFailure(host: string, options: Options, code: number | null, signal: NodeJS.Signals | null, said: string,
  earlier: string[]): Failure {
  const last = said ? `: ${said}` : "";
  if (options.local) return failureOf(`cannot start the client: it exited with ${signal ?? `status ${code}`}${last}`, earlier);
  if (signal || code === 255) {
    const ssh = signal ? `ssh ended by ${signal}` : "ssh exited 255";
    return { message: `cannot connect: ${ssh}${last}`, cause: said || ssh, unreachable: true, earlier: [] };
  }
  // sh's words for a missing script: dash's "cannot open", bash's "No such file", busybox's "can't open".
  const missing = /client\.ts/.test(said) && /no such file|not found|cannot open|can't open/i.test(said);
  if (missing && (code === 127 || code === 2) && (options.remoteCommand ?? DEFAULT_REMOTE_COMMAND) === DEFAULT_REMOTE_COMMAND) {
    return failureOf(`client.ts is not in the remote home directory: run "server.ts --install ${host}"`);
  }
  return failureOf(`cannot start the client: the remote command exited ${code}${last}`, earlier);
}

// Answers wait in ssh's stdin while the remote side is not reading them; then
// the channel is not read either until they drain, so that a host that never
// reads cannot make this server hold its answers without bound.
function writeWithBackpressure(child: ChildProcessWithoutNullStreams): (line: string) => void {
  let waiting = false;
  return (line) => {
    if (child.stdin.write(`${line}\n`) || waiting) return;
    waiting = true;
    child.stdout.pause();
    child.stdin.once("drain", () => {
      waiting = false;
      child.stdout.resume();
    });
  };
}

// Splits a stream into lines without ever holding more than maxBytes of one:
// of a longer line only the start is kept, and its whole length is counted.
// onLine gets the line (or its start) and the line's length in bytes. A last
// line without its newline is passed on only if lastLineUnended: text for
// people is, a message on the channel may have been cut short and is not.
function readLines(stream: Readable, maxBytes: number, onLine: (line: Buffer, length: number) => void, lastLineUnended = false): void {
  let buffered: Buffer = Buffer.alloc(0);
  let dropped = 0;
  stream.on("data", (chunk: Buffer) => {
    let start = 0;
    let newline;
    while ((newline = chunk.indexOf(10, start)) !== -1) {
      const piece = chunk.subarray(start, newline);
      const line = buffered.length ? Buffer.concat([buffered, piece]) : piece;
      const length = dropped + line.length;
      buffered = Buffer.alloc(0);
      dropped = 0;
      start = newline + 1;
      onLine(line, length);
    }
    // The start of the next line, copied so that the chunk can go.
    const rest = chunk.subarray(start);
    const room = Math.max(0, maxBytes - buffered.length);
    if (rest.length > 0 && room > 0) buffered = Buffer.concat([buffered, rest.subarray(0, room)]);
    dropped += Math.max(0, rest.length - room);
  });
  stream.on("end", () => {
    if (lastLineUnended && buffered.length > 0) onLine(buffered, dropped + buffered.length);
  });
}

// The start of a line that may have been longer, saying how much is missing.
function cut(line: Buffer, length: number, maxBytes: number): string {
  const shown = line.subarray(0, maxBytes).toString().replace(/\r$/, "");
  return length > maxBytes ? `${shown}… (${length - maxBytes} more bytes not shown)` : shown;
}

// ignoreBOM keeps a leading U+FEFF, so such a line is never taken for a message.
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

// Invalid UTF-8 would reach the opener altered (as U+FFFD), so it is refused.
function decodeLine(line: Buffer, onLine: (line: string, problem?: string) => void): void {
  let text;
  try {
    text = strictUtf8.decode(line);
  } catch {
    return onLine(line.toString(), "line is not valid UTF-8");
  }
  onLine(text.replace(/\r$/, ""));
}

// Another desktop's client has taken this host's socket path (its newest
// client wins): this one stands by, still connected, and still opens URLs
// from sessions that come from this desktop. Then, or it is the default again.
function roleChange(verb: string, words: string[]): string {
  if (verb === "default") return "the default desktop for this host again: its socket path leads here";
  const fields = new URLSearchParams(words.filter(Boolean).join("&"));
  const name = fields.get("desktop") ? `desktop ${quotedName(fields.get("desktop")!)}` : "another desktop";
  const address = fields.get("address") ? ` (from ${printable(fields.get("address")!.slice(0, 64))})` : "";
  return `standing by: ${name}${address} took over this host's socket path; sessions from this desktop still open here`;
}

function quotedName(name: string): string {
  return printable(JSON.stringify(name.slice(0, 100)));
}

function sessionState(host: string, options: Options, send: (line: string) => void,
  end: (code: number, why: string, final?: boolean) => void, state: HostState,
  master: { controlPath?: string; live: Set<ChildProcess> }, beforeHello: HelloWait) {
  const { keepaliveSeconds } = options;
  const { budget } = state;
  let greeted = false;
  let silenceTimer: ReturnType<typeof setTimeout> | undefined;
  const heard = () => {
    clearTimeout(silenceTimer);
    silenceTimer = setTimeout(() => end(69, `no word from the client for ${3 * keepaliveSeconds} s: connection lost`),
      3 * keepaliveSeconds * 1000);
  };
  const pinger = setInterval(() => send("ping"), keepaliveSeconds * 1000);
  const stop = () => {
    clearInterval(pinger);
    clearTimeout(silenceTimer);
  };

  const onLine = (line: string, problem?: string) => {
    const [verb, id, ...rest] = line.split(" ");
    if (!greeted) {
      if (verb !== "hello" || problem) {
        const text = `${printable(line)}${problem ? ` (${problem})` : ""}`;
        if (!beforeHello.hold(text, "stdout") && budget.allows("remote")) log(host, `remote: ${text}`);
        return;
      }
      if (id !== PROTOCOL) {
        return end(76, `the client speaks "${printable(id ?? "")}", this server speaks "${PROTOCOL}": ` +
          `run "server.ts --install ${host}" to update client.ts there`, true);
      }
      greeted = true;
      heard();
      const fields = new URLSearchParams(rest.join("&"));
      const field = (name: string) => printable(fields.get(name) ?? "?");
      const version = fields.get("version") === VERSION ? "" : `, client.ts version ${field("version")} (server.ts ${VERSION})`;
      return beforeHello.hello(`connected: client pid ${field("pid")} on ${field("runtime")}, socket "${field("socket")}"${version}`);
    }
    heard();
    if (verb === "open" && /^[0-9]{1,15}$/.test(id ?? "") && (rest.length > 0 || problem)) {
      const answer = (refusal?: string) => send(refusal === undefined ? `ok ${id}` : `error ${id} ${refusal}`);
      if (!problem) return openRequested(rest.join(" "), answer);
      if (budget.allows("refused")) log(host, `refused URL ${id}: ${problem}`);
      answer(problem.endsWith("too long") ? `URL longer than ${MAX_URL_BYTES} bytes` : problem);
    } else if ((verb === "standby" || verb === "default") && !problem) {
      if (budget.allows("remote")) log(host, roleChange(verb, [id, ...rest]));
    } else if ((verb !== "pong" || problem) && budget.allows("ignored")) {
      log(host, `ignoring a message the client should not send: ${printable(line.slice(0, 200))}${problem ? ` (${problem})` : ""}`);
    }
  };

  // answer() with no reason means opened.
  const openRequested = (url: string, answer: (refusal?: string) => void) => {
    const refusal = refusalReason(url, options.schemes);
    if (refusal) return refuse(url, refusal, answer);
    // Through --local the remote host is this one: its loopback is ours.
    const loopback = options.local ? undefined : loopbackTargets(url);
    // Never opened against the desktop's own loopback: forwarded, or refused.
    const privileged = loopback && [loopback.direct, ...loopback.redirects].find((target) => target && target.port < MIN_FORWARDED_PORT);
    if (privileged) {
      return refuse(url, `loopback URL: its port ${privileged.port} is on the remote host, and ports below ${MIN_FORWARDED_PORT} are not forwarded`, answer);
    }
    if (loopback && !forwarder) {
      return refuse(url, `loopback URL: its port is on the remote host, and ${options.noForwardReason}`, answer);
    }
    if (!state.takeToken()) return refuse(url, rateLimited, answer, "rate limited");
    if (!loopback || !forwarder) return openUrl(url, host, options, answer);
    forwarder(url, loopback).then((forwarded) => {
      if ("refusal" in forwarded) return refuse(url, forwarded.refusal, answer);
      openUrl(forwarded.url, host, options, answer, forwarded.note, url);
    }, crash);
  };

  const rateLimited = `rate limited: more than ${options.burst} URLs at once, or more than ${options.rate} per second after them, ` +
    "from this host (server.ts --burst and --rate set these)";

  // Refusals are answered one by one, and logged so up to the host's budget.
  const refuse = (url: string, refusal: string, answer: (refusal?: string) => void, decision = "refused") => {
    if (budget.allows("refused")) {
      log(host, `refused ${quoted(shortened(url))}: ${refusal}`);
      audit(options, host, url, decision, decision === "refused" ? refusal : undefined);
    }
    answer(refusal);
  };

  // This connection's forwards; none under --no-forward-loopback.
  const forwarder = master.controlPath ? loopbackForwarder(options.ssh, master.controlPath, host, master.live) : undefined;
  return { onLine, stop };
}

// The server trusts nothing from the remote host: every check is made here again.
function refusalReason(url: string, schemes: Set<string>): string | undefined {
  if (Buffer.byteLength(url) > MAX_URL_BYTES) return `URL longer than ${MAX_URL_BYTES} bytes`;
  if (/[\p{Cc}\p{Cf}\s]/u.test(url)) return "URL contains whitespace or control characters";
  // An opener must never read the URL as one of its options.
  if (url.startsWith("-")) return `URL starts with "-"`;
  let parsed;
  try {
    parsed = new URL(url);
  } catch {
    return "not a URL";
  }
  const scheme = parsed.protocol.slice(0, -1);
  if (!schemes.has(scheme)) return `scheme "${scheme}" is not allowed`;
  return undefined;
}

// Where a URL to the remote host's loopback leads, read from the host and
// port that the WHATWG parser has made canonical: 127.1, 0x7f.1 and
// 2130706433 are all 127.0.0.1 by then, [::ffff:127.0.0.2] is [::ffff:7f00:2].
export type LoopbackTarget = {
  /** The URL's port: the one on the remote host's loopback. */
  port: number;
  /** Where on the desktop the browser will connect: both families for a name. */
  desktop: string[];
  /** What the forward connects to on the remote host: the URL's own address, or localhost. */
  remote: string;
};

/** A loopback URL: its own host and port, and the loopback targets of its redirect parameters. */
export type LoopbackUrl = { direct?: LoopbackTarget; redirects: LoopbackTarget[] };

// Where a provider sends the browser once the user has signed in: OAuth 2.0's
// redirect_uri (redirect_url with some providers), OAuth 1.0a's oauth_callback.
const REDIRECT_PARAMETERS = ["redirect_uri", "redirect_url", "oauth_callback"];
const IPV4_LOOPBACK = /^127(\.(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])){3}$/;
// ::ffff:127.x.y.z, as the parser writes it: a connection to it is one to 127.x.y.z.
const MAPPED_IPV4_LOOPBACK = /^\[::ffff:7f([0-9a-f]{2}):([0-9a-f]{1,4})\]$/;

/** The remote loopback targets a URL leads the browser to, or undefined for a URL that leads to none. */
export function loopbackTargets(url: string): LoopbackUrl | undefined {
  const parsed = new URL(url);
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") return undefined;
  const redirects: LoopbackTarget[] = [];
  for (const value of REDIRECT_PARAMETERS.flatMap((name) => parsed.searchParams.getAll(name))) {
    const target = URL.canParse(value) ? loopbackTarget(new URL(value)) : undefined;
    if (target && !redirects.some((known) => JSON.stringify(known) === JSON.stringify(target))) redirects.push(target);
  }
  const direct = loopbackTarget(parsed);
  if (!direct && redirects.length === 0) return undefined;
  return direct ? { direct, redirects } : { redirects };
}

// Only the port and which loopback address are taken from the URL, both
// checked here: nothing else from the remote side becomes an ssh argument.
function loopbackTarget(parsed: URL): LoopbackTarget | undefined {
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") return undefined;
  const host = parsed.hostname;
  const name = host.endsWith(".") ? host.slice(0, -1) : host;
  const mapped = MAPPED_IPV4_LOOPBACK.exec(host);
  const ipv4 = mapped ? `127.${Number.parseInt(mapped[1], 16)}.${Number.parseInt(mapped[2], 16) >> 8}.${Number.parseInt(mapped[2], 16) & 255}` : host;
  // A name is resolved by the browser (Chromium and Firefox answer localhost
  // and *.localhost themselves) to both families, often ::1 first, and by sshd
  // on the remote side the same way. The unspecified addresses reach the
  // loopback of their family, and their program listens on every address.
  const where = name === "localhost" || name.endsWith(".localhost") ? { desktop: ["127.0.0.1", "[::1]"], remote: "localhost" }
    : host === "0.0.0.0" || host === "[::ffff:0:0]" ? { desktop: ["127.0.0.1"], remote: "localhost" }
    : host === "[::]" ? { desktop: ["[::1]"], remote: "localhost" }
    : host === "[::1]" ? { desktop: ["[::1]"], remote: "[::1]" }
    : IPV4_LOOPBACK.test(ipv4) ? { desktop: [ipv4], remote: ipv4 }
    : undefined;
  if (!where) return undefined;
  const port = parsed.port === "" ? (parsed.protocol === "https:" ? 443 : 80) : Number.parseInt(parsed.port, 10);
  if (!Number.isInteger(port) || port < 0 || port > 65535) return undefined;
  return { port, ...where };
}

type Forwarded = { url: string; note: string } | { refusal: string };

// The forwards of one connection's ssh master, asked for one URL at a time so
// that each decision sees the forwards before it; they last as long as the
// connection. A desktop port taken by something else is a refusal, except for
// a URL that itself leads to the remote loopback and carries no loopback
// redirect target (a provider redirects to exactly the registered port): that
// one is given another desktop port, as are later URLs to the same remote port.
function loopbackForwarder(ssh: string, controlPath: string, host: string, live: Set<ChildProcess>) {
  // Desktop "address:port" of each listener of this master, and the remote port it leads to.
  const listening = new Map<string, number>();
  // Remote port, and the other desktop port a direct URL to it was given.
  const moved = new Map<number, number>();
  let queue: Promise<unknown> = Promise.resolve();

  const ask = (operation: "forward" | "cancel", address: string, desktopPort: number, target: LoopbackTarget) =>
    askMaster(ssh, controlPath, host, operation, `${address}:${desktopPort}:${target.remote}:${target.port}`, desktopPort, live);

  // A desktop port that leads to the target, already forwarded or forwarded now.
  const place = async (target: LoopbackTarget, movable: boolean): Promise<{ desktopPort: number; made: boolean } | { refusal: string }> => {
    const { port } = target;
    // Without ::1 on the desktop a browser connects to a name over IPv4 only.
    const addresses = hasIpv6Loopback() ? target.desktop : target.desktop.filter((address) => address !== "[::1]");
    if (addresses.length === 0) return { refusal: `cannot forward desktop port ${port}: the desktop has no IPv6 loopback` };
    const last = movable ? Math.min(65535, port + MAX_PORT_MOVE) : port;
    const candidates = new Set([(movable && moved.get(port)) || port, ...Array.from({ length: last - port }, (_, i) => port + 1 + i)]);
    for (const desktopPort of candidates) {
      const at = (address: string) => `${address}:${desktopPort}`;
      // This master's own listener there, leading to another remote port: in use.
      if (addresses.some((address) => listening.has(at(address)) && listening.get(at(address)) !== port)) continue;
      const missing = addresses.filter((address) => !listening.has(at(address)));
      if (missing.length === 0) return { desktopPort, made: false };
      const ports = new Set([...listening.keys()].map((key) => key.slice(key.lastIndexOf(":") + 1)));
      if (!ports.has(String(desktopPort)) && ports.size >= MAX_FORWARDED_PORTS) return { refusal: "too many forwarded ports for this connection" };
      const made: string[] = [];
      let answer: MasterAnswer = "done";
      for (const address of missing) {
        answer = await ask("forward", address, desktopPort, target);
        if (answer !== "done") break;
        listening.set(at(address), port);
        made.push(address);
      }
      if (answer === "done") {
        if (desktopPort !== port) moved.set(port, desktopPort);
        return { desktopPort, made: true };
      }
      // A port counts as free only if it is free on every address: the half
      // made is undone, or a browser could reach the desktop's own program.
      for (const address of made) {
        if (await ask("cancel", address, desktopPort, target) === "done") listening.delete(at(address));
      }
      if (answer !== "in use") return answer;
    }
    return { refusal: last > port ? `desktop port ${port} is in use, and so is every desktop port up to ${last}` : `desktop port ${port} is in use` };
  };

  const forward = async (url: string, { direct, redirects }: LoopbackUrl): Promise<Forwarded> => {
    const movable = direct !== undefined && redirects.length === 0 && withPort(url, direct.port) !== undefined;
    let opened = url;
    const notes: string[] = [];
    // A redirect back to the URL's own host and port needs no second forward, nor a second word in the log.
    const targets = direct ? [direct, ...redirects.filter((target) => JSON.stringify(target) !== JSON.stringify(direct))] : redirects;
    for (const target of targets) {
      const placed = await place(target, movable);
      if ("refusal" in placed) return placed;
      const { desktopPort, made } = placed;
      if (desktopPort === target.port) {
        notes.push(`, port ${desktopPort} ${made ? "forwarded" : "already forwarded"}`);
        continue;
      }
      const rewritten = withPort(url, desktopPort);
      if (!rewritten) return { refusal: `desktop port ${target.port} is in use, and the URL's port cannot be rewritten` };
      opened = rewritten;
      notes.push(made ? `, desktop port ${target.port} is in use: forwarded desktop port ${desktopPort} to remote port ${target.port}`
        : `, desktop port ${desktopPort} already forwarded to remote port ${target.port}`);
    }
    return { url: opened, note: notes.join("") };
  };

  return (url: string, loopback: LoopbackUrl): Promise<Forwarded> => {
    const forwarded = queue.then(() => forward(url, loopback));
    queue = forwarded.catch(() => undefined);
    return forwarded;
  };
}

/**
 * The URL with its port, and nothing else, changed: the port's digits are
 * replaced in the text as sent, so the rest reaches the opener byte for byte.
 * Undefined unless the result parses to the same URL with that port.
 */
export function withPort(url: string, port: number): string | undefined {
  // Scheme, slashes, then the authority up to the path, query or fragment
  // (a backslash ends it too in http and https).
  const authority = /^[A-Za-z][A-Za-z0-9+.-]*:[/\\]*([^/\\?#]*)/.exec(url);
  if (!authority) return undefined;
  const end = authority[0].length;
  const start = end - authority[1].length;
  const colon = authority[1].lastIndexOf(":");
  // The port follows the last colon, after any user info and IPv6 address.
  if (colon <= authority[1].lastIndexOf("@") || colon < authority[1].lastIndexOf("]")) return undefined;
  if (!/^[0-9]+$/.test(authority[1].slice(colon + 1))) return undefined;
  const rewritten = `${url.slice(0, start + colon + 1)}${port}${url.slice(end)}`;
  const expected = new URL(url);
  expected.port = String(port);
  return URL.canParse(rewritten) && new URL(rewritten).href === expected.href ? rewritten : undefined;
}

// Whether the desktop has ::1, where a browser may connect for a name.
function hasIpv6Loopback(): boolean {
  return Object.values(networkInterfaces()).some((entries) => entries?.some((entry) => entry.internal && entry.address === "::1"));
}

type MasterAnswer = "done" | "in use" | { refusal: string };

// Asks this connection's ssh master, through its control socket, to add or
// cancel a forward (-L ADDRESS:DESKTOP_PORT:REMOTE_ADDRESS:REMOTE_PORT) from
// the desktop's loopback to the remote host's. The forward ends with the
// master. A master that cannot listen there says "Port forwarding failed".
function askMaster(ssh: string, controlPath: string, host: string, operation: "forward" | "cancel", spec: string,
  desktopPort: number, live: Set<ChildProcess>): Promise<MasterAnswer> {
  const child = spawn(ssh, ["-S", controlPath, "-O", operation, "-L", spec, "--", host], { stdio: ["ignore", "ignore", "pipe"] });
  forwardsAsked.get(controlPath)?.set(desktopPort, Date.now());
  live.add(child);
  let said = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk: string) => { said = (said + chunk).slice(-1000); });
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      resolve({ refusal: `forwarding desktop port ${desktopPort} took longer than ${FORWARD_TIMEOUT_MS / 1000} s` });
    }, FORWARD_TIMEOUT_MS);
    const done = (answer: MasterAnswer) => {
      clearTimeout(timer);
      live.delete(child);
      resolve(answer);
    };
    child.on("error", (error) => done({ refusal: `cannot run "${ssh}" to forward desktop port ${desktopPort}: ${error.message}` }));
    child.on("close", (code, signal) => {
      if (code === 0) return done("done");
      if (/Port forwarding failed/.test(said)) return done("in use");
      const why = printable(said.trim().split("\n").pop() ?? "") || `ssh exited with ${signal ?? `status ${code}`}`;
      done({ refusal: `cannot forward desktop port ${desktopPort}: ${why}` });
    });
  });
}

// A token bucket: a burst at once, then a steady rate; rate 0 means no limit.
function rateLimiter(perSecond: number, burst: number): () => boolean {
  let tokens = burst;
  let last = Date.now();
  return () => {
    if (perSecond === 0) return true;
    const now = Date.now();
    tokens = Math.min(burst, tokens + ((now - last) / 1000) * perSecond);
    last = now;
    if (tokens < 1) return false;
    tokens -= 1;
    return true;
  };
}

// The opener gets the URL byte for byte as its last argument, with no shell.
// It is detached: some openers live as long as the browser, and Ctrl-C here
// must not reach the browser. The URL counts as opened when the opener exits
// 0, or is still running after OPENER_WAIT_MS (a browser that stays in the
// foreground); an opener that fails sooner (an xdg-open that finds no browser
// exits 3) is a refusal the sender hears of, with the opener's last line.
// One line per URL: the opener's exit is said only when it tells something.
// asSent is the URL as the remote sent it, when its port was moved.
function openUrl(url: string, host: string, options: Options, answer: (refusal?: string) => void, note = "", asSent = url): void {
  const [program, ...args] = options.browser;
  const child = spawn(program, [...args, url], { detached: true, stdio: ["ignore", "ignore", "pipe"] });
  const said = openerWords(child);
  let decided = false;
  const decide = (refusal?: string, how = "") => {
    if (decided) return;
    decided = true;
    clearTimeout(waiting);
    if (refusal) {
      log(host, `cannot open ${quoted(url)}: ${refusal}${note}`);
      audit(options, host, asSent, "refused", refusal);
      return answer(refusal);
    }
    log(host, `opened ${quoted(url)} with ${program} (pid ${child.pid}${how})${note}`);
    audit(options, host, asSent, "opened", undefined, url);
    if (options.notifier) notify(options.notifier, host, url);
    answer();
  };
  const waiting = setTimeout(() => decide(undefined, `, still running after ${OPENER_WAIT_MS / 1000} s`), OPENER_WAIT_MS);
  child.on("error", (error) => decide(`the desktop cannot run its opener "${program}" (${error.message}): ${CHOOSE_OPENER}`));
  child.on("exit", (code, signal) => {
    const status = signal ?? `exit ${code}`;
    if (code === 0) return decide(undefined, ", exit 0");
    // A browser that failed after it counted as opened: worth a line of its own.
    if (decided) return said.last().then((last) => log(host, `${program} (pid ${child.pid}) exited with ${signal ?? `status ${code}`}${last ? `: ${last}` : ""}`));
    clearTimeout(waiting);
    said.last().then((last) => decide(`the desktop's opener "${program}" failed (${status}${last ? `: ${last}` : ""}): ${CHOOSE_OPENER}`));
  });
  child.unref();
}

const CHOOSE_OPENER = "choose one with server.ts --browser PROGRAM or URLSERVER_BROWSER";
// Of the opener's stderr only its last line is kept, this much of it, escaped.
const MAX_OPENER_LINE_BYTES = 200;
// How long an opener that has exited is given to say its last word: the
// browser it started may hold its stderr open for good.
const OPENER_LAST_WORD_MS = 200;

// The opener's stderr, read to its end however long a browser holds it, so
// that nothing it writes there fails; only the last line is kept.
function openerWords(child: ChildProcess): { last: () => Promise<string> } {
  let last = "";
  let ended = false;
  const stderr = child.stderr!;
  readLines(stderr, MAX_OPENER_LINE_BYTES, (line, length) => {
    const text = printable(cut(line, length, MAX_OPENER_LINE_BYTES)).trim();
    if (text) last = text;
  }, true);
  stderr.on("end", () => { ended = true; });
  // The pipe must not keep the server from exiting when a browser holds it.
  (stderr as { unref?: () => void }).unref?.();
  return {
    last: () => new Promise((resolve) => {
      if (ended) return resolve(last);
      const timer = setTimeout(() => resolve(last), OPENER_LAST_WORD_MS);
      stderr.once("end", () => {
        clearTimeout(timer);
        resolve(last);
      });
    }),
  };
}

function notify(notifier: string[], host: string, url: string): void {
  const [program, ...args] = notifier;
  const child = spawn(program, [...args, `URL from ${host}`, url], { detached: true, stdio: "ignore" });
  child.on("error", (error) => log(host, `cannot notify: ${error.message}`));
  child.unref();
}

// The log holds every URL, tokens included: made owner-only (0600, whatever
// the umask); an existing one that others may read is used, with a warning.
function prepareAuditLog(path: string): boolean {
  try {
    appendFileSync(path, "", { mode: 0o600 });
    const mode = statSync(path).mode;
    if ((mode & 0o044) !== 0) {
      process.stderr.write(`${PROGRAM}: warning: the --log file "${path}" is readable by others (mode ${(mode & 0o777).toString(8)}): ` +
        `it holds every URL, tokens included (chmod 600 it)\n`);
    }
    return true;
  } catch (error) {
    process.stderr.write(`${PROGRAM}: cannot write the --log file "${path}": ${(error as Error).message}\n`);
    return false;
  }
}

// One JSON line per URL, appended: the file is never truncated or rewritten.
// A URL opened on another desktop port than it named has that one as "opened".
function audit(options: Options, host: string, url: string, decision: string, reason?: string, opened = url): void {
  appendAuditEntry(options, host, { url, decision, ...(reason ? { reason } : {}), ...(opened !== url ? { opened } : {}) });
}

// Each entry stays one line under any line splitter: JSON.stringify leaves
// U+0085, U+2028, U+2029, C1 and bidi controls raw, printable() does not.
function appendAuditEntry(options: Options, host: string, fields: Record<string, unknown>): void {
  if (!options.auditLog) return;
  try {
    appendFileSync(options.auditLog, `${printable(JSON.stringify({ time: new Date().toISOString(), host, ...fields }))}\n`, { mode: 0o600 });
  } catch (error) {
    log(host, `cannot write the --log file "${options.auditLog}": ${(error as Error).message}`);
  }
}

// Per host, what the remote side can make happen at will (refusals, ignored
// messages, its stderr lines) is logged one by one up to LOG_BUDGET per window,
// then counted, and the count said once, on the terminal and in --log, when
// the window ends. While a flood goes on, a window follows the last at once
// with nothing to spend: one summary per window, until a window's time passes
// in quiet. URLs opened never count against it: each is logged.
type Noisy = "refused" | "ignored" | "remote";
type LogBudget = { allows: (kind: Noisy) => boolean; flush: () => void };
const NOISY_NAMES: Record<Noisy, string> = { refused: "refused URLs", ignored: "ignored messages", remote: "remote lines" };

function logBudget(host: string, options: Options): LogBudget {
  let left = 0;
  let windowStart = 0;
  let window: ReturnType<typeof setTimeout> | undefined;
  let floodEndedAt = -Infinity;
  const suppressed = new Map<Noisy, number>();
  const flush = () => {
    clearTimeout(window);
    window = undefined;
    if (suppressed.size === 0) return;
    floodEndedAt = Date.now();
    const seconds = Math.ceil((floodEndedAt - windowStart) / 1000);
    const counts = [...suppressed].map(([kind, count]) => `${count.toLocaleString("en-US")} more ${NOISY_NAMES[kind]}`);
    log(host, `… and ${counts.join(", ")} in the last ${seconds} s, not logged one by one`);
    const urls = suppressed.get("refused");
    if (urls) appendAuditEntry(options, host, { decision: "suppressed", count: urls, seconds });
    suppressed.clear();
  };
  const allows = (kind: Noisy) => {
    if (!window) {
      windowStart = Date.now();
      window = setTimeout(flush, LOG_WINDOW_MS);
      left = windowStart - floodEndedAt < LOG_WINDOW_MS ? 0 : LOG_BUDGET;
    }
    if (left > 0) {
      left -= 1;
      return true;
    }
    suppressed.set(kind, (suppressed.get(kind) ?? 0) + 1);
    return false;
  };
  return { allows, flush };
}

// What the remote side sent, safe on a terminal and inside JSON: every
// control, format, line and paragraph separator character (C0, C1, bidi
// controls, U+0085, U+2028, U+2029) and lone surrogate becomes \uXXXX.
function printable(text: string): string {
  return text.replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]/gu, (character) =>
    Array.from({ length: character.length }, (_, i) => `\\u${character.charCodeAt(i).toString(16).padStart(4, "0")}`).join(""));
}

function quoted(text: string): string {
  return printable(JSON.stringify(text));
}

// A refused URL is shown by its start: it may be up to 8 KiB of anything.
function shortened(url: string): string {
  return url.length > 200 ? `${url.slice(0, 200)}…` : url;
}

function log(host: string, message: string): void {
  process.stderr.write(`${new Date().toISOString()} ${host}: ${message}\n`);
}

// Run as a program; a test may import this file for its pure functions instead.
if (import.meta.main ?? realpathSync(process.argv[1] ?? ".") === fileURLToPath(import.meta.url)) main(process.argv.slice(2)).then(exitNow, crash);
