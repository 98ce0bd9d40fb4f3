#!/bin/sh
":" //; s=$0; [ -L "$s" ] && s=$(readlink -f "$s"); case $s in /*) ;; *) s=$PWD/$s; esac
":" //; x() { for r; do case $r in /*) [ -f "$r" ] && [ -x "$r" ] && return;; */*) ;; ?*) command -v "$r" >/dev/null && return;; esac; done; false; }
":" //; p=$HOME/.local/share/urlserver/runtime; [ -d "$p" ] && { m=; for r in /lib/ld-musl-*; do [ -e "$r" ] && m=-musl; done; p=$p/$(uname -s)-$(uname -m)$m/bin; }
":" //; x deno "$HOME/.deno/bin/deno" "$HOME/.local/bin/deno" "$p/deno" && exec "$r" run --no-prompt --no-config --allow-run --allow-read --allow-write --allow-env --allow-sys --allow-net "$s" "$@"
":" //; export URLSERVER_CWD="$PWD"; cd / || exit 70
":" //; x bun "$HOME/.bun/bin/bun" "$HOME/.local/bin/bun" "$p/bun" && exec "$r" "$s" -- "$@"
":" //; b=0; N=; for r in "${NVM_DIR:-$HOME/.nvm}"/versions/node/v*/bin/node; do v=${r%/bin/node}; v=${v##*/v}; M=${v%%.*}; v=${v#*.}; m=${v%.*}; v=${v#*.}
":" //;   case $m in ?) m=00$m;; ??) m=0$m;; esac; case $v in ?) v=00$v;; ??) v=0$v;; esac; [ "$M$m$v" -gt $b ] 2>/dev/null && b=$M$m$v && N=$r; done
":" //; w="--disable-warning=ExperimentalWarning --disable-warning=MODULE_TYPELESS_PACKAGE_JSON"; n=
":" //; export NODE_COMPILE_CACHE="${NODE_COMPILE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/urlserver}"
":" //; for c in node "$HOME/.local/bin/node" "$N" "$HOME/.volta/bin/node" "$p/node"; do x "$c" && v=$("$r" --version 2>/dev/null) || continue; n=${n:-$r}
":" //;   case $v in v2[4-9]*|v[3-9]?.*|v23.[6-9]*|v23.[1-9]?.*|v22.1[89]*|v22.[2-9]?.*) exec "$r" $w "$s" "$@";; esac
":" //;   case $v in v23.*|v22.[6-9].*|v22.1?.*) exec "$r" $w --experimental-strip-types "$s" "$@";; esac; done
":" //; [ "$n" ] && for t in "$(command -v tsx)" "$HOME/.local/bin/tsx" "$HOME"/.npm/_npx/*/node_modules/.bin/tsx; do
":" //;   t=$(readlink -f "$t") && [ -f "${t%/*}/loader.mjs" ] && exec "$n" --import "${t%/*}/loader.mjs" "$s" "$@"; done
":" //; [ "$n" ] && x "${n%/*}/npx" npx && case $n in /*) PATH=${n%/*}:$PATH; esac && exec "$r" --yes tsx "$s" "$@"
":" //; echo "server.ts: no runtime found on PATH or in ~/.deno/bin, ~/.bun/bin, ~/.local/bin, ~/.nvm/versions/node, ~/.volta/bin, ~/.local/share/urlserver/runtime: needs Deno 2, Bun 1, Node 22.6+, or Node 20+ with tsx or npx" >&2; exit 69
// server.ts: the desktop end of urlserver. It runs `ssh HOST` with client.ts
// as the remote command and opens every URL the client forwards with this
// desktop's opener, until the connection ends.
//
//   ./server.ts HOST                             the first runtime found (above)
//   npx tsx server.ts HOST                       Node 20+ with tsx
//   node server.ts HOST                          Node 22.18+ (type stripping)
//   deno run --no-prompt --no-config --allow-run --allow-read --allow-write --allow-env --allow-sys --allow-net server.ts HOST
//   bun server.ts HOST
//   ./server.ts --install HOST                   put client.ts, send.ts on HOST,
//                                                and a runtime where it has none
//   ./server.ts --uninstall HOST                 take them away again
//   ./server.ts --service HOST                   always on: a user service
//
// Exit codes: 64 usage, 69 every host's client or connection went away (or
// --install or --uninstall failed on a HOST), 70 internal error, 73 cannot
// write the --log file (or --service's, or will not replace one it did not
// write), 76 protocol mismatch, 128+N ended by signal N (130 Ctrl-C, 143
// TERM, 129 HUP, 141 stderr closed).
//
// Map, in the order a URL travels (each section opens with a banner):
//   Options            the command line and environment, the desktop's platform
//   Installing         --install, provisioning a runtime, --uninstall (set-up)
//   --service          a systemd user unit or launchd agent (set-up)
//   Control dirs       the ssh masters' private sockets, the start-up sweep
//   Hosts              a connection per HOST, --reconnect and its outage log
//   Sleep              suspend, freeze and network change: probe every host
//   One connection     ssh started, the client's hello awaited, why it ended
//   The channel        backpressure, bounded lines, decoding
//   The session        the client's messages: ping, standby, open ID URL
//   Checks             scheme, length, characters: every URL again
//   Loopback URLs      what leads to the remote loopback; the forwarder that
//                      listens here and relays through the ssh master
//   Opening            rate limit, the opener and its verdict, notifications
//   The log            --log entries, the log budget, printable()

import { spawn } from "node:child_process";
import type { ChildProcess, ChildProcessWithoutNullStreams } from "node:child_process";
import {
  accessSync, appendFileSync, chmodSync, closeSync, constants, createReadStream, existsSync, lstatSync, mkdirSync, mkdtempSync, openSync,
  readFileSync, readSync, readdirSync, readlinkSync, realpathSync, renameSync, rmSync, statSync, writeFileSync,
} from "node:fs";
import { lookup } from "node:dns";
import { createRequire } from "node:module";
import { connect, createServer } from "node:net";
import type { Server, Socket } from "node:net";
import { homedir, hostname, networkInterfaces, release, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { createGunzip } from "node:zlib";

const PROGRAM = "server";
const USAGE = `Usage: server.ts [options] HOST...
       server.ts --install [--runtime NAME | --runtime-file FILE] HOST...
       server.ts --uninstall [--ssh PROGRAM] HOST...
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
  --forward-idle SECONDS how long a forwarded port is kept without a
                         connection, 1 to 86400; a callback's port goes once
                         its callback is served (default: 600); kill -USR2
                         logs the live forwards
  --local                run client.ts from beside this script on this
                         machine, without ssh (one HOST, used as a label)
  --install              instead of serving: put client.ts and send.ts from
                         beside this script in each HOST's home over ssh
                         (never over a file that is not theirs), then say
                         which runtime send.ts starts with there, and how fast;
                         where it has none it can use, provision one in
                         ~/.local/share/urlserver/runtime there (the release
                         fetched and verified by npm, cached in
                         ~/.cache/urlserver/runtimes here)
  --runtime NAME         with --install: provision this runtime, bun (the
                         default), node or deno, even where one is found
  --runtime-file FILE    with --install: provision the runtime in FILE, a
                         release as npm packs it (npm pack @oven/bun-linux-x64)
                         or a .tar.gz with bin/NAME in it; for a desktop
                         without registry access
  --uninstall            instead of serving: remove from each HOST what
                         --install put there (never a file that is not ours)
  --service              instead of serving: write a user service (systemd on
                         Linux, launchd on macOS) that runs this server with
                         --reconnect and the other options given, with the
                         desktop session, restarted on failure; print how to
                         start it and see its log. With --remove, remove it
  -h, --help             show this help
  --version              print the version, and the runtime running this and its path

Environment: URLSERVER_SSH, URLSERVER_REMOTE_COMMAND, URLSERVER_BROWSER as
above; the remote side uses URLSERVER_SOCKET and XDG_RUNTIME_DIR.

Examples:
  npx tsx server.ts --install build1       set a host up (again after upgrades)
  npx tsx server.ts --uninstall build1     and take it all away again
  npx tsx server.ts build1 build2          serve two hosts from one terminal
  npx tsx server.ts --reconnect laptop-vm  survive sleep and network changes
  npx tsx server.ts --service build1       always on, from the next login
  npx tsx server.ts --allow-scheme mailto --log ~/urls.log mail.example.org

Exit codes: 0 --help, --version, --install, --uninstall or --service done; 64
usage; 69 every host's client or connection went away, or --install or
--uninstall failed on a HOST; 70 internal error; 73 cannot write the --log
file (or the --service file, or will not replace one it did not write); 76
protocol mismatch (one HOST); 128+N ended by signal N (130 Ctrl-C, 131
Ctrl-\\, 143 TERM, 129 HUP, 141 stderr closed)
`;

// BEGIN exit stanza: identical in server.ts, client.ts and send.ts (test/stanza.test.ts)
// The release, kept here so that the three copies and package.json must agree.
const VERSION = "0.4.0";
// The runtime the first lines picked, how it reads TypeScript and where it
// was found (PATH, a user's own install, the one --install provisioned):
// --version says it (server.ts --install reports it from each host), so does the hello.
function runtimeName(): string {
  const versions = process.versions as Record<string, string | undefined>;
  const from = ` from ${process.execPath}`;
  if (versions.deno) return `deno/${versions.deno}${from}`;
  if (versions.bun) return `bun/${versions.bun}${from}`;
  const flags = process.execArgv.join(" ");
  const how = process.env.npm_lifecycle_event === "npx" ? " through npx tsx"
    : flags.includes("tsx") ? " with tsx"
    : flags.includes("--experimental-strip-types") ? " with --experimental-strip-types" : "";
  return `node/${versions.node}${how}${from}`;
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
// The first lines start every runtime but Deno in "/": Bun reads bunfig.toml
// (preloads), .env and tsconfig.json (paths) from the directory it starts in,
// npx runs its node_modules/.bin/tsx, and $BROWSER runs in whatever directory
// a program stands in, a freshly cloned repository as often as not. Once
// running, back there, so that relative paths mean what the user meant.
const startedIn = (process.versions as Record<string, string | undefined>).deno ? undefined : process.env.URLSERVER_CWD;
if (startedIn !== undefined) {
  delete process.env.URLSERVER_CWD;
  try { process.chdir(startedIn); } catch { /* gone or not enterable: relative paths start at "/" */ }
}
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
// How long a forward is kept without a connection through it, by default
// and at most (--forward-idle).
const DEFAULT_FORWARD_IDLE_SECONDS = 600;
const MAX_FORWARD_IDLE_SECONDS = 86_400;
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

// ============================================================================
// Options: what the command line and the environment ask for
// ============================================================================

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
  uninstall: boolean;
  /** With --install: the runtime to provision, and the release file to take it from. */
  runtime?: RuntimeName;
  runtimeFile?: string;
  /** --service: write (or with remove, remove) the service that runs this server with args. */
  service?: { remove: boolean; args: string[] };
  /** Why loopback URLs' ports are not forwarded, if they are not. */
  noForwardReason?: string;
  /** How long a forward is kept with no connection through it. */
  forwardIdleSeconds: number;
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
  if (options.uninstall) return uninstallHosts(options);
  if (options.service) return setUpService(options.service);
  if (options.auditLog && !prepareAuditLog(options.auditLog)) return 73;
  if (options.noForwardReason === DESKTOP.noMultiplexing && DESKTOP.noMultiplexing && !options.local) {
    process.stderr.write(`${PROGRAM}: loopback URLs will be refused, not forwarded: ${DESKTOP.noMultiplexing}\n`);
  }
  if (!options.noForwardReason && !options.local) {
    await removeLeftoverControlDirectories();
    const directory = makeControlDirectory();
    if (typeof directory === "string") {
      // Pushed first, so run last: after the masters have been told to go.
      cleanups.push(() => rmSync(directory, { recursive: true, force: true }));
      options.controlDirectory = directory;
    } else {
      options.noForwardReason = "there is no safe directory here for ssh's control sockets";
      process.stderr.write(`${PROGRAM}: loopback URLs will be refused, not forwarded: ${directory.refusal}\n`);
    }
  }
  const live = new Set<ChildProcess>();
  cleanups.push(() => live.forEach((child) => child.kill("SIGTERM")));
  // SIGUSR2, not SIGUSR1: Deno and Node start their inspector, a debugger
  // on 127.0.0.1:9229 that any local user could drive, on SIGUSR1.
  process.on("SIGUSR2", logLiveForwards);
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
      uninstall: { type: "boolean", default: false },
      runtime: { type: "string" },
      "runtime-file": { type: "string" },
      service: { type: "boolean", default: false },
      remove: { type: "boolean", default: false },
      "no-forward-loopback": { type: "boolean", default: false },
      "forward-idle": { type: "string", default: String(DEFAULT_FORWARD_IDLE_SECONDS) },
      help: { type: "boolean", short: "h" },
      version: { type: "boolean" },
    },
  });
  if (values.help) return "help";
  if (values.version) return "version";
  if (values.remove && !values.service) throw new Error("--remove goes with --service: server.ts --service --remove");
  if (values.service && (values.install || values.uninstall)) {
    throw new Error(`--service and --${values.install ? "install" : "uninstall"} are two steps: run --${values.install ? "install" : "uninstall"} alone`);
  }
  if (values.service && values.remove && positionals.length > 0) throw new Error("--service --remove takes no HOST");
  if (positionals.length === 0 && !values.remove) throw new Error("missing HOST");
  for (const host of positionals) {
    // ssh would read it as an option, whatever "--" says about the rest.
    if (host.startsWith("-") || host === "") throw new Error(`refusing HOST "${host}": it would be read as an ssh option`);
  }
  if (new Set(positionals).size !== positionals.length) throw new Error("a HOST is named twice");
  if (values.local && positionals.length > 1) throw new Error("--local serves one HOST: its clients would share one socket");
  if (values.local && values.install) throw new Error("--install works over ssh: --local has no remote home to install into");
  if (values.local && values.uninstall) throw new Error("--uninstall works over ssh: --local has no remote home to uninstall from");
  if (values.install && values.uninstall) throw new Error("--install and --uninstall together: choose one");
  const { runtime, runtimeFile } = runtimeChoice(values.runtime, values["runtime-file"], values.install);
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
    uninstall: values.uninstall,
    runtime,
    runtimeFile,
    service: values.service ? { remove: values.remove, args: serviceArguments(argv) } : undefined,
    noForwardReason: values["no-forward-loopback"] ? "--no-forward-loopback is set" : DESKTOP.noMultiplexing,
    forwardIdleSeconds: forwardIdleSeconds(values["forward-idle"]),
  };
}

