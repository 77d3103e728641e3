// The demo page's logic: load ./model/ with edgeshrink.mjs, then classify / route (classifiers) or stream
// (language models). `window.edgeshrinkDemo` exposes the same steps to scripts (the browser tests drive it).
import { load } from "./edgeshrink.mjs";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
if (params.get("cloud")) $("cloud").value = params.get("cloud");
const threads = globalThis.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
const state = { ready: false, error: null, loadMs: null, task: null, last: null };
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);

let model = null;
const started = performance.now();
const ready = load("./model/", { threads, onProgress: (m) => { $("status").textContent = `${m}…`; } }).then((m) => {
  model = m;
  state.ready = true;
  state.loadMs = performance.now() - started;
  state.task = m.task;
  const generates = m.task === "text-generation";
  $("status").className = "ready";
  $("status").textContent = `ready in ${state.loadMs.toFixed(0)} ms: ${m.task} bundle, ${threads} wasm thread${threads > 1 ? "s" : ""}` +
    (generates ? "" : m.router ? `, router ${m.router.signal} ≥ ${m.router.threshold.toFixed(3)}` : ", no router (device only)");
  $("go").textContent = generates ? "Generate" : "Classify";
  if (generates) { $("cloud-row").hidden = true; $("text").value = "What is the capital of France?"; }
  $("go").disabled = false;
}).catch((e) => {
  state.error = String(e.message ?? e);
  $("status").className = "error";
  $("status").textContent = `refused: ${state.error}`;
});

async function classify(text, cloudUrl = $("cloud").value.trim()) {
  const t0 = performance.now();
  let r;
  if (model.router) r = (await model.route([text], { cloud: cloudUrl ? { url: cloudUrl } : null }))[0];
  else r = { ...(await model.classify([text]))[0], source: "device", reason: "no router", latency_ms: performance.now() - t0 };
  state.last = r;
  const probs = Object.entries(r.probabilities).map(([l, p]) => `${esc(l)} ${(100 * p).toFixed(1)}%`).join(" · ");
  $("answer").innerHTML = `<div class="card"><span class="label" id="label">${esc(r.label)}</span>` +
    `<span class="tag ${esc(r.source)}" id="source">${esc(r.source)}</span>` +
    `<div class="facts">device confidence ${r.confidence.toFixed(3)} · ${esc(r.reason)}${r.fallback_reason ? ` (${esc(r.fallback_reason)})` : ""}` +
    ` · ${r.latency_ms.toFixed(1)} ms</div><div class="facts">${probs}</div></div>`;
  return r;
}

async function generate(text, maxNewTokens = 48) {
  $("answer").innerHTML = `<div class="card"><div id="stream"></div><div class="facts" id="speed">…</div></div>`;
  const info = {};
  const pieces = [];
  for await (const token of model.stream([{ role: "user", content: text }], { maxNewTokens, repetitionPenalty: 1.1, info })) {
    pieces.push(token.text);
    $("stream").textContent = pieces.join("");
    $("speed").textContent = `${pieces.length} tokens…`;
  }
  const result = { text: pieces.join(""), tokens: pieces.length, ...info };
  state.last = result;
  $("speed").textContent = `${result.tokens} tokens · first token ${info.firstTokenMs.toFixed(0)} ms · ` +
    `${info.decodeTokensPerS ? info.decodeTokensPerS.toFixed(1) : "–"} tokens/s · stopped: ${info.stopReason} · on this device`;
  return result;
}

async function run() {
  $("go").disabled = true;
  try {
    if (model.task === "text-generation") await generate($("text").value);
    else await classify($("text").value);
  } catch (e) {
    $("answer").innerHTML = `<div class="card">error: ${esc(e.message ?? e)}</div>`;
  } finally {
    $("go").disabled = false;
  }
}
$("go").addEventListener("click", run);
globalThis.edgeshrinkDemo = { ready, state, classify, generate, get model() { return model; } };
