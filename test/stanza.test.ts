// Ensures the signal/exit stanza is the same in all three scripts: each is
// copied alone onto machines, so the stanza is repeated on purpose, and this
// test is what keeps the copies from drifting apart.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { ROOT, run, runtimeOf } from "./helpers.ts";

function stanzaOf(script: string): string {
  const text = readFileSync(join(ROOT, script), "utf8");
  const begin = text.indexOf("// BEGIN exit stanza");
  const end = text.indexOf("// END exit stanza");
  assert.ok(begin !== -1 && end > begin, `${script} has no BEGIN/END exit stanza markers`);
  assert.equal(text.indexOf("// BEGIN exit stanza", begin + 1), -1, `${script} has two stanzas`);
  return text.slice(begin, end);
}

test("the exit stanza is identical in server.ts, client.ts and send.ts", { timeout: 5000 }, () => {
  const [server, client, send] = ["server.ts", "client.ts", "send.ts"].map(stanzaOf);
  assert.equal(client, server, "client.ts differs from server.ts");
  assert.equal(send, server, "send.ts differs from server.ts");
});

test("the stanza handles what it is there for: HUP, INT, QUIT, TERM, EPIPE, crashes", { timeout: 5000 }, () => {
  const stanza = stanzaOf("server.ts");
  for (const needed of ['"SIGHUP"', '"SIGINT"', '"SIGQUIT"', '"SIGTERM"', '"EPIPE"',
    '"uncaughtException"', '"unhandledRejection"', "process.exit(code)"]) {
    assert.ok(stanza.includes(needed), `stanza lacks ${needed}`);
  }
});

test("the version in the stanza is package.json's, and each script's --version prints it with the runtime", { timeout: 30_000 }, async (t) => {
  const { version } = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8"));
  assert.match(stanzaOf("server.ts"), new RegExp(`const VERSION = "${version.replaceAll(".", "\\.")}";`));
  for (const script of ["server.ts", "client.ts", "send.ts"] as const) {
    const result = await run(t, script, ["--version"]);
    assert.equal(result.code, 0);
    assert.equal(result.stdout, `${script} ${version} on ${runtimeOf()}`);
  }
});
