// Compiled (never run) by `npm run check:consumer`, once with the DOM library (browsers) and once with @types/node
// only (Node.js): the package's published declarations (dist/*.d.ts, the
// generated OpenAPI types among them) must type-check in a strict project, and say what the API sends.
import {
  Aetherium,
  NotFoundError,
  TaskError,
  isCode,
  type Execution,
  type ExecutionEvent,
  type RunEvent,
  type Shell,
  type VM,
  type components,
} from "../../dist/index.js";

export async function example(ae: Aetherium): Promise<void> {
  const vm: VM = await ae.vms.createAndWait({ name: "demo", vcpus: 1, memory_mb: 512, tools: ["git"] });
  const status: "pending" | "creating" | "running" | "paused" | "stopping" | "stopped" | "deleted" | "failed" = vm.status;
  const exec: Execution = await ae.executions.run(vm.id, { command: "echo", args: ["hi"] }, { timeoutMs: 30_000 });
  const code: number | null = exec.exit_code;
  for await (const ev of ae.executions.stream(exec.id)) {
    const e: ExecutionEvent = ev;
    if (e.type === "end") console.log(e.end.exit_code);
    else console.log(e.offset, e.data.byteLength);
  }
  const dl = await ae.files.download(vm.id, "/etc/hostname");
  const body: ReadableStream<Uint8Array> = dl.body;
  void body;
  const sh: Shell = await ae.shells.open(vm.id, { onStdout: (d: Uint8Array) => void d });
  sh.write("exit\n");
  const exit = await sh.wait();
  console.log(exit.exitCode, status, code);
  for await (const r of ae.runs.stream("id", { after: 3 })) {
    const e: RunEvent = r;
    console.log(e.seq, e.type, e.data["status"]);
  }
  try {
    await ae.vms.get("x");
  } catch (err) {
    if (err instanceof NotFoundError) console.log(err.status, err.code, err.requestId);
    if (err instanceof TaskError) console.log(err.taskId);
    console.log(isCode(err, "vm_not_running"));
  }
  const req: components["schemas"]["CreateJobRequest"] = { vm_id: vm.id, commands: [{ command: "true" }] };
  const job = await ae.jobs.runAndWait(req);
  console.log(job.executions.length);
  // @ts-expect-error: the generated types know the request's fields
  await ae.vms.create({ name: "x", vcpu: 1 });
}