// --runtime NAME and --runtime-file FILE, which go with --install; the
// runtime a file holds is said by --runtime or else by the file's name.
function runtimeChoice(name: string | undefined, file: string | undefined, install: boolean): { runtime?: RuntimeName; runtimeFile?: string } {
  if (name === undefined && file === undefined) return {};
  if (!install) throw new Error(`${name !== undefined ? "--runtime" : "--runtime-file"} goes with --install`);
  if (name !== undefined && !RUNTIME_NAMES.includes(name as RuntimeName)) {
    throw new Error(`--runtime needs one of ${RUNTIME_NAMES.join(", ")}, not "${name}"`);
  }
  if (file === undefined) return { runtime: name as RuntimeName };
  const head = Buffer.alloc(2);
  try {
    if (!statSync(file).isFile()) throw new Error("not a regular file");
    const fd = openSync(file, "r");
    try {
      readSync(fd, head, 0, 2, 0);
    } finally {
      closeSync(fd);
    }
  } catch (error) {
    throw new Error(`--runtime-file: cannot read "${file}": ${(error as Error).message}`);
  }
  const named = RUNTIME_NAMES.filter((runtime) => new RegExp(`(^|[^a-z])${runtime}([^a-z]|$)`).test(file.split(/[\\/]/).pop()!));
  const runtime = (name as RuntimeName | undefined) ?? (named.length === 1 ? named[0] : undefined);
  if (!runtime) throw new Error(`--runtime-file: which runtime "${file}" holds is not in its name: say it with --runtime NAME`);
  // What the host's tar unpacks: gzip's magic number, as a .tgz or .tar.gz starts.
  if (head[0] !== 0x1f || head[1] !== 0x8b) throw new Error(`--runtime-file: "${file}" is not a .tgz or .tar.gz`);
  return { runtime, runtimeFile: file };
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

function forwardIdleSeconds(text: string): number {
  const seconds = Number(text);
  if (text.trim() === "" || !(seconds >= 1 && seconds <= MAX_FORWARD_IDLE_SECONDS)) {
    throw new Error(`--forward-idle needs a number of seconds from 1 to ${MAX_FORWARD_IDLE_SECONDS}, not "${text}"`);
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

// ============================================================================
// Installing: --install and --uninstall
//
// One ssh run per host, whose shell reads a script on its stdin (one
// connection: one password prompt at most), one host at a time so that
// prompts do not interleave. --install places client.ts and send.ts in the
// login directory, asks send.ts which runtime it starts with there and, on a
// host with none it can use, provisions one: the release for the host's OS,
// CPU and C library, fetched and verified by npm on the desktop, kept in a
// desktop cache, streamed over the same connection and unpacked by the host's
// own tar. --uninstall removes what --install placed, and nothing else.
// ============================================================================

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
    const problems = await installOn(host, options, script);
    // Problems may quote what the host said: shown only through printable().
    for (const problem of problems) process.stderr.write(`${PROGRAM}: cannot install on "${host}": ${printable(problem)}\n`);
    failed ||= problems.length > 0;
  }
  return failed ? 69 : 0;
}

// Lines the scripts print start with INSTALL_TAG; anything else (a shell
// start-up file that talks) is not ours. Files go where ssh starts the shell,
// which is where the default remote command finds client.ts. A file there
// that is not a urlserver script (by its header line), a symbolic link or not
// a regular file stops the install on that host before anything is written.
// Each file is written to a temporary name made by mktemp (never one another
// user could have planted a link at), made executable, then renamed over the
// old one. Then send.ts --version runs through its own first lines, once to
// warm caches (npx's download, Node's compile cache), once timed with the
// remote clock where `date` has %N. The whole script is one { } group, which
// the shell reads to its end before running any of it: a connection cut
// short leaves a syntax error, never a half-written file installed. Only
// once it runs does the desktop answer its "want" line, so nothing of the
// answer (a line, then the release) can be in the shell's own read buffer.
const INSTALL_TAG = "urlserver-install ";
const MAX_INSTALL_LINES = 100;
// Each step of the exchange (the login, each step of the script, the runtime
// starting, the transfer moving on) is given as long as a connection's hello;
// the steps are few, so the whole exchange is bounded too, and a host that
// stalls is given up, its line said, and the next host tried. The desktop's
// own download is not the host's step, and is bounded by npm.
const INSTALL_STEP_SECONDS = HELLO_TIMEOUT_SECONDS;

// Where --install provisions a runtime on a host, per platform so that a home
// shared by hosts of different kinds works for each: the first lines look for
// bin/bun, bin/node or bin/deno there. MARKER says the directory is ours.
const REMOTE_RUNTIMES = "$HOME/.local/share/urlserver/runtime";
const RUNTIME_MARKER = ".urlserver-runtime";

export type RuntimeName = "bun" | "node" | "deno";
const RUNTIME_NAMES: RuntimeName[] = ["bun", "node", "deno"];
// The releases --install provisions, pinned: the ones the suite and the bench ran on.
export const RUNTIME_RELEASES: Record<RuntimeName, string> = { bun: "1.4.5", node: "24.22.3", deno: "2.9.6" };
// Chosen by measurement (test/bench-provision.ts; README, Provisioning a
// runtime): the fastest start of send.ts, the smallest idle client, and the
// only one with a release for every kind of host (musl, x86-64 without AVX2,
// macOS).
export const DEFAULT_RUNTIME: RuntimeName = "bun";

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
tmp=
incoming=
trap 'rm -f "$tmp"; [ -z "$incoming" ] || rm -rf "$incoming"' EXIT
trap 'exit 1' HUP INT TERM PIPE
put() {
  tmp=
  tmp=$(mktemp ".$1.urlserver-install.XXXXXX") || { say failed cannot create a temporary file in "$PWD"; exit 1; }
  if ! { cat > "$tmp" && chmod 755 "$tmp"; }; then say failed cannot write "$PWD/$tmp"; exit 1; fi
  if [ ! -e "$1" ]; then how=installed; elif cmp -s "$tmp" "$1"; then how=unchanged; else how=updated; fi
  mv -f "$tmp" "$1" || { say failed cannot rename "$PWD/$tmp" to "$1"; exit 1; }
  say placed "$1" "$how"
}
probe() {
  "$PWD/send.ts" --version </dev/null >/dev/null 2>&1
  say starting
  t0=$(date +%s%N 2>/dev/null)
  said=$("$PWD/send.ts" --version </dev/null 2>&1)
  status=$?
  t1=$(date +%s%N 2>/dev/null)
  say ran "$status" "$t0" "$t1"
  printf '%s\\n' "$said" | sed 's/^/${INSTALL_TAG}said /'
}
${files.join("")}probe
${PROVISION_SCRIPT}}
`;
}

// The runtime part of the install script. It says the host's platform (the
// directory the first lines look in: uname -s, uname -m, -musl where musl's
// loader is; and what picks the build: for x86-64 whether the CPU has AVX2)
// and what is in that directory now, then waits for the desktop's answer:
// "none", or "send NAME FORM MARKER" followed by the release (gzip'd or not),
// which tar unpacks into a directory made by mktemp beside the final one;
// the runtime's binary alone is moved into bin/ there with the marker, and
// the whole renamed into place. An interruption leaves the old runtime or
// none, never half of one; a directory there that lacks the marker is left
// alone. Leftovers of an install killed outright are swept after an hour.
const PROVISION_SCRIPT = `musl= libc=glibc cpu=any
for f in /lib/ld-musl-*; do [ -e "$f" ] && musl=-musl libc=musl; done
case $(uname -m) in x86_64|amd64)
  if [ -r /proc/cpuinfo ]; then flags=$(grep -m 1 '^flags' /proc/cpuinfo); else flags=$(sysctl -n machdep.cpu.leaf7_features 2>/dev/null); fi
  case " $flags " in *[\\ \\	][Aa][Vv][Xx]2[\\ \\	]*) cpu=avx2;; *) cpu=baseline;; esac;;
