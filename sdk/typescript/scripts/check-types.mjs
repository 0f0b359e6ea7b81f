// Regenerates the OpenAPI types into a temporary file and fails when the committed src/openapi.d.ts differs:
// the types must be what internal/api/openapi.yaml says. Fix a failure with `npm run gen:types`.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "aetherium-openapi-"));
try {
  const fresh = join(dir, "openapi.d.ts");
  execFileSync(process.execPath, [
    join(root, "node_modules/openapi-typescript/bin/cli.js"),
    join(root, "../../internal/api/openapi.yaml"),
    "--output", fresh,
  ], { stdio: ["ignore", "ignore", "inherit"] });
  const want = readFileSync(fresh, "utf8");
  const have = readFileSync(join(root, "src/openapi.d.ts"), "utf8");
  if (want !== have) {
    const a = have.split("\n"), b = want.split("\n");
    let i = 0;
    while (i < a.length && i < b.length && a[i] === b[i]) i++;
    console.error(`src/openapi.d.ts is out of date with internal/api/openapi.yaml (first difference at line ${i + 1}):`);
    console.error(`  committed: ${a[i] ?? "<end of file>"}`);
    console.error(`  generated: ${b[i] ?? "<end of file>"}`);
    console.error("run `npm run gen:types` in sdk/typescript and commit the result");
    process.exit(1);
  }
  console.log("src/openapi.d.ts matches internal/api/openapi.yaml");
} finally {
  rmSync(dir, { recursive: true, force: true });
}
