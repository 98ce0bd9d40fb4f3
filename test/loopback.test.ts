// Ensures that server.ts recognises every form of URL that a browser sends to
// its own loopback, directly or through an OAuth redirect parameter, with the
// desktop addresses it must forward and where the forward must connect on the
// remote host; that near misses are not taken for loopback URLs; and that a
// URL's port is rewritten without re-serialising the rest; and that names are
// loopback names when the desktop resolves them to its loopback (its hosts
// file, its resolver, its own host name), never by their look. Pure
// functions and the desktop's resolver, no processes: forward.test.ts shows
// the same over real OpenSSH.

import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { loopbackTargets, namesToResolve, resolveNames, withPort } from "../server.ts";
import { tempDir } from "./helpers.ts";
import type { LoopbackTarget, LoopbackUrl } from "../server.ts";

/** A name: the browser may connect over either family, and sshd resolves it on the remote side. */
const name = (port: number): LoopbackTarget => ({ port, desktop: ["127.0.0.1", "[::1]"], remote: "localhost" });
/** A literal address: the browser connects there, and so does the forward on the remote side. */
const at = (address: string, port: number): LoopbackTarget => ({ port, desktop: [address], remote: address });
/** An unspecified address: the loopback of its family on the desktop; on the remote side its program listens on every address. */
const unspecified = (address: string, port: number): LoopbackTarget => ({ port, desktop: [address], remote: "localhost" });
const direct = (target: LoopbackTarget, ...redirects: LoopbackTarget[]): LoopbackUrl => ({ direct: target, redirects });
const redirects = (...targets: LoopbackTarget[]): LoopbackUrl => ({ redirects: targets });

const recognised: Array<[string, LoopbackUrl]> = [
  // Names.
  ["http://localhost:8888/?token=abc", direct(name(8888))],
  ["http://LOCALHOST:8888/", direct(name(8888))],
  ["http://localhost.:8888/", direct(name(8888))],
  ["http://app.localhost:5173/", direct(name(5173))],
  ["http://a.b.localhost.:3000/", direct(name(3000))],
  ["http://%6cocalhost:3001/", direct(name(3001))],
  ["http://localhost/", direct(name(80))],
  ["https://localhost/", direct(name(443))],
  // All of 127.0.0.0/8, however it is written.
  ["http://127.0.0.1:8123/callback?code=abc", direct(at("127.0.0.1", 8123))],
  ["http://127.1:8123/", direct(at("127.0.0.1", 8123))],
  ["http://2130706433:8123/", direct(at("127.0.0.1", 8123))],
  ["http://0x7f.0.0.1:8123/", direct(at("127.0.0.1", 8123))],
  ["http://127.0.0.1.:8123/", direct(at("127.0.0.1", 8123))],
  ["http://127.0.0.2:8000/", direct(at("127.0.0.2", 8000))],
  ["https://127.255.255.254:9000/", direct(at("127.255.255.254", 9000))],
  ["http://127.0.0.0:9001/", direct(at("127.0.0.0", 9001))],
  // IPv6 loopback, and IPv4-mapped 127.x.y.z (a connection to it is one to 127.x.y.z).
  ["http://[::1]:8080/x", direct(at("[::1]", 8080))],
  ["http://[0:0:0:0:0:0:0:1]:8080/", direct(at("[::1]", 8080))],
  ["http://[::ffff:127.0.0.1]:3005/", direct(at("127.0.0.1", 3005))],
  ["http://[::ffff:7f00:1]:3005/", direct(at("127.0.0.1", 3005))],
  ["http://[::ffff:127.0.0.2]:3006/", direct(at("127.0.0.2", 3006))],
  ["http://[::ffff:7f01:203]:3007/", direct(at("127.1.2.3", 3007))],
  ["http://[::FFFF:7F00:0]:3008/", direct(at("127.0.0.0", 3008))],
  // The unspecified addresses: a connection to one reaches the loopback of its family.
  ["http://0.0.0.0:8000/", direct(unspecified("127.0.0.1", 8000))],
  ["http://0:8000/", direct(unspecified("127.0.0.1", 8000))],
  ["http://[::]:8001/", direct(unspecified("[::1]", 8001))],
  ["http://[::ffff:0.0.0.0]:8002/", direct(unspecified("127.0.0.1", 8002))],
  ["http://[::ffff:0:0]:8002/", direct(unspecified("127.0.0.1", 8002))],
  // Redirect targets: every value of redirect_uri, redirect_url and oauth_callback, in http and https URLs.
  ["https://auth.example/authorize?client_id=x&redirect_uri=http%3A%2F%2F127.0.0.1%3A8124%2Fcb", redirects(at("127.0.0.1", 8124))],
  ["http://idp.internal:8080/auth?client_id=x&redirect_uri=http%3A%2F%2Flocalhost%3A8124%2F", redirects(name(8124))],
  ["https://auth.example/authorize?redirect_url=http%3A%2F%2Flocalhost%3A9000%2F", redirects(name(9000))],
  ["https://api.example/oauth/authorize?oauth_token=t&oauth_callback=http%3A%2F%2F127.0.0.1%3A8125%2Fcb", redirects(at("127.0.0.1", 8125))],
  ["https://auth.example/?redirect_uri=https%3A%2F%2Fexample.org%2Fcb&redirect_uri=http%3A%2F%2F127.0.0.1%3A8126%2F",
    redirects(at("127.0.0.1", 8126))],
  ["https://auth.example/?redirect_uri=http://127.0.0.1:8127/&redirect_uri=http://[::1]:8128/&redirect_url=http://localhost:8129/",
    redirects(at("127.0.0.1", 8127), at("[::1]", 8128), name(8129))],
  ["https://auth.example/?redirect_uri=http://127.0.0.1:8127/a&redirect_url=http://127.0.0.1:8127/b", redirects(at("127.0.0.1", 8127))],
  ["https://auth.example/?redirect_uri=http%3A%2F%2F%5B%3A%3Affff%3A7f00%3A2%5D%3A8130%2F", redirects(at("127.0.0.2", 8130))],
  ["https://auth.example/?redirect_uri=http://localhost/cb", redirects(name(80))],
  // A provider on the remote loopback itself that redirects to another port there.
  ["http://localhost:8080/realms/x/auth?redirect_uri=http%3A%2F%2Flocalhost%3A8131%2F", direct(name(8080), name(8131))],
];