esac
command -v gzip >/dev/null 2>&1 && gz=gzip || gz=no-gzip
platform="$(uname -s)-$(uname -m)$musl"
runtimes="${REMOTE_RUNTIMES}"
target="$runtimes/$platform"
if [ -L "$target" ] || { [ -e "$target" ] && [ ! -d "$target" ]; }; then state=foreign
elif [ ! -d "$target" ]; then state=none
elif [ -f "$target/${RUNTIME_MARKER}" ] && [ ! -L "$target/${RUNTIME_MARKER}" ]; then state="ours $(head -n 1 "$target/${RUNTIME_MARKER}")"
else state=foreign
fi
say platform "$(uname -s)" "$(uname -m)" "$libc" "$cpu" "$gz" "$platform"
say runtime-dir "$target"
say runtime-state "$state"
say want
read -r verb name form marker || exit 0
[ "$verb" = send ] || exit 0
[ "$state" != foreign ] || { say failed "$target" is not a runtime urlserver provisioned: left alone; exit 1; }
for d in "$HOME/.local/share/urlserver" "$runtimes"; do
  [ ! -L "$d" ] || { say failed "$d" is a symbolic link: left alone; exit 1; }
done
mkdir -p "$runtimes" || { say failed cannot create "$runtimes"; exit 1; }
find "$runtimes" -maxdepth 1 -name '.incoming.*' -mmin +60 -exec rm -rf {} + 2>/dev/null
incoming=$(mktemp -d "$runtimes/.incoming.XXXXXX") || { say failed cannot create a temporary directory in "$runtimes"; exit 1; }
z=; [ "$form" = tgz ] && z=z
(cd "$incoming" && tar -x\${z}f -) || { say failed cannot unpack the release with tar in "$incoming"; exit 1; }
bin=
for f in "$incoming"/*/bin/"$name" "$incoming"/*/"$name" "$incoming"/bin/"$name" "$incoming/$name"; do
  if [ -f "$f" ] && [ ! -L "$f" ]; then bin=$f; break; fi
done
[ -n "$bin" ] || { say failed the release holds no "$name" program; exit 1; }
mkdir "$incoming/.runtime" "$incoming/.runtime/bin" && mv "$bin" "$incoming/.runtime/bin/$name" &&
  chmod 755 "$incoming/.runtime/bin/$name" && printf '%s\\n' "$marker" > "$incoming/.runtime/${RUNTIME_MARKER}" ||
  { say failed cannot arrange the runtime in "$incoming"; exit 1; }
if [ -d "$target" ]; then mv "$target" "$incoming/.old" || { say failed cannot move the old runtime "$target" aside; exit 1; }; fi
mv "$incoming/.runtime" "$target" || { say failed cannot rename "$incoming/.runtime" to "$target"; exit 1; }
say unpacked "$target"
probe
`;

// Runs the script on host; prints what was done, returns what went wrong.
async function installOn(host: string, options: Options, script: string): Promise<string[]> {
  let provisioning: Promise<Provision> | undefined;
  const session = remoteShell(host, options, (fields, lines) => {
    if (fields === "want" && !provisioning) provisioning = answerWant(host, options, lines, session);
  });
  session.stdin.write(script);
  const ended = await session.ended;
  const provision = await provisioning;
  if (ended.failure) return [ended.failure];
  return installReport(host, session.lines, ended.code, ended.lastError, session.arrivalMs(), provision);
}

type RemoteShell = {
  stdin: NodeJS.WritableStream;
  lines: string[];
  watchdog: ReturnType<typeof installWatchdog>;
  /** For a `date` without %N: the time between the "starting" and "ran" lines arriving here. */
  arrivalMs: () => number;
  ended: Promise<{ code: number | null; lastError: string; failure?: string }>;
};

// `sh -s` on host over ssh, bounded as serving is and by the watchdog. What
// the host says is read bounded, as on any connection: the tagged lines, at
// most MAX_INSTALL_LINES, are kept as they came (shown only through printable()).
function remoteShell(host: string, options: Options, onLine: (fields: string, lines: string[]) => void): RemoteShell {
  const child = spawn(options.ssh, [...sshOptions(options), "--", host, "sh -s"], { stdio: ["pipe", "pipe", "pipe"] });
  const stop = () => child.kill("SIGTERM");
  cleanups.push(stop);
  let silence = "";
  const watchdog = installWatchdog(() => {
    silence = `no answer within ${INSTALL_STEP_SECONDS} s`;
    stop();
  });
  const lines: string[] = [];
  let startedAt = 0;
  let ranAt = 0;
  readLines(child.stdout, MAX_REMOTE_LINE_BYTES, (bytes) => {
    const line = bytes.toString().replace(/\r$/, "");
    if (!line.startsWith(INSTALL_TAG) || lines.length >= MAX_INSTALL_LINES) return;
    const fields = line.slice(INSTALL_TAG.length);
    watchdog.reset();
    if (fields === "starting") startedAt = performance.now();
    if (fields.startsWith("ran ")) ranAt = performance.now();
    lines.push(fields);
    onLine(fields, lines);
  });
  let stderr = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk: string) => { stderr = (stderr + chunk).slice(-4096); });
  // An ssh that fails to connect stops reading: its exit status says why.
  child.stdin.on("error", () => {});
  const ended = new Promise<{ code: number | null; lastError: string; failure?: string }>((resolve) => {
    const done = () => {
      watchdog.stop();
      if (cleanups.includes(stop)) cleanups.splice(cleanups.indexOf(stop), 1);
    };
    child.on("error", (error) => {
      done();
      resolve({ code: null, lastError: "", failure: `cannot run "${options.ssh}": ${error.message}` });
    });
    child.on("close", (code) => {
      done();
      const lastError = printable(stderr.trim().split("\n").pop() ?? "");
      resolve({ code, lastError, failure: silence ? `${silence}${lastError ? `: ${lastError}` : ""}` : undefined });
    });
  });
  return { stdin: child.stdin, lines, watchdog, arrivalMs: () => ranAt - startedAt, ended };
}

// The same bounds as serving: ssh's ConnectTimeout and keepalive.
function sshOptions(options: Options): string[] {
  const alive = Math.max(1, Math.ceil(options.keepaliveSeconds));
  return ["-T", "-o", `ServerAliveInterval=${alive}`, "-o", "ServerAliveCountMax=3", "-o", `ConnectTimeout=${CONNECT_TIMEOUT_SECONDS}`];
}

// Fires once the host has said nothing new for INSTALL_STEP_SECONDS; reset at
// each line of the script's and as the transfer moves on, paused while the
// desktop itself is busy.
function installWatchdog(onSilence: () => void) {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const watchdog = {
    reset: () => {
      clearTimeout(timer);
      timer = setTimeout(onSilence, INSTALL_STEP_SECONDS * 1000);
    },
    stop: () => clearTimeout(timer),
  };
  watchdog.reset();
  return watchdog;
}

function lastField(lines: string[], key: string): string | undefined {
  return lines.findLast((line) => line.startsWith(`${key} `))?.slice(key.length + 1);
}

// ---------------------------------------------------------------------------
// Provisioning a runtime
// ---------------------------------------------------------------------------

/** What the host reported of itself, for picking a release. */
export type HostPlatform = { system: string; machine: string; libc: string; cpu: string; gzip: boolean; name: string };

/** What provisioning did, for the report: a line to show, or why there is no runtime. */
type Provision = { note?: string; problem?: string };

/** A release file on the desktop to send, with what npm downloads it as; and how it is named to the user and on the host. */
type Release = { runtime: RuntimeName; file: string; spec?: string; label: string; marker: string; source: string };

// Answers the script's "want": "none", or "send ..." and the release. Never
// throws: what went wrong is the report's.
async function answerWant(host: string, options: Options, lines: string[], session: RemoteShell): Promise<Provision> {
  const finish = (provision: Provision) => {
    session.stdin.end("none\n");
    return provision;
  };
  const works = lastField(lines, "ran")?.split(" ")[0] === "0";
  if (works && !options.runtime && !options.runtimeFile) return finish({});
  const platform = hostPlatform(lastField(lines, "platform"));
  if (!platform) return finish({ problem: "the host did not say its platform" });
  let release: Release;
  try {
    release = pickRelease(options, platform);
  } catch (error) {
    return finish({ problem: (error as Error).message });
  }
  const state = lastField(lines, "runtime-state");
  if (works && state === `ours ${release.marker}`) return finish({ note: `${release.label} was there already` });
  const where = lastField(lines, "runtime-dir") ?? REMOTE_RUNTIMES;
  if (state === "foreign") return finish({ problem: `${quoted(where)} is not a runtime urlserver provisioned: left alone` });
  if (release.spec && !existsSync(release.file)) {
    // The desktop's own step: the host waits, and its silence is not held against it.
    session.watchdog.stop();
    try {
      await downloadRelease(release.spec, release.file);
      release.source = "downloaded, verified by npm";
    } catch (error) {
      return finish({ problem: (error as Error).message });
    } finally {
      session.watchdog.reset();
    }
  }
  session.stdin.write(`send ${release.runtime} ${platform.gzip ? "tgz" : "tar"} ${release.marker}\n`);
  try {
    const size = await sendRelease(host, release, session, !platform.gzip);
    return { note: `provisioned ${release.label} in ${quoted(where)} (${megabytes(size)} MB, ${release.source})` };
  } catch (error) {
    return { problem: `the transfer of ${release.label} broke off: ${(error as Error).message}` };
  }
}

export function hostPlatform(text: string | undefined): HostPlatform | undefined {
  const [system, machine, libc, cpu, gzip, name, ...rest] = text?.split(" ") ?? [];
  if (!name || rest.length > 0) return undefined;
  return { system, machine, libc, cpu, gzip: gzip === "gzip", name };
}

/** The npm package with a runtime's release for that platform, if there is one. */
export function runtimePackage(runtime: RuntimeName, host: HostPlatform): string | undefined {
  const os = ({ Linux: "linux", Darwin: "darwin" } as Record<string, string | undefined>)[host.system];
  const arch = ({ x86_64: "x64", amd64: "x64", aarch64: "arm64", arm64: "arm64" } as Record<string, string | undefined>)[host.machine];
  if (!os || !arch) return undefined;
  const musl = host.libc === "musl";
  if (runtime === "bun") {
    const baseline = arch === "x64" && host.cpu !== "avx2";
    return `@oven/bun-${os}-${arch === "arm64" ? "aarch64" : "x64"}${musl ? "-musl" : ""}${baseline ? "-baseline" : ""}`;
  }
  // Neither publishes a musl build on npm; Node's packages there stop at Linux.
  if (musl) return undefined;
  if (runtime === "node") return os === "linux" ? `node-linux-${arch}` : undefined;
  return `@deno/${os}-${arch}${os === "linux" ? "-glibc" : ""}`;
}

// The release to send: --runtime-file as it is, or the pinned release of the
// chosen runtime, from the desktop's cache (spec: what npm downloads when it
// is not there yet).
function pickRelease(options: Options, platform: HostPlatform): Release {
  const runtime = options.runtime ?? DEFAULT_RUNTIME;
  if (options.runtimeFile) {
    const name = options.runtimeFile.split(/[\\/]/).pop()!;
    return { runtime, file: options.runtimeFile, label: `${runtime} from ${quoted(name)}`,
      marker: `${runtime} file ${name.replace(/\s/g, "_")}`, source: "from --runtime-file" };
  }
  const version = RUNTIME_RELEASES[runtime];
  const name = runtimePackage(runtime, platform);
  if (!name) {
    const others = RUNTIME_NAMES.filter((other) => runtimePackage(other, platform));
    throw new Error(`${runtime} has no release for ${platform.name} on npm` +
      (others.length ? `: --runtime ${others.join(" or ")} has` : ": --runtime-file FILE takes one of your own"));
  }
  const file = join(runtimeCache(), `${name.replace(/^@/, "").replace("/", "-")}-${version}.tgz`);
  return { runtime, file, spec: `${name}@${version}`, label: `${runtime} ${version}`, marker: `${runtime} ${name}@${version}`, source: "from the cache" };
}

// The desktop's cache of releases: private to this user, as a download in
// progress there is what will run on the user's hosts.
function runtimeCache(): string {
  const base = process.env.XDG_CACHE_HOME || join(homedir(), ".cache");
  const dir = join(base, "urlserver", "runtimes");
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const stat = lstatSync(dir);
  if (!stat.isDirectory() || (process.getuid && stat.uid !== process.getuid())) {
    throw new Error(`the runtime cache ${quoted(dir)} is not a directory of this user's`);
  }
  if ((stat.mode & 0o077) !== 0) chmodSync(dir, 0o700);
  return dir;
}

