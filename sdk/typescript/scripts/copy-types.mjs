// tsc does not emit .d.ts sources: the generated OpenAPI types are copied next to the compiled modules, where
// dist/types.d.ts imports them from.
import { copyFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
copyFileSync(root + "src/openapi.d.ts", root + "dist/openapi.d.ts");
