// Ensures the desktop-platform decisions are right for each platform, given
// that platform's inputs (no Windows or macOS machine is at hand): the
// default opener (never through a shell), the notifier, the PATH separator,
// and that loopback forwarding is off where ssh cannot multiplex a
// connection (Windows' OpenSSH), with the reason the refusals give.

import assert from "node:assert/strict";
import { test } from "node:test";
import { desktopPlatform } from "../server.ts";

const cases: Array<[string, [string, string, Record<string, string | undefined>], ReturnType<typeof desktopPlatform>]> = [
  ["Linux", ["linux", "6.18.44", {}], { opener: ["xdg-open"], notifier: "notify-send", pathSeparator: ":" }],
  ["FreeBSD", ["freebsd", "14.1-RELEASE", {}], { opener: ["xdg-open"], notifier: "notify-send", pathSeparator: ":" }],
  ["macOS", ["darwin", "24.1.0", {}], { opener: ["open"], notifier: "osascript", pathSeparator: ":" }],
  ["Windows", ["win32", "10.0.22631", { USERPROFILE: "C:\\Users\\me" }], {
    opener: ["rundll32", "url.dll,FileProtocolHandler"], noMultiplexing: "Windows' OpenSSH has no connection multiplexing", pathSeparator: ";",
  }],
  ["WSL 2, by its kernel release", ["linux", "5.15.153.1-microsoft-standard-WSL2", {}],
    { opener: ["rundll32.exe", "url.dll,FileProtocolHandler"], notifier: "notify-send", pathSeparator: ":" }],
  ["WSL, by its environment", ["linux", "6.6.0", { WSL_DISTRO_NAME: "Debian" }],
    { opener: ["rundll32.exe", "url.dll,FileProtocolHandler"], notifier: "notify-send", pathSeparator: ":" }],
];

for (const [name, [platform, release, env], expected] of cases) {
  test(`desktop platform: ${name}`, { timeout: 5000 }, () => {
    assert.deepEqual(desktopPlatform(platform, release, env), expected);
  });
}