// npm fetches the release and checks it against the registry's integrity
// hash, with the user's registry, proxy and certificate settings; into a
// directory of its own (its own npm cache too, whose growth is the progress),
// run from there so that no project's .npmrc applies; renamed into the cache
// once whole.
async function downloadRelease(spec: string, file: string): Promise<void> {
  const work = mkdtempSync(join(dirname(file), ".download-"));
  const remove = () => rmSync(work, { recursive: true, force: true });
  cleanups.push(remove);
  try {
    const filename = await npmPack(spec, work);
    renameSync(join(work, filename), file);
  } finally {
    cleanups.splice(cleanups.indexOf(remove), 1);
    remove();
  }
}

function npmPack(spec: string, work: string): Promise<string> {
  const args = ["pack", spec, "--pack-destination", work, "--cache", join(work, "npm"), "--json", "--no-update-notifier"];
  const windows = process.platform === "win32";
  const child = spawn("npm", windows ? args.map((arg) => `"${arg}"`) : args, { cwd: work, shell: windows, stdio: ["ignore", "pipe", "pipe"] });
  const stop = () => child.kill("SIGTERM");
  cleanups.push(stop);
  const progress = progressLine(`${PROGRAM}: downloading ${spec}`, `${PROGRAM}: downloaded ${spec}`);
  const downloads = join(work, "npm", "_cacache", "tmp");
  const poll = setInterval(() => progress.update(directoryBytes(downloads)), 250);
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => { stdout += chunk; });
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => { stderr = (stderr + chunk).slice(-4096); });
  return new Promise((resolve, reject) => {
    const done = () => {
      clearInterval(poll);
      cleanups.splice(cleanups.indexOf(stop), 1);
    };
    child.on("error", (error) => {
      done();
      progress.abandon();
      reject(new Error(`cannot run npm, which downloads ${spec}: ${error.message} (--runtime-file FILE takes a release you have)`));
    });
    child.on("close", (code) => {
      done();
      let answer: { filename?: string; size?: number; error?: { code?: string; summary?: string } } | undefined;
      try {
        const parsed = JSON.parse(stdout);
        answer = Array.isArray(parsed) ? parsed[0] : parsed;
      } catch { /* said on stderr */ }
      if (code === 0 && answer?.filename) {
        progress.done(answer.size ?? 0);
        resolve(answer.filename);
        return;
      }
      progress.abandon();
      const why = answer?.error ? `${answer.error.code ?? "error"}: ${answer.error.summary ?? ""}` : stderr.trim().split("\n").pop() ?? "";
      reject(new Error(`cannot download ${spec} with npm (exit ${code ?? "on a signal"}): ${printable(why.split("\n")[0]).slice(0, 400)}`));
    });
  });
}

function directoryBytes(dir: string): number {
  try {
    return readdirSync(dir).reduce((sum, name) => sum + statSync(join(dir, name)).size, 0);
  } catch {
    return 0;
  }
}

// Streams the release into the script's tar; resolves to the bytes sent.
async function sendRelease(host: string, release: Release, session: RemoteShell, gunzip: boolean): Promise<number> {
  const total = statSync(release.file).size;
  const progress = progressLine(`${host}: sending ${release.label}`, `${host}: sent ${release.label}`, total);
  let sent = 0;
  const source = createReadStream(release.file);
  source.on("data", (chunk) => {
    sent += chunk.length;
    progress.update(sent);
    session.watchdog.reset();
  });
  try {
    // A host without gzip gets the tar itself, unpacked here.
    if (gunzip) await pipeline(source, createGunzip(), session.stdin);
    else await pipeline(source, session.stdin);
  } catch (error) {
    progress.abandon();
    throw new Error(`${megabytes(sent)} of ${megabytes(total)} MB sent: ${(error as Error).message}`);
  }
  progress.done(sent);
  return sent;
}

// Bytes, total when known, and rate: on a terminal one line on stderr updated
// in place; otherwise one line at the end.
function progressLine(doing: string, did: string, total?: number) {
  const started = performance.now();
  const terminal = Boolean(process.stderr.isTTY);
  let shownAt = 0;
  let shown = false;
  const rate = (bytes: number) => `${megabytes(bytes / Math.max(0.001, (performance.now() - started) / 1000))} MB/s`;
  return {
    update: (bytes: number) => {
      if (!terminal || performance.now() - shownAt < 200) return;
      shownAt = performance.now();
      shown = true;
      process.stderr.write(`\r${doing}: ${megabytes(bytes)}${total ? ` of ${megabytes(total)}` : ""} MB, ${rate(bytes)}\x1b[K`);
    },
    done: (bytes: number) => {
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      process.stderr.write(`${terminal ? "\r" : ""}${did}: ${megabytes(bytes)} MB in ${seconds} s, ${rate(bytes)}${terminal ? "\x1b[K" : ""}\n`);
    },
    abandon: () => {
      if (shown) process.stderr.write("\n");
    },
  };
}

function megabytes(bytes: number): string {
  return (bytes / 1e6).toFixed(1);
}

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

