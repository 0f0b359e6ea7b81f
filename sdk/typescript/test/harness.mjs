// Starts a real `aetherium serve` for the tests: the Docker backend, networking off, a temporary data directory and
// a free loopback port, as test/e2e's serveEnv does. The binaries come from AETHERIUM_BIN_DIR (default ../../bin).
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, existsSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL(".", import.meta.url));
export const binDir = resolve(here, "..", process.env.AETHERIUM_BIN_DIR ?? "../../bin");

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Whether the Docker engine answers; without it the tests fail when AETHERIUM_REQUIRE_SERVICES=1, else skip. */
export function dockerAvailable() {
  try {
    execFileSync("docker", ["version", "--format", "{{.Server.Version}}"], { stdio: "ignore", timeout: 15000 });
    return true;
  } catch {
    return false;
  }
}

/** Starts serve; resolves with { baseUrl, apiKey, stop(), log() } once it has a live worker. */
export async function startServe() {
  const bin = join(binDir, "aetherium");
  if (!existsSync(bin)) throw new Error(`no aetherium binary at ${bin}: run make build, or set AETHERIUM_BIN_DIR`);
  const dataDir = mkdtempSync(join(tmpdir(), "ae-sdkts-"));
  const port = await freePort();
  const addr = `127.0.0.1:${port}`;
  const workerId = `sdk-ts-${process.pid}-${port}`;
  const env = {
    ...process.env,
    AETHERIUM_DATA_DIR: dataDir,
    AETHERIUM_LISTEN: addr,
    AETHERIUM_AGENT_BINARY: join(binDir, "aetherium-agent"),
    AETHERIUM_LOG_LEVEL: "info",
    AETHERIUM_BACKEND: "docker",
    // Host networking would change this machine's interfaces and firewall.
    AETHERIUM_NETWORK: "off",
    AETHERIUM_WORKER_ID: workerId,
  };
  const child = spawn(bin, ["serve"], { env, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  const keep = (b) => {
    out += b.toString();
    if (out.length > 1 << 20) out = out.slice(-(1 << 19));
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  let exited = false;
  child.on("exit", () => (exited = true));
  // Should the test process end without its after hook (an uncaught error), serve must not outlive it.
  const reap = () => {
    if (!exited) child.kill("SIGKILL");
  };
  process.once("exit", reap);

  const stop = async () => {
    process.removeListener("exit", reap);
    if (!exited) {
      child.kill("SIGTERM");
      for (let i = 0; i < 100 && !exited; i++) await sleep(100);
      if (!exited) child.kill("SIGKILL");
      for (let i = 0; i < 50 && !exited; i++) await sleep(100);
    }
    // The Docker VMs of this worker, should a test have left one.
    try {
      const ids = execFileSync("docker", ["ps", "-aq", "--filter", `label=aetherium.worker-id=${workerId}`], { encoding: "utf8" })
        .split(/\s+/)
        .filter(Boolean);
      if (ids.length) execFileSync("docker", ["rm", "-f", ...ids], { stdio: "ignore" });
    } catch {
      // Docker gone: nothing to clean.
    }
    rmSync(dataDir, { recursive: true, force: true });
  };

  try {
    const baseUrl = `http://${addr}`;
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (exited) throw new Error(`serve exited early:\n${out}`);
      if (Date.now() > deadline) throw new Error(`serve did not answer on ${addr} within 60 s:\n${out}`);
      try {
        const r = await fetch(`${baseUrl}/api/v1/health`);
        if (r.status === 200) break;
      } catch {
        // Not listening yet.
      }
      await sleep(50);
    }
    const apiKey = readFileSync(join(dataDir, "admin-api-key"), "utf8").split("\n")[0].trim();
    // Readiness, and a live worker (readiness alone does not wait for workers).
    for (;;) {
      if (Date.now() > deadline) throw new Error(`serve not ready within 60 s:\n${out}`);
      const h = { Authorization: `Bearer ${apiKey}` };
      const ready = await fetch(`${baseUrl}/api/v1/ready`, { headers: h }).then((r) => r.json(), () => ({}));
      if (ready.status === "ready") {
        const st = await fetch(`${baseUrl}/api/v1/status`, { headers: h }).then((r) => r.json(), () => ({}));
        if (st.workers?.live > 0) break;
      }
      await sleep(100);
    }
    return { baseUrl, apiKey, workerId, stop, log: () => out };
  } catch (err) {
    await stop();
    throw err;
  }
}
