// One decode step of a language-model graph in onnxruntime-web (wasm, 1 thread, Node): the time per step after a
// past of P positions, and the share of each operator (ORT's profiler). Used by benchmarks/web_llm_kernels.py.
//   node benchmarks/web_step.mjs MODEL.onnx SPEC.json   SPEC: {"past": [[name, heads, head_dim], ...], "past_length": P,
//                                                             "runs": n, "ort": path of ort.wasm.min.mjs}
import { readFileSync } from "node:fs";

const [modelPath, specPath] = process.argv.slice(2);
const spec = JSON.parse(readFileSync(specPath, "utf8"));
const ort = await import(spec.ort);
ort.env.wasm.numThreads = 1;
const P = spec.past_length;
const feeds = {
  input_ids: new ort.Tensor("int64", BigInt64Array.from([504n]), [1, 1]),
  attention_mask: new ort.Tensor("int64", new BigInt64Array(P + 1).fill(1n), [1, P + 1]),
};
for (const [name, heads, dim] of spec.past) feeds[name] = new ort.Tensor("float32", new Float32Array(heads * P * dim), [1, heads, P, dim]);
async function time(session, runs) {
  const names = new Set(session.inputNames);
  const f = Object.fromEntries(Object.entries(feeds).filter(([k]) => names.has(k)));
  for (let i = 0; i < 3; i++) await session.run(f);
  const times = [];
  for (let i = 0; i < runs; i++) { const t = performance.now(); await session.run(f); times.push(performance.now() - t); }
  return times.sort((a, b) => a - b)[Math.floor(times.length / 2)];
}
const bytes = readFileSync(modelPath);
const plain = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
const step_ms = await time(plain, spec.runs);
await plain.release();
// the profile of one step: ORT prints its events (one JSON object a line) on stdout; the caller parses them
const profiled = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], graphOptimizationLevel: "all", enableProfiling: true });
await time(profiled, 1);
profiled.endProfiling();
process.stdout.write("\n" + JSON.stringify({ step_ms }) + "\n");