function installReport(host: string, lines: string[], code: number | null, lastError: string, arrivalMs: number,
  provision: Provision = {}): string[] {
  const field = (key: string) => lines.find((line) => line.startsWith(`${key} `))?.slice(key.length + 1);
  const dir = field("dir") ?? "~";
  const foreign = lines.filter((line) => line.startsWith("foreign "));
  if (foreign.length > 0) {
    return foreign.map((line) => {
      const [, name, ...why] = line.split(" ");
      return printable(`"${dir}/${name}" ${why.join(" ")}: left alone, nothing installed there`);
    });
  }
  const failure = lastField(lines, "failed");
  if (failure) return [`${printable(failure)}${lastError ? `: ${lastError}` : ""}`];
  const placed = lines.filter((line) => line.startsWith("placed ")).map((line) => printable(line.slice(7)));
  if (placed.length < 2) {
    const why = code === 255 ? "ssh exited 255" : `the remote shell exited ${code ?? "on a signal"}`;
    return [`${why}${lastError ? `: ${lastError}` : ""}`];
  }
  const ran = lastField(lines, "ran")?.split(" ") ?? [];
  // What send.ts said the last time it ran.
  const said = lines.slice(Math.max(0, lines.lastIndexOf("starting"))).filter((line) => line.startsWith("said "))
    .map((line) => printable(line.slice(5))).filter(Boolean);
  if (ran[0] !== "0") {
    const runtime = provision.problem ? `; no runtime provisioned: ${provision.problem}`
      : provision.note ? `; not with the runtime ${provision.note} either` : "";
    return [printable(`client.ts and send.ts are in "${dir}", but send.ts does not start there (exit ${ran[0] ?? "unknown"}): `) +
      (said.at(-1) ?? (lastError || "no message")) + runtime];
  }
  const [start, end] = ran.slice(1);
  const ms = /^\d+$/.test(start ?? "") && /^\d+$/.test(end ?? "") ? Number(BigInt(end) - BigInt(start)) / 1e6 : arrivalMs;
  const runtime = / on (.*)$/.exec(said.at(-1) ?? "")?.[1] ?? "an unknown runtime";
  const hint = runtime.includes("npx") ? "; it starts faster with a runtime of its own: server.ts --install --runtime bun HOST" : "";
  process.stdout.write([
    `${host}: ${placed.join(", ")}, in ${quoted(dir)}`,
    ...(provision.note ? [`${host}: ${provision.note}`] : []),
    `${host}: send.ts starts in ${Math.round(ms)} ms on ${runtime}${hint}`,
    ...browserAdvice(dir, field("home")).map((line) => `${host}: ${line}`),
  ].map((line) => `${line}\n`).join(""));
  // Asked for by name, a runtime that could not be provisioned is a failure, if a runtime already there is not.
  return provision.problem ? [`no runtime provisioned: ${provision.problem}`] : [];
}

// The BROWSER line to paste there. The login directory is the remote's word:
// quoted for the shell whatever it holds, or not offered at all if it cannot
// be shown on one line as it is.
function browserAdvice(dir: string, home: string | undefined): string[] {
  if (dir !== printable(dir)) {
    return [`the login directory there, ${quoted(dir)}, has control characters: set BROWSER to its send.ts by hand`];
  }
  const value = dir === home ? '"$HOME/send.ts"' : shellQuoted(`${dir}/send.ts`);
  return [
    `for the programs there, set BROWSER in a start-up file of the shell there: export BROWSER=${value}`,
    "in ~/.profile it reaches login shells; in ~/.bashrc, interactive shells, and `ssh HOST COMMAND` only above its interactive guard (case $- in ...)",
  ];
}

// One word for a POSIX shell, whatever the text: single quotes, each ' in it written '\''.
function shellQuoted(text: string): string {
  return /^[\w@%+=:,./-]+$/.test(text) ? text : `'${text.replaceAll("'", "'\\''")}'`;
}

// ---------------------------------------------------------------------------
// --uninstall
// ---------------------------------------------------------------------------

// Removes what --install put there, known as ours the same way: the scripts
// by their header line, a runtime directory by its marker, our temporaries by
// their names, and the compile cache the first lines keep under our name. A
// symbolic link, or a file at those names that is not ours, is left alone.
const UNINSTALL_SCRIPT = `{
say() { printf '${INSTALL_TAG}%s\\n' "$*"; }
say dir "$PWD"
for f in client.ts send.ts; do
  if [ -L "$f" ]; then say kept a-symbolic-link "$PWD/$f"
  elif [ -f "$f" ] && grep -q "^// $f: .*urlserver" "$f"; then
    if rm -f "$f"; then say removed "$PWD/$f"; else say failed cannot remove "$PWD/$f"; fi
  elif [ -e "$f" ]; then say kept not-a-urlserver-script "$PWD/$f"
  fi
done
for f in .client.ts.urlserver-install.?????? .send.ts.urlserver-install.??????; do
  if [ -f "$f" ] && [ ! -L "$f" ]; then rm -f "$f" && say removed "$PWD/$f"; fi
done
share="$HOME/.local/share/urlserver"
runtimes="${REMOTE_RUNTIMES}"
if [ -L "$share" ] || [ -L "$runtimes" ]; then say kept a-symbolic-link "$share"
elif [ -d "$runtimes" ]; then
  for d in "$runtimes"/* "$runtimes"/.incoming.*; do
    if [ -L "$d" ]; then say kept a-symbolic-link "$d"
    elif [ ! -e "$d" ]; then :
    elif case $d in */.incoming.*) [ -d "$d" ];; *) [ -d "$d" ] && [ -f "$d/${RUNTIME_MARKER}" ] && [ ! -L "$d/${RUNTIME_MARKER}" ];; esac; then
      if rm -rf "$d"; then say removed "$d"; else say failed cannot remove "$d"; fi
    else say kept not-a-runtime-urlserver-provisioned "$d"
    fi
  done
  rmdir "$runtimes" "$share" 2>/dev/null
fi
cache="\${XDG_CACHE_HOME:-$HOME/.cache}/urlserver"
if [ -L "$cache" ]; then say kept a-symbolic-link "$cache"
elif [ -d "$cache" ]; then
  if rm -rf "$cache"; then say removed "$cache"; else say failed cannot remove "$cache"; fi
fi
say done
}
`;

async function uninstallHosts(options: Options): Promise<number> {
  let failed = false;
  for (const host of options.hosts) {
    const session = remoteShell(host, options, () => {});
    session.stdin.end(UNINSTALL_SCRIPT);
    const ended = await session.ended;
    const problem = ended.failure ?? uninstallReport(host, session.lines, ended.code, ended.lastError);
    if (problem) process.stderr.write(`${PROGRAM}: cannot uninstall from "${host}": ${printable(problem)}\n`);
    failed ||= Boolean(problem);
  }
  return failed ? 69 : 0;
}

// Prints what was removed and what was left alone; returns what went wrong.
function uninstallReport(host: string, lines: string[], code: number | null, lastError: string): string | undefined {
  const removed = lines.filter((line) => line.startsWith("removed ")).map((line) => quoted(line.slice(8)));
  const kept = lines.filter((line) => line.startsWith("kept ")).map((line) => {
    const [, why, ...path] = line.split(" ");
    return `${host}: left alone ${quoted(path.join(" "))}: ${printable(why.replaceAll("-", " "))}`;
  });
  const failures = lines.filter((line) => line.startsWith("failed ")).map((line) => printable(line.slice(7)));
  const report = [
    removed.length ? `${host}: removed ${removed.join(", ")}` : `${host}: nothing of urlserver's was there`,
    ...kept,
    ...(removed.some((path) => path.endsWith('/send.ts"')) ? [`${host}: take the BROWSER line out of the shell's start-up file there`] : []),
  ];
  if (lines.includes("done") || removed.length || kept.length) process.stdout.write(report.map((line) => `${line}\n`).join(""));
  if (failures.length) return failures.join("; ");
  if (lines.includes("done")) return undefined;
  const why = code === 255 ? "ssh exited 255" : `the remote shell exited ${code ?? "on a signal"}`;
  return `${why}${lastError ? `: ${lastError}` : ""}`;
}

// ============================================================================
// --service: this server as a service of the desktop session
// ============================================================================

// Started with the session and restarted on failure, under --reconnect: a
// systemd user unit on Linux, a launchd agent on macOS. It runs the runtime
// running this script and this script by their absolute paths, with the
// options given here, so that neither the service manager's PATH nor its
// directory changes what runs.
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

// ============================================================================
// Control directories: the ssh masters' private sockets, and the start-up sweep
// ============================================================================

// The ssh masters' control sockets give access to the connections, so they
// live in a directory only this user can enter (mkdtemp makes it 0700). ssh
// reads a ControlPath as words with %-tokens, and socket paths are short: a
// temporary directory with spaces or a long name gives way to /tmp. The name
// holds this server's pid and its PID namespace, so that a later server can
// tell it is left over (a pid means nothing in another namespace).
//
// Made only where no one else may rename what is ours: in a directory others
// may write without the sticky bit, another user could swap this one for a
// directory of theirs, and the masters' sockets (a way into every host) with
// it. $TMPDIR first, else /tmp, else none, and loopback URLs are refused.
function makeControlDirectory(): string | { refusal: string } {
  const prefix = `urlserver-${process.pid}-ns${pidNamespace() ?? "unknown"}-`;
  const uid = process.getuid?.();
  const reasons: string[] = [];
  for (const base of new Set([tmpdir(), "/tmp"])) {
    const unsafe = uid === undefined ? undefined : unsafePlace(base, uid);
    if (unsafe) {
      reasons.push(`"${base}": ${unsafe}`);
      continue;
    }
    let directory: string;
    try {
      directory = mkdtempSync(join(base, prefix));
    } catch (error) {
      reasons.push(`"${base}": ${(error as NodeJS.ErrnoException).code ?? error}`);
      continue;
    }
    if (/^[\w./-]+$/.test(directory) && directory.length <= MAX_CONTROL_DIRECTORY_LENGTH) return directory;
    rmSync(directory, { recursive: true, force: true });
    reasons.push(`"${base}": too long or unusual a path for a socket`);
  }
  return { refusal: `no safe directory for ssh's control sockets (${reasons.join("; ")})` };
}

// The PID namespace this process runs in, as Linux names it; "0" where there
// are none; undefined where it cannot be told (no /proc).
function pidNamespace(): string | undefined {
  if (process.platform !== "linux") return "0";
  try {
    return /^pid:\[([0-9]+)\]$/.exec(readlinkSync("/proc/self/ns/pid"))?.[1];
  } catch {
    return undefined;
  }
}

