// Drive a packed web folder from Node for the parity tests and the bench (tests/web, benchmarks/web_bench.py).
//   node node_run.mjs PACK_DIR REQUEST.json   -> one JSON line on stdout
// REQUEST: {"tokenize": [texts], "tokenizer": path} (the runtime's tokenizer only) | {"classify": [texts]} | {"route": [texts], "cloud": {...}?} | {"generate": prompt, "options": {...}}
//          | {"bench_classify": text, "repeats": n, "warmup_s": s} | {"bench_generate": prompt, "options": {...}, "repeats": n}
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import path from "node:path";

const [packDir, requestPath] = process.argv.slice(2);
const request = JSON.parse(readFileSync(requestPath, "utf8"));
const pack = pathToFileURL(path.resolve(packDir) + "/");
const es = await import(new URL("edgeshrink.mjs", pack).href);
const reply = {};
try {
  if (request.tokenize) {  // the runtime's tokenizer alone: ids (and decoded text) of each text
    const tok = es.tokenizerFrom(JSON.parse(readFileSync(request.tokenizer, "utf8")));
    reply.ids = request.tokenize.map((t) => tok.encode(t).ids);
    reply.decoded = reply.ids.map((ids) => tok.decode(ids, { skip_special_tokens: true }));
  } else {
    await runModel();
  }
} catch (e) {
  reply.error = String(e.message ?? e).split("\n")[0];
  reply.error_name = e.name;
}
process.stdout.write(JSON.stringify(reply) + "\n");

async function runModel() {
  const t0 = performance.now();
  const model = await es.load(new URL("model/", pack), { threads: request.threads ?? 1, trust: request.trust ?? null });
  reply.load_ms = performance.now() - t0;
  if (request.classify) {
    const pred = await model.predict(request.classify);
    reply.labels = pred.labels; reply.logits = pred.logits; reply.probabilities = pred.probabilities; reply.truncated = pred.truncated;
    if (model.router) {
      const d = model.router.decide(pred);
      reply.scores = d.scores; reply.reasons = d.reasons; reply.escalate = d.escalate;
    }
  }
  if (request.route) reply.results = await model.route(request.route, { cloud: request.cloud ?? null });
  if (request.generate !== undefined) reply.generation = await model.generate(request.generate, request.options ?? {});
  if (request.logits_of) reply.last_logits = Array.from(await model.lastLogits(request.logits_of));
  if (request.bench_classify) {
    const times = [];
    // warm up for warmup_s seconds: V8 runs the 14 MB wasm on its baseline compiler first and swaps in optimized
    // code as it is compiled in the background (seconds on 2 cores); time only the steady state
    const until = performance.now() + 1000 * (request.warmup_s ?? 5);
    while (performance.now() < until) await model.predict([request.bench_classify]);
    for (let i = 0; i < request.repeats; i++) { const t = performance.now(); await model.predict([request.bench_classify]); times.push(performance.now() - t); }
    reply.times_ms = times;
  }
  if (request.bench_generate !== undefined) {
    reply.runs = [];
    await model.generate(request.bench_generate, { ...(request.options ?? {}), maxNewTokens: 4 });  // warm-up
    for (let i = 0; i < request.repeats; i++) {
      const g = await model.generate(request.bench_generate, request.options ?? {});
      reply.runs.push({ first_token_ms: g.firstTokenMs, decode_tokens_per_s: g.decodeTokensPerS, tokens: g.tokenIds.length });
    }
  }
}