const nearMisses = [
  "http://127.example.com:8000/",
  "http://localhost.example.com:8000/",
  "http://localhost.example:8000/",
  "http://127.0.0.1.example.org:8000/",
  "http://mylocalhost:8000/",
  "http://localhostx:8000/",
  "http://localhost-dev:8000/",
  "http://local.host:8000/",
  "http://128.0.0.1:8000/",
  "http://126.255.255.255:8000/",
  "http://0.0.0.1:8000/",
  "http://10.0.0.1:8000/",
  "http://[::2]:8000/",
  "http://[fe80::1]:8000/",
  "http://[::1:0]:8000/",
  // ::127.0.0.1 (IPv4-compatible), ::ffff:128.0.0.1, ::ffff:0:127.0.0.1 (IPv4-translated), ::ffff:0.0.0.1
  "http://[::7f00:1]:8000/",
  "http://[::ffff:8000:1]:8000/",
  "http://[::ffff:0:7f00:1]:8000/",
  "http://[::ffff:0:1]:8000/",
  "ws://localhost:8000/",
  "ftp://127.0.0.1:2121/",
  "mailto:someone@localhost",
  // Redirect parameters that lead nowhere near the remote loopback.
  "https://example.org/?redirect_uri=https%3A%2F%2Fexample.org%2Fcb",
  "https://example.org:8443/?next=http%3A%2F%2F127.0.0.1%3A8000%2F",
  "https://example.org/#redirect_uri=http://127.0.0.1:8000/",
  "https://example.org/?Redirect_URI=http://127.0.0.1:8000/",
  "https://example.org/?redirect_uri=com.example.app%3A%2Flocalhost%2Fcb",
  "https://example.org/?redirect_uri=ws://localhost:8000/",
  "https://example.org/?redirect_uri=not%20a%20URL",
  "https://example.org/?redirect_uri=http://127.example.com:8000/",
];

test("every loopback form is recognised, with the desktop addresses to forward and where the forward connects", () => {
  for (const [url, expected] of recognised) {
    assert.deepEqual(loopbackTargets(url), expected, url);
  }
});

test("near misses are not loopback URLs", () => {
  for (const url of nearMisses) {
    assert.equal(loopbackTargets(url), undefined, url);
  }
});