// A server killed with SIGKILL cannot remove its control directory. Removed
// here, only when surely left over: this user's own directory, made by a
// server of this PID namespace (another's pid cannot be told from here, nor
// can a name without one, from 0.3.0) whose pid is gone, in which no ssh
// master answers any more. Other servers may be sweeping at the same time:
// what vanishes meanwhile is simply gone.
async function removeLeftoverControlDirectories(): Promise<void> {
  const uid = process.getuid?.();
  const namespace = pidNamespace();
  if (uid === undefined || namespace === undefined) return;
  for (const base of new Set([tmpdir(), "/tmp"])) {
    const unsafe = unsafePlace(base, uid);
    if (unsafe) {
      process.stderr.write(`${PROGRAM}: not removing leftover control directories in "${base}": ${unsafe}\n`);
      continue;
    }
    let names: string[];
    try {
      names = readdirSync(base);
    } catch {
      continue;
    }
    for (const name of names) {
      const [, pid, ns] = /^urlserver-([0-9]+)-ns([0-9]+)-[A-Za-z0-9]{6}$/.exec(name) ?? [];
      if (ns !== namespace || Number(pid) === process.pid || processExists(Number(pid))) continue;
      await removeIfLeftover(join(base, name), uid);
    }
  }
}

// Making or removing a directory where others may rename entries races with
// them: a directory anyone may write without the sticky bit (or another
// user's) is neither swept nor used for a control directory.
function unsafePlace(base: string, uid: number): string | undefined {
  let info;
  try {
    info = statSync(base);
  } catch {
    return undefined; // nothing to sweep there
  }
  if (info.uid !== uid && info.uid !== 0) return `it is owned by uid ${info.uid}`;
  const othersWrite = (info.mode & 0o002) !== 0 || ((info.mode & 0o020) !== 0 && info.uid !== uid);
  if (othersWrite && (info.mode & 0o1000) === 0) return `others may write there (mode ${(info.mode & 0o777).toString(8)}, no sticky bit)`;
  return undefined;
}

