// The package's promises about itself: ESM with types, no runtime dependencies, and compiled modules that import
// nothing but each other (no Node.js built-ins), so they run in browsers as they are.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const pkg = JSON.parse(readFileSync(root + "package.json", "utf8"));

test("ESM with types and no runtime dependencies", () => {
  assert.equal(pkg.name, "@aetherium/sdk");
  assert.equal(pkg.type, "module");
  assert.equal(pkg.exports["."].types, "./dist/index.d.ts");
  assert.equal(pkg.dependencies, undefined);
  for (const [name, version] of Object.entries(pkg.devDependencies)) {
    assert.match(version, /^\d+\.\d+\.\d+$/, `${name} is pinned`);
  }
});

test("the compiled modules import only each other", () => {
  const files = readdirSync(root + "dist").filter((f) => f.endsWith(".js"));
  assert.ok(files.includes("index.js"));
  for (const f of files) {
    // The code without its comments (whose examples may well mention process.env).
    const src = readFileSync(root + "dist/" + f, "utf8")
      .replace(/\/\*[\s\S]*?\*\//g, "")
      .replace(/^\s*\/\/.*$/gm, "");
    for (const m of src.matchAll(/(?:import|export)\s[^;]*?from\s*["']([^"']+)["']/g)) {
      assert.match(m[1], /^\.\/[a-z]+\.js$/, `${f} imports ${m[1]}`);
    }
    assert.doesNotMatch(src, /\brequire\(|\bimport\(|process\.env/, `${f} uses no Node.js-only loading or globals`);
  }
  assert.ok(readdirSync(root + "dist").includes("openapi.d.ts"), "the generated types are shipped");
});