test("a port is rewritten in the text as sent, the rest byte for byte, or not at all", () => {
  const rewritten: Array<[string, number, string | undefined]> = [
    ["http://localhost:8888/?token=abc", 8889, "http://localhost:8889/?token=abc"],
    // Nothing else is made canonical: not the case, the dots, the escapes, the characters.
    ["HTTP://LocalHost:08888/a/../b?x=%7e&y=ä#é", 8889, "HTTP://LocalHost:8889/a/../b?x=%7e&y=ä#é"],
    ["http:localhost:8888/x", 8889, "http:localhost:8889/x"],
    ["http://localhost:8888\\x", 8889, "http://localhost:8889\\x"],
    ["http://localhost:8888?x=1", 8889, "http://localhost:8889?x=1"],
    ["http://localhost:8888#x", 8889, "http://localhost:8889#x"],
    ["http://user:p%40ss@localhost:8888/", 8889, "http://user:p%40ss@localhost:8889/"],
    ["http://a:b@c@localhost:8888/", 8889, "http://a:b@c@localhost:8889/"],
    ["http://[::1]:8888/x", 40000, "http://[::1]:40000/x"],
    ["http://[::ffff:127.0.0.2]:8888/", 8889, "http://[::ffff:127.0.0.2]:8889/"],
    ["http://127.1:8888/", 8889, "http://127.1:8889/"],
    // No port in the text to rewrite.
    ["http://localhost/", 8889, undefined],
    ["http://[::1]/", 8889, undefined],
    ["http://user:8888@localhost/", 8889, undefined],
    ["http://localhost:/", 8889, undefined],
  ];
  for (const [url, port, expected] of rewritten) {
    assert.equal(withPort(url, port), expected, url);
    if (expected) assert.equal(new URL(expected).port, String(port));
  }
});

test("names the hosts file maps to a loopback address are loopback names, forwarded where it maps them, to the remote host's localhost", (t) => {
  const hosts = join(tempDir(t), "hosts");
  writeFileSync(hosts, [
    "127.0.0.1\tlocalhost localhost.localdomain localhost4 # Debian",
    "::1     localhost ip6-localhost ip6-loopback localhost6",
    "127.0.1.1 Desktop.example.org desktop",
    "::ffff:127.0.0.3 mapped.example",
    "ff02::1 ip6-allnodes",
    "192.0.2.5 printer",
    "# 127.0.0.1 commented.example",
    "",
  ].join("\n"));
  const names: Array<[string, string[]]> = [
    ["localhost.localdomain", ["127.0.0.1"]],
    ["localhost4", ["127.0.0.1"]],
    ["localhost6", ["[::1]"]],
    ["ip6-localhost", ["[::1]"]],
    ["ip6-loopback", ["[::1]"]],
    ["desktop", ["127.0.1.1"]],
    ["desktop.example.org", ["127.0.1.1"]],
    ["mapped.example", ["127.0.0.3"]],
  ];
  for (const [name, desktop] of names) {
    const url = `http://${name.toUpperCase()}.:8000/cb`;
    const { known, unknown } = namesToResolve(url, hosts);
    assert.deepEqual(unknown, [], name);
    assert.deepEqual(loopbackTargets(url, known), direct({ port: 8000, desktop, remote: "localhost" }), name);
    // As a redirect target too.
    const oauth = `https://auth.example/?redirect_uri=${encodeURIComponent(`http://${name}:8001/`)}`;
    const resolved = namesToResolve(oauth, hosts);
    assert.deepEqual(resolved.unknown, ["auth.example"], name);
    assert.deepEqual(loopbackTargets(oauth, resolved.known), redirects({ port: 8001, desktop, remote: "localhost" }), name);
  }
  for (const name of ["ip6-allnodes", "printer", "commented.example", "example.org"]) {
    assert.deepEqual(namesToResolve(`http://${name}:8000/`, hosts), { known: new Map(), unknown: [name] }, name);
  }
  // Literal addresses and localhost are known by their text: nothing to look up.
  assert.deepEqual(namesToResolve("http://127.0.0.1:8000/?redirect_uri=http://localhost:9/&redirect_url=http://[::1]:9/", hosts).unknown, []);
});

test("the resolver decides other names: the desktop's own host name is always one; a name that does not resolve is not", { timeout: 10_000 }, async () => {
  const own = hostname().toLowerCase();
  const resolved = await resolveNames([own, "nowhere.urlserver-test.invalid"]);
  assert.ok(resolved.has(own), `the desktop's own name "${own}" is not a loopback name`);
  assert.equal(resolved.has("nowhere.urlserver-test.invalid"), false);
  // A loopback address of its own, or none (its name leads to another address): never opened as it is.
  const target = loopbackTargets(`http://${own}:8000/`, resolved)?.direct;
  assert.ok(target, `http://${own}:8000/ is not a loopback URL`);
  assert.ok(target.desktop.every((address) => /^(127\.[0-9.]+|\[::1\])$/.test(address)), JSON.stringify(target.desktop));
  assert.equal(loopbackTargets("http://nowhere.urlserver-test.invalid:8000/", resolved), undefined);
});