async function removeIfLeftover(directory: string, uid: number): Promise<void> {
  try {
    const info = lstatSync(directory, { throwIfNoEntry: false });
    if (!info?.isDirectory() || info.uid !== uid) return;
    if (await anySocketAnswers(directory)) return;
    rmSync(directory, { recursive: true, force: true });
  } catch {
    // Vanished meanwhile (another server swept it), or not ours to sweep.
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

// ============================================================================
// Hosts: one per HOST, its connections and, with --reconnect, its outages
// ============================================================================

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

// ============================================================================
// Sleep, freezes and network changes: every connection probed at once
// ============================================================================

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

// ============================================================================
// One connection: ssh started, the client's hello awaited, why it ended
// ============================================================================

// The child whose stdin and stdout are the channel: ssh, or the client itself.
function startConnection(host: string, options: Options, controlPath?: string): ChildProcessWithoutNullStreams | string {
  let command: string;
  let args: string[];
  if (options.local) {
    const clientPath = join(dirname(fileURLToPath(import.meta.url)), "client.ts");
    if (options.remoteCommand) {
      [command, args] = ["sh", ["-c", options.remoteCommand]];
    } else if (existsSync(clientPath)) {
      return spawn(process.execPath, [...localRuntimeFlags(), clientPath], { stdio: ["pipe", "pipe", "pipe"], ...outsideCurrentDirectory() });
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
  return ["run", "--no-prompt", "--no-config", "--allow-read", "--allow-write", "--allow-net",
    "--allow-env=URLSERVER_SOCKET,XDG_RUNTIME_DIR,SSH_CONNECTION", "--allow-sys"];
}

// Bun reads settings (bunfig.toml, .env, tsconfig.json) from the directory
// it starts in: as the first lines do, start it in "/" and say where the user
// was (the stanza goes back there). Node's flags here may name tsx relative
// to the current directory, and Node reads nothing there.
function outsideCurrentDirectory(): { cwd?: string; env?: NodeJS.ProcessEnv } {
  if (!(process.versions as Record<string, string | undefined>).bun) return {};
  return { cwd: "/", env: { ...process.env, URLSERVER_CWD: process.cwd() } };
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
// for it; no runtime for it there; or the remote command's exit status and
// last message.
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
  // client.ts's first lines found no runtime there (theirs and older clients' words): --install brings one.
  if (code === 69 && /^client\.ts: no runtime found\b/.test(said)) {
    return failureOf(`cannot start the client: no runtime for it there (Deno 2, Bun 1, Node 22.6+, or Node 20+ with tsx or npx): run "server.ts --install ${host}" to bring one`, earlier);
  }
  return failureOf(`cannot start the client: the remote command exited ${code}${last}`, earlier);
}

// ============================================================================
// The channel: answers held back while ssh is not reading, lines bounded and decoded
// ============================================================================

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

// ============================================================================
// The session: what the client says, and what each URL is answered
// ============================================================================

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
    forwarder?.stop();
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

  // This connection's forwards; none under --no-forward-loopback. The client
  // hears of every change, for send.ts --status.
  const forwarder = master.controlPath
    ? loopbackForwarder(options, host, { controlPath: master.controlPath, live: master.live }, (list) => send(`forwards ${list}`))
    : undefined;
  const openRequested = urlDecisions(host, options, state, forwarder);
  return { onLine, stop };
}

type ConnectionForwards = ReturnType<typeof loopbackForwarder>;

// What becomes of each URL of a connection: refused, opened, or forwarded
// then opened. answer() with no reason means opened.
function urlDecisions(host: string, options: Options, state: HostState, forwarder?: ConnectionForwards) {
  const { budget } = state;
  // A URL that names a host the desktop must look up (to know whether it is
  // its own loopback) spends its rate token before the lookup, so that a
  // flood costs no lookups.
  const openRequested = (url: string, answer: (refusal?: string) => void) => {
    const refusal = refusalReason(url, options.schemes);
    if (refusal) return refuse(url, refusal, answer);
    // Through --local the remote host is this one: its loopback is ours.
    if (options.local) return admit(url, undefined, answer);
    const { known, unknown } = namesToResolve(url);
    if (unknown.length > MAX_NAMES_RESOLVED) {
      return refuse(url, `it names more than ${MAX_NAMES_RESOLVED} hosts to look up (its own and its redirect targets)`, answer);
    }
    if (unknown.length === 0) return admit(url, loopbackTargets(url, known), answer);
    if (!state.takeToken()) return refuse(url, rateLimited, answer, "rate limited");
    resolveNames(unknown).then((resolved) => admit(url, loopbackTargets(url, new Map([...known, ...resolved])), answer, true), crash);
  };

  const admit = (url: string, loopback: LoopbackUrl | undefined, answer: (refusal?: string) => void, tokenTaken = false) => {
    const targets = loopback ? [loopback.direct, ...loopback.redirects].filter((target) => target !== undefined) : [];
    // Never opened against the desktop's own loopback: forwarded, or refused.
    if (targets.some((target) => target.desktop.length === 0)) {
      return refuse(url, "it names this desktop by its own host name, which does not resolve to a loopback address here", answer);
    }
    const privileged = targets.find((target) => target.port < MIN_FORWARDED_PORT);
    if (privileged) {
      return refuse(url, `loopback URL: its port ${privileged.port} is on the remote host, and ports below ${MIN_FORWARDED_PORT} are not forwarded`, answer);
    }
    if (loopback && !forwarder) {
      return refuse(url, `loopback URL: its port is on the remote host, and ${options.noForwardReason}`, answer);
    }
    if (!tokenTaken && !state.takeToken()) return refuse(url, rateLimited, answer, "rate limited");
    if (!loopback || !forwarder) return openUrl(url, host, options, answer);
    forwarder.forward(url, loopback).then((forwarded) => {
      if ("refusal" in forwarded) return refuse(url, forwarded.refusal, answer);
      // What a URL forwarded goes with it when the opener refuses it.
      const undoing = (refusal?: string) => {
        if (refusal !== undefined) forwarded.undo("its URL was refused");
        answer(refusal);
      };
      openUrl(forwarded.url, host, options, undoing, forwarded.note, url);
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

  return openRequested;
}

// ============================================================================
// Checks: every URL checked here again, whatever the client checked
// ============================================================================

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

// ============================================================================
// Loopback URLs: what leads to the remote loopback, names resolved, the forwarder
// ============================================================================

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

/**
 * The remote loopback targets a URL leads the browser to, or undefined for a
 * URL that leads to none. names: other names that lead to the desktop's
 * loopback, with the loopback addresses each resolves to on the desktop
 * (none: the desktop's own name, on another address).
 */
export function loopbackTargets(url: string, names: Map<string, string[]> = new Map()): LoopbackUrl | undefined {
  const parsed = new URL(url);
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") return undefined;
  const redirects: LoopbackTarget[] = [];
  for (const value of REDIRECT_PARAMETERS.flatMap((name) => parsed.searchParams.getAll(name))) {
    const target = URL.canParse(value) ? loopbackTarget(new URL(value), names) : undefined;
    if (target && !redirects.some((known) => JSON.stringify(known) === JSON.stringify(target))) redirects.push(target);
  }
  const direct = loopbackTarget(parsed, names);
  if (!direct && redirects.length === 0) return undefined;
  return direct ? { direct, redirects } : { redirects };
}

// Only the port and which loopback address are taken from the URL, both
// checked here: nothing else from the remote side becomes an ssh argument.
function loopbackTarget(parsed: URL, names: Map<string, string[]>): LoopbackTarget | undefined {
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") return undefined;
  const host = parsed.hostname;
  const name = host.endsWith(".") ? host.slice(0, -1) : host;
  const mapped = MAPPED_IPV4_LOOPBACK.exec(host);
  const ipv4 = mapped ? `127.${Number.parseInt(mapped[1], 16)}.${Number.parseInt(mapped[2], 16) >> 8}.${Number.parseInt(mapped[2], 16) & 255}` : host;
  const resolved = names.get(name);
  // A name is resolved by the browser (Chromium and Firefox answer localhost
  // and *.localhost themselves) to both families, often ::1 first, and by sshd
  // on the remote side the same way. The unspecified addresses reach the
  // loopback of their family, and their program listens on every address.
  // Another loopback name is forwarded where the desktop resolves it, to the
  // remote host's localhost: the name itself never becomes an ssh argument.
  const where = name === "localhost" || name.endsWith(".localhost") ? { desktop: ["127.0.0.1", "[::1]"], remote: "localhost" }
    : resolved ? { desktop: resolved, remote: "localhost" }
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

// Which names a URL (its host, its redirect targets' hosts) leads to that
// are not loopback forms by their text alone: known, those the hosts file
// maps to a loopback address; unknown, the rest, to be looked up. The
// desktop's own host name is always one or the other.
const NAME_LOOKUP_MS = 2000;
const MAX_NAMES_RESOLVED = 4;

export function namesToResolve(url: string, hostsFile = HOSTS_FILE): { known: Map<string, string[]>; unknown: string[] } {
  const parsed = new URL(url);
  const values = REDIRECT_PARAMETERS.flatMap((name) => parsed.searchParams.getAll(name)).filter((value) => URL.canParse(value));
  const hosts = [parsed, ...values.map((value) => new URL(value))]
    .filter((each) => each.protocol === "http:" || each.protocol === "https:")
    .map((each) => each.hostname.replace(/\.$/, ""))
    .filter((name) => !/^(\[.*\]|[0-9.]+|localhost|.*\.localhost)$/.test(name));
  const fromFile = hostsFileLoopbackNames(hostsFile);
  const known = new Map<string, string[]>();
  const unknown: string[] = [];
  for (const name of new Set(hosts)) {
    const addresses = fromFile.get(name);
    if (addresses) known.set(name, addresses);
    else unknown.push(name);
  }
  return { known, unknown };
}

// The loopback addresses each name resolves to on the desktop (its resolver:
// the hosts file, DNS), as the URL forms forwards use; a name that resolves
// to none, fails or takes longer than NAME_LOOKUP_MS gets none, and is not a
// loopback name, except the desktop's own host name: it gets an empty list.
export async function resolveNames(names: string[]): Promise<Map<string, string[]>> {
  const own = hostname().toLowerCase().replace(/\.$/, "");
  const found = await Promise.all(names.map(async (name) => [name, await lookedUp(name)] as const));
  return new Map(found.filter(([name, addresses]) => addresses.length > 0 || name === own));
}

// A name's loopback forms, each lookup kept for NAME_CACHE_MS (the last
// MAX_NAMES_CACHED names): a burst of URLs to one host costs one lookup, and
// a resolver that is slow to fail (no network) slows only the first.
const NAME_CACHE_MS = 10_000;
const MAX_NAMES_CACHED = 256;
const nameCache = new Map<string, { at: number; forms: Promise<string[]> }>();

function lookedUp(name: string): Promise<string[]> {
  const cached = nameCache.get(name);
  if (cached && performance.now() - cached.at < NAME_CACHE_MS) return cached.forms;
  nameCache.delete(name);
  if (nameCache.size >= MAX_NAMES_CACHED) nameCache.delete(nameCache.keys().next().value!);
  const forms = new Promise<string[]>((resolve) => {
    const timer = setTimeout(() => resolve([]), NAME_LOOKUP_MS);
    lookup(name, { all: true }, (error, addresses) => {
      clearTimeout(timer);
      resolve(error ? [] : loopbackForms(addresses.map((each) => each.address)));
    });
  });
  nameCache.set(name, { at: performance.now(), forms });
  return forms;
}

// 127.x.y.z, ::1 and ::ffff:127.x.y.z as a URL writes them; other addresses dropped.
function loopbackForms(addresses: string[]): string[] {
  const forms = addresses.map((address) => address.replace(/^::ffff:(?=[0-9.]+$)/i, ""))
    .map((address) => IPV4_LOOPBACK.test(address) ? address : address === "::1" ? "[::1]" : undefined)
    .filter((form) => form !== undefined);
  return [...new Set(forms)];
}

// The hosts file, read again only when it changes (it can be megabytes of
// blocked names): each name it maps to a loopback address, with those addresses.
const HOSTS_FILE = "/etc/hosts";
let hostsFileRead: { path: string; stamp: string; names: Map<string, string[]> } | undefined;

function hostsFileLoopbackNames(path: string): Map<string, string[]> {
  const info = statSync(path, { throwIfNoEntry: false });
  const stamp = `${info?.ino}:${info?.size}:${info?.mtimeMs}`;
  if (hostsFileRead?.path === path && hostsFileRead.stamp === stamp) return hostsFileRead.names;
  const names = new Map<string, string[]>();
  let text = "";
  try {
    text = readFileSync(path, "utf8");
  } catch {
    // No hosts file: no names from it.
  }
  for (const line of text.split("\n")) {
    const [address, ...aliases] = line.replace(/#.*/, "").trim().split(/\s+/);
    const [form] = loopbackForms([address]);
    if (!form) continue;
    for (const alias of aliases.map((each) => each.toLowerCase().replace(/\.$/, ""))) {
      names.set(alias, [...new Set([...(names.get(alias) ?? []), form])]);
    }
  }
  hostsFileRead = { path, stamp, names };
  return names;
}

type Forwarded = { url: string; note: string; undo: (why: string) => void } | { refusal: string };

// The forwards of one connection: desktop ports this server listens on
// itself, on the loopback addresses a browser will connect to, carrying each
// connection accepted there to the remote host's loopback through a relay:
// a Unix socket in the private control directory that the connection's ssh
// master forwards there (ssh -O forward -L PATH:REMOTE_ADDRESS:PORT). Owning
// the listener is what lets a forward live only as long as the URL that
// needed it (it sees every connection), without a process per connection
// (ssh -W per connection was measured 5 times slower; see the README): one
// made for a callback (a redirect target) is released once its callback has
// been served (its first connection has come and gone), one made for a
// direct URL once it has had no connection for --forward-idle, as is a
// callback's that none reaches. Asked for one URL at a time, so that each
// decision sees the forwards before it. A desktop port taken by something
// else is a refusal, except for a URL that itself leads to the remote
// loopback and carries no loopback redirect target (a provider redirects to
// exactly the registered port): that one is given another desktop port, as
// are later URLs to the same remote port while the forward lasts.
const MAX_CARRIED_CONNECTIONS = 64;

type Forward = {
  desktopPort: number;
  remotePort: number;
  /** Desktop address: its listener, and what it connects to on the remote host. */
  listeners: Map<string, { server: Server; remote: string }>;
  /** Remote address: the master's Unix socket that leads there. */
  relays: Map<string, string>;
  /** The URL it was made for, as the log shows it. */
  url: string;
  /** Made for a redirect target only: released once its callback has been served. */
  callback: boolean;
  served: boolean;
  connections: number;
  idle?: ReturnType<typeof setTimeout>;
};

// Which desktop port a target was given, and which of its addresses the URL added there.
type Placed = { forward: Forward; added: string[] };

// One connection's forwards and what they need: the state the steps below share.
type Forwarder = {
  options: Options;
  host: string;
  master: { controlPath: string; live: Set<ChildProcess> };
  /** Told the live forwards after each change: the client hears them, for send.ts --status. */
  changed: (list: string) => void;
  /** By desktop port. */
  forwards: Map<number, Forward>;
  /** Remote port, and the other desktop port a direct URL to it was given. */
  moved: Map<number, number>;
  /** URLs are forwarded one at a time. */
  queue: Promise<unknown>;
  /** Desktop connections being carried, all forwards together. */
  carried: number;
  relaysMade: number;
  /** The connection has ended: nothing more is made, told or cancelled. */
  stopped: boolean;
};

function loopbackForwarder(options: Options, host: string, master: { controlPath: string; live: Set<ChildProcess> },
  changed: (list: string) => void) {
  const forwarder: Forwarder = { options, host, master, changed, forwards: new Map(), moved: new Map(), queue: Promise.resolve(),
    carried: 0, relaysMade: 0, stopped: false };
  liveForwarders.add(forwarder);
  return {
    forward: (url: string, loopback: LoopbackUrl): Promise<Forwarded> => {
      const forwarded = forwarder.queue.then(() => forwardUrl(forwarder, url, loopback));
      forwarder.queue = forwarded.catch(() => undefined);
      return forwarded;
    },
    /** The connection has ended: every forward goes with it. */
    stop: () => {
      forwarder.stopped = true;
      liveForwarders.delete(forwarder);
      for (const forward of [...forwarder.forwards.values()]) releaseForward(forwarder, forward, "the connection ended");
    },
  };
}

// Every target of one URL placed, or none: a refusal undoes what the URL made.
async function forwardUrl(forwarder: Forwarder, url: string, { direct, redirects }: LoopbackUrl): Promise<Forwarded> {
  // A redirect back to the URL's own host and port needs no second forward, nor a second word in the log.
  const callbacks = redirects.filter((target) => JSON.stringify(target) !== JSON.stringify(direct));
  if (callbacks.length > 1) {
    const ports = callbacks.map((target) => `port ${target.port}`).join(", ");
    return { refusal: `it has ${callbacks.length} loopback redirect targets (${ports}): at most one is forwarded` };
  }
  const movable = direct !== undefined && redirects.length === 0 && withPort(url, direct.port) !== undefined;
  const made: Placed[] = [];
  const undo = (why: string) => made.splice(0).reverse().forEach(({ forward, added }) => releaseForward(forwarder, forward, why, added));
  let opened = url;
  const notes: string[] = [];
  for (const target of direct ? [direct, ...callbacks] : callbacks) {
    const placed = await placeTarget(forwarder, target, movable, url, target !== direct);
    if ("refusal" in placed) {
      undo("its URL was refused");
      return placed;
    }
    const { forward, added } = placed;
    made.push(placed);
    // A page visited directly is visited again: its forward waits for the idle bound.
    if (target === direct) forward.callback = false;
    if (forward.connections === 0) armForward(forwarder, forward);
    const { desktopPort } = forward;
    if (desktopPort === target.port) {
      notes.push(`, port ${desktopPort} ${added.length > 0 ? "forwarded" : "already forwarded"}`);
      continue;
    }
    const rewritten = withPort(url, desktopPort);
    if (!rewritten) {
      undo("its URL was refused");
      return { refusal: `desktop port ${target.port} is in use, and the URL's port cannot be rewritten` };
    }
    opened = rewritten;
    notes.push(added.length > 0 ? `, desktop port ${target.port} is in use: forwarded desktop port ${desktopPort} to remote port ${target.port}`
      : `, desktop port ${desktopPort} already forwarded to remote port ${target.port}`);
  }
  tellForwards(forwarder);
  return { url: opened, note: notes.join(""), undo };
}

// A desktop port that leads to the target: one of this connection's, or a new one.
async function placeTarget(forwarder: Forwarder, target: LoopbackTarget, movable: boolean, url: string,
  callback: boolean): Promise<Placed | { refusal: string }> {
  const { forwards, moved } = forwarder;
  const { port } = target;
  // Without ::1 on the desktop a browser connects to a name over IPv4 only.
  const addresses = hasIpv6Loopback() ? target.desktop : target.desktop.filter((address) => address !== "[::1]");
  if (addresses.length === 0) return { refusal: `cannot forward desktop port ${port}: the desktop has no IPv6 loopback` };
  const last = movable ? Math.min(65535, port + MAX_PORT_MOVE) : port;
  const candidates = new Set([(movable && moved.get(port)) || port, ...Array.from({ length: last - port }, (_, i) => port + 1 + i)]);
  for (const desktopPort of candidates) {
    const existing = forwards.get(desktopPort);
    // This connection's own forward there, leading to another remote port: in use.
    if (existing && existing.remotePort !== port) continue;
    const missing = addresses.filter((address) => !existing?.listeners.has(address));
    if (existing && missing.length === 0) return { forward: existing, added: [] };
    if (!existing && forwards.size >= MAX_FORWARDED_PORTS) return { refusal: "too many forwarded ports for this connection" };
    const forward: Forward = existing ?? { desktopPort, remotePort: port, listeners: new Map(), relays: new Map(), url, callback, served: false, connections: 0 };
    const answer = await listenAll(forwarder, forward, missing, target.remote);
    if (answer === "in use") continue;
    if (answer !== "done") return answer;
    const relayed = forwarder.stopped ? "ended" : await openRelay(forwarder, forward, target.remote);
    if (relayed !== "done" || forwarder.stopped) {
      // Nothing listens for a URL whose relay could not be made, nor once the connection has ended.
      closeListeners(forward, missing);
      if (relayed === "done" || relayed === "ended") return { refusal: "the connection to the host has ended" };
      return relayed === "in use" ? { refusal: `cannot forward desktop port ${desktopPort}: ssh could not listen on its relay` } : relayed;
    }
    forwards.set(desktopPort, forward);
    if (desktopPort !== port) moved.set(port, desktopPort);
    recordForward(forwarder.options, forwarder.host, { what: "made", forward, addresses: missing, remote: target.remote, url });
    return { forward, added: missing };
  }
  return { refusal: last > port ? `desktop port ${port} is in use, and so is every desktop port up to ${last}` : `desktop port ${port} is in use` };
}

// Listens on each address, or on none: a port counts as free only if it is
// free on every address, or a browser could reach the desktop's own program.
async function listenAll(forwarder: Forwarder, forward: Forward, addresses: string[], remote: string): Promise<"done" | "in use" | { refusal: string }> {
  const made: string[] = [];
  for (const address of addresses) {
    const server = await listenOn(address, forward.desktopPort, (socket) => carryConnection(forwarder, forward, remote, socket));
    if (server === "in use" || "refusal" in server) {
      closeListeners(forward, made);
      return server;
    }
    forward.listeners.set(address, { server, remote });
    made.push(address);
  }
  return "done";
}

function closeListeners(forward: Forward, addresses: string[]): void {
  for (const address of addresses) forward.listeners.get(address)?.server.close();
  for (const address of addresses) forward.listeners.delete(address);
}

// The master's relay to remote:port, made now: a Unix socket in the private directory.
async function openRelay(forwarder: Forwarder, forward: Forward, remote: string): Promise<MasterAnswer> {
  if (forward.relays.has(remote)) return "done";
  const { options, master, host } = forwarder;
  const path = `${master.controlPath}.${++forwarder.relaysMade}`;
  const answer = await askMaster(options.ssh, master.controlPath, host, "forward", `${path}:${remote}:${forward.remotePort}`, forward.desktopPort, master.live);
  if (answer === "done") forward.relays.set(remote, path);
  return answer;
}

// Once the connection has ended, its master and relays are gone with it.
function closeRelay(forwarder: Forwarder, path: string, remote: string, remotePort: number): void {
  if (forwarder.stopped) return;
  const { options, master, host } = forwarder;
  askMaster(options.ssh, master.controlPath, host, "cancel", `${path}:${remote}:${remotePort}`, remotePort, master.live)
    .then(() => rmSync(path, { force: true }), crash);
}

// A connection accepted on the desktop port, carried through the master's relay.
function carryConnection(forwarder: Forwarder, forward: Forward, remote: string, socket: Socket): void {
  const path = forward.relays.get(remote);
  if (forwarder.carried >= MAX_CARRIED_CONNECTIONS || forwarder.stopped || !path) {
    socket.destroy();
    return;
  }
  forwarder.carried += 1;
  forward.connections += 1;
  forward.served = true;
  clearTimeout(forward.idle);
  const relay = connect(path);
  socket.pipe(relay);
  relay.pipe(socket);
  relay.on("error", () => socket.destroy());
  socket.on("error", () => relay.destroy());
  socket.on("close", () => {
    relay.destroy();
    forwarder.carried -= 1;
    forward.connections -= 1;
    if (forward.connections > 0 || !forwarder.forwards.has(forward.desktopPort) || forwarder.stopped) return;
    if (forward.callback && forward.served) return releaseForward(forwarder, forward, "its callback was served");
    armForward(forwarder, forward);
  });
}

function armForward(forwarder: Forwarder, forward: Forward): void {
  const idleMs = forwarder.options.forwardIdleSeconds * 1000;
  clearTimeout(forward.idle);
  forward.idle = setTimeout(() => releaseForward(forwarder, forward, `no connection for ${duration(idleMs)}`), idleMs);
}

// Stops listening on addresses (all of them: the forward is gone); connections already carried finish.
function releaseForward(forwarder: Forwarder, forward: Forward, why: string, asked = [...forward.listeners.keys()]): void {
  // What is released already (an undo after the connection ended) is not released, nor logged, twice.
  const addresses = asked.filter((address) => forward.listeners.has(address));
  if (addresses.length === 0) return;
  const remote = forward.listeners.get(addresses[0])?.remote ?? "localhost";
  closeListeners(forward, addresses);
  if (forward.listeners.size === 0) {
    clearTimeout(forward.idle);
    for (const [to, path] of forward.relays) closeRelay(forwarder, path, to, forward.remotePort);
    forward.relays.clear();
    forwarder.forwards.delete(forward.desktopPort);
    if (forwarder.moved.get(forward.remotePort) === forward.desktopPort) forwarder.moved.delete(forward.remotePort);
  }
  recordForward(forwarder.options, forwarder.host, { what: "released", forward, addresses, remote, url: forward.url, why });
  tellForwards(forwarder);
}

function tellForwards(forwarder: Forwarder): void {
  if (!forwarder.stopped) forwarder.changed(forwardList([...forwarder.forwards.values()]));
}

// Every connection's forwarder, for the log of live forwards on SIGUSR2.
const liveForwarders = new Set<Forwarder>();

function logLiveForwards(): void {
  for (const { host, forwards } of liveForwarders) {
    if (forwards.size === 0) log(host, "live forwards: none");
    for (const forward of forwards.values()) {
      const desktop = [...forward.listeners.keys()].map((address) => `${address}:${forward.desktopPort}`).join(" and ");
      const remote = [...forward.listeners.values()][0]?.remote ?? "localhost";
      log(host, `live forward: desktop ${desktop} to remote ${remote}:${forward.remotePort}, for ${quoted(shortened(forward.url))}` +
        ` (${forward.callback ? "a callback" : "direct"}, ${forward.connections} connections open)`);
    }
  }
}

// The forwarder's own listener on a desktop address; "in use" when something else has the port.
function listenOn(address: string, port: number, onConnection: (socket: Socket) => void): Promise<Server | "in use" | { refusal: string }> {
  return new Promise((resolve) => {
    // Not read until it is carried: nothing is lost before ssh is ready.
    const server = createServer({ pauseOnConnect: true }, onConnection);
    server.once("error", (error: NodeJS.ErrnoException) => {
      resolve(error.code === "EADDRINUSE" ? "in use" : { refusal: `cannot forward desktop port ${port}: cannot listen on ${address}: ${error.message}` });
    });
    server.listen({ port, host: address.replace(/^\[(.*)\]$/, "$1"), ipv6Only: address.startsWith("[") }, () => {
      server.on("error", () => { /* a failed accept: that connection alone is lost */ });
      resolve(server);
    });
  });
}

// A forward made or released: a log line and a --log entry, naming the
// desktop addresses and port, the remote address and port, and the URL.
function recordForward(options: Options, host: string,
  { what, forward, addresses, remote, url, why }: { what: "made" | "released"; forward: Forward; addresses: string[]; remote: string; url: string; why?: string }): void {
  const desktop = addresses.map((address) => `${address}:${forward.desktopPort}`);
  const shown = quoted(shortened(url));
  log(host, what === "made" ? `forwarded desktop ${desktop.join(" and ")} to remote ${remote}:${forward.remotePort}, for ${shown}`
    : `released desktop ${desktop.join(" and ")} (to remote ${remote}:${forward.remotePort}, for ${shown}): ${why}`);
  appendAuditEntry(options, host, { url, forward: what, desktop, remote: `${remote}:${forward.remotePort}`, ...(why ? { reason: why } : {}) });
}

// The live forwards as the client hears of them: DESKTOP_PORT:REMOTE_PORT,...
// or "none".
function forwardList(forwards: Forward[]): string {
  return forwards.map((forward) => `${forward.desktopPort}:${forward.remotePort}`).join(",") || "none";
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
// cancel a forward (-L PATH:REMOTE_ADDRESS:REMOTE_PORT) from a Unix socket
// in the private control directory to the remote host's loopback. The
// forward ends with the master. A master that cannot listen there says
// "Port forwarding failed".
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

// ============================================================================
// Opening: the rate limit, the opener, the notification
// ============================================================================

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

// ============================================================================
// The log: --log, the log budget, and nothing printed raw
// ============================================================================

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
