// edgeshrink's device runtime for the web: a device bundle in a browser page or in Node, on onnxruntime-web
// (wasm), with no Python. Written by `edgeshrink pack BUNDLE --target web`, beside ./vendor (onnxruntime-web,
// the tokenizer, the chat-template engine, pinned by the project's package-lock.json) and ./model (the bundle).
//
//   import { load } from "./edgeshrink.mjs";
//   const model = await load("./model/");                 // every file's sha256 checked (WebCrypto) before use
//   await model.classify(["a gorgeous, witty film"]);    // [{label, probabilities, confidence, truncated}]
//   await model.route(["meh"], {cloud: {url: "http://127.0.0.1:8000"}});   // device or cloud, as `serve`
//   const llm = await load("./llm/");                    // a language-model bundle
//   for await (const t of llm.stream([{role: "user", content: "Hi"}], {maxNewTokens: 32})) show(t.text);
//
// It follows the Python runtime (edgeshrink.runtime, edgeshrink.route.router, edgeshrink.serve.device): the
// same tokenizer ids, the same batching and padding, the same temperature-scaled confidence signal, threshold
// and escalation reasons, and the device service's answer fields. A bundle is untrusted input: the manifest is
// checked, every path must be a plain relative one, and a file whose size or sha256 differs from the manifest
// is refused before any of it runs.

import * as ort from "./vendor/ort.wasm.min.mjs";
import { Tokenizer } from "./vendor/tokenizers.min.mjs";

export const VERSION = "1";
export { ort };

export class EdgeshrinkError extends Error {
  constructor(message) {
    super(message);
    this.name = "EdgeshrinkError";
  }
}

const MAX_MANIFEST_BYTES = 16 << 20;
const MAX_ROUTER_BYTES = 1 << 20;
const SIGNATURE_NAME = "signature.sigstore.json";  // edgeshrink.runtime.trust: OpenSSF model-signing, a local key
const MAX_SIGNATURE_BYTES = 16 << 20;
const IN_TOTO = "application/vnd.in-toto+json";
const SCHEMA_VERSION = 1;
// What this runtime runs, per bundle task (edgeshrink.runtime.tasks); anything else is refused in one line.
const TASKS = {
  "text-classification": { tokenized: true, generates: false },
  "text-generation": { tokenized: true, generates: true },
};
export const SUPPORTED_TASKS = Object.keys(TASKS);
const ESCALATE_REASONS = new Set(["cloud only", "truncated", "not confident"]);
// serve/config.py's CloudConfig defaults
export const CLOUD_DEFAULTS = { protocol: "edgeshrink", deadlineMs: 1500, retries: 2, backoffMs: 25, breakerFailures: 5,
  breakerResetS: 5, model: null, apiKey: null };

// -- files ----------------------------------------------------------------------------------------------------
function baseUrl(where) {
  if (where instanceof URL) return new URL(where.href.endsWith("/") ? where.href : where.href + "/");
  let text = String(where);
  if (!text.endsWith("/")) text += "/";
  if (/^[a-z][a-z0-9+.-]*:/i.test(text)) return new URL(text);
  if (typeof document !== "undefined" && document.baseURI) return new URL(text, document.baseURI);
  if (typeof process !== "undefined" && process.cwd) return new URL(text, `file://${process.cwd()}/`);
  return new URL(text, globalThis.location?.href);
}

const grown = (name, size, limit) => new EdgeshrinkError(
  `bundle file ${name.split("/").pop()} is corrupt or was modified (${size} bytes, the manifest says at most ${limit})`);

async function readBytes(url, limit) {
  if (url.protocol === "file:") {
    const { readFile, stat } = await import("node:fs/promises");
    const { fileURLToPath } = await import("node:url");
    const path = fileURLToPath(url);
    let info;
    try { info = await stat(path); } catch { throw new EdgeshrinkError(`bundle file ${url.pathname} is missing`); }
    if (!info.isFile()) throw new EdgeshrinkError(`bundle file ${url.pathname} is not a regular file`);
    if (limit !== undefined && info.size > limit) throw grown(path, info.size, limit);
    return new Uint8Array(await readFile(path));
  }
  let response;
  try { response = await fetch(url, { cache: "no-cache" }); } catch (e) {
    throw new EdgeshrinkError(`cannot fetch ${url.href}: ${e.message}`);
  }
  if (!response.ok) throw new EdgeshrinkError(`cannot fetch ${url.href}: HTTP ${response.status}`);
  const announced = Number(response.headers.get("content-length") ?? NaN);
  if (limit !== undefined && announced > limit) {  // refused before the body is read
    await response.body?.cancel();
    throw grown(url.pathname, announced, limit);
  }
  const bytes = new Uint8Array(await response.arrayBuffer());
  if (limit !== undefined && bytes.length > limit) throw grown(url.pathname, bytes.length, limit);
  return bytes;
}

export async function sha256Hex(bytes) {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) {
    throw new EdgeshrinkError("WebCrypto is not available (serve the page over https or from localhost): the bundle's " +
      "hashes cannot be checked, so it is not run");
  }
  const digest = new Uint8Array(await subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

function checkRelative(rel, what = "file") {
  if (typeof rel !== "string" || !rel || rel.length > 255 || rel.includes("\0") || rel.includes("\\")) {
    throw new EdgeshrinkError(`bundle ${what} ${JSON.stringify(String(rel).slice(0, 80))} is not a plain relative path`);
  }
  const parts = rel.split("/");
  if (rel.startsWith("/") || parts[0].includes(":") || parts.includes("..")) {
    throw new EdgeshrinkError(`bundle ${what} ${JSON.stringify(rel)} points outside the bundle`);
  }
  if (parts.some((p) => p === "" || p === ".")) {
    throw new EdgeshrinkError(`bundle ${what} ${JSON.stringify(rel)} is not a plain relative path`);
  }
  return rel;
}

function decodeJson(bytes, what) {
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw new EdgeshrinkError(`${what} is corrupt (not valid UTF-8 JSON)`);
  }
}

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

/** The checks runtime/bundle.py makes before any file is opened, for what this runtime reads. */
export function checkManifest(manifest, where = "bundle") {
  if (!isObject(manifest) || manifest.kind !== "edgeshrink-bundle") {
    throw new EdgeshrinkError(`${where} is not a device bundle (manifest kind ${JSON.stringify(manifest?.kind ?? null)})`);
  }
  if (!Number.isInteger(manifest.schema_version) || manifest.schema_version > SCHEMA_VERSION) {
    throw new EdgeshrinkError(`${where} has manifest schema ${manifest.schema_version}; this runtime reads up to ${SCHEMA_VERSION}`);
  }
  if (!(manifest.task in TASKS)) {
    throw new EdgeshrinkError(`${where}: bundle task ${JSON.stringify(manifest.task)} is not supported by the web runtime ` +
      `(it runs ${SUPPORTED_TASKS.join(", ")})`);
  }
  if (!isObject(manifest.files)) throw new EdgeshrinkError(`${where}: the manifest lists no files`);
  for (const [rel, meta] of Object.entries(manifest.files)) {
    checkRelative(rel);
    if (!isObject(meta) || !/^[0-9a-f]{64}$/.test(meta.sha256 ?? "") || !Number.isInteger(meta.size_bytes) || meta.size_bytes < 0) {
      throw new EdgeshrinkError(`${where}: the manifest's entry for ${rel} has no valid sha256 and size`);
    }
  }
  const tok = manifest.tokenizer;
  if (!isObject(tok) || typeof tok.file !== "string") throw new EdgeshrinkError(`${where}: a ${manifest.task} bundle needs 'tokenizer'`);
  const needed = ["model.onnx", tok.file];
  if (tok.chat_template) needed.push(tok.chat_template);
  if (manifest.router) needed.push(manifest.router.file);
  for (const rel of needed) {
    checkRelative(rel);
    if (!(rel in manifest.files)) {
      throw new EdgeshrinkError(`${where}: bundle file ${rel} is required for a ${manifest.task} bundle but not listed in the ` +
        `manifest's files (its hash cannot be checked)`);
    }
  }
  if (TASKS[manifest.task].generates) {
    if (!isObject(manifest.generation) || !Number.isInteger(manifest.generation.context_length)) {
      throw new EdgeshrinkError(`${where}: a text-generation bundle needs 'generation.context_length'`);
    }
  } else {
    if (!Array.isArray(manifest.labels) || !manifest.labels.length || !manifest.labels.every((l) => typeof l === "string")) {
      throw new EdgeshrinkError(`${where}: a text-classification bundle needs 'labels'`);
    }
    if (!Number.isInteger(manifest.max_length) || manifest.max_length < 2) throw new EdgeshrinkError(`${where}: no valid 'max_length'`);
    if (!Number.isInteger(tok.pad_id) || tok.pad_id < 0) throw new EdgeshrinkError(`${where}: a text-classification bundle needs 'tokenizer.pad_id'`);
  }
  return manifest;
}

/** A bundle file's bytes, refused unless its size and sha256 are the manifest's. */
async function verifiedFile(base, manifest, rel, limit) {
  const meta = manifest.files[checkRelative(rel)];
  if (!meta) throw new EdgeshrinkError(`bundle file ${rel} is not listed in the manifest`);
  // never more than the manifest says (a file that grew is refused before it fills memory)
  const bytes = await readBytes(new URL(rel, base), Math.min(limit ?? Infinity, meta.size_bytes) || 0);
  if (bytes.length !== meta.size_bytes || (await sha256Hex(bytes)) !== meta.sha256) {
    throw new EdgeshrinkError(`bundle file ${rel} is corrupt or was modified (sha256 does not match the manifest)`);
  }
  return bytes;
}

// -- signatures (edgeshrink.runtime.trust) ----------------------------------------------------------------------
function base64Bytes(text, what) {
  try {
    return Uint8Array.from(atob(String(text)), (c) => c.charCodeAt(0));
  } catch {
    throw new EdgeshrinkError(`${what} is not base64`);
  }
}

function pemBytes(pem) {
  const body = /-----BEGIN PUBLIC KEY-----([\s\S]+?)-----END PUBLIC KEY-----/.exec(String(pem));
  if (!body) throw new EdgeshrinkError("a trusted key is not a PEM public key (give the .pub file's text)");
  return base64Bytes(body[1].replace(/\s+/g, ""), "a trusted key");
}

/** An ECDSA signature in DER (SEQUENCE of two INTEGERs) as WebCrypto's r || s, each `size` bytes; null if malformed. */
function derToRaw(der, size = 32) {
  if (der.length < 8 || der[0] !== 0x30) return null;
  let at = der[1] & 0x80 ? 2 + (der[1] & 0x7f) : 2;
  const out = new Uint8Array(2 * size);
  for (let k = 0; k < 2; k++) {
    if (der[at] !== 0x02) return null;
    let length = der[at + 1];
    let start = at + 2;
    at = start + length;
    while (length > size && der[start] === 0) { start++; length--; }  // a leading zero keeps an INTEGER positive
    if (length > size || at > der.length) return null;
    out.set(der.subarray(start, start + length), (k + 1) * size - length);
  }
  return out;
}

const utf8 = (text) => new TextEncoder().encode(text);

/**
 * Check the bundle's signature against `trust` (PEM public keys, as text) before anything else is used: one trusted
 * key signed the DSSE envelope, and the signed statement lists exactly the manifest and the files it lists, with
 * their sha256. The files themselves are then checked against the manifest as always (so, against the signature).
 */
async function checkSignature(base, manifestBytes, manifest, trust) {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) throw new EdgeshrinkError("WebCrypto is not available: the bundle's signature cannot be checked");
  let raw;
  try {
    raw = await readBytes(new URL(SIGNATURE_NAME, base), MAX_SIGNATURE_BYTES);
  } catch (e) {
    throw new EdgeshrinkError(`bundle ${base.href} is not signed (no ${SIGNATURE_NAME}) and a trust list is given`);
  }
  const bundle = decodeJson(raw, SIGNATURE_NAME);
  const envelope = bundle?.dsseEnvelope;
  if (!isObject(envelope) || envelope.payloadType !== IN_TOTO || !Array.isArray(envelope.signatures) ||
      !envelope.signatures.length) {
    throw new EdgeshrinkError(`bundle ${base.href} is not signed by a trusted key (${SIGNATURE_NAME} holds no signature)`);
  }
  const payload = base64Bytes(envelope.payload, SIGNATURE_NAME);
  const signed = new Uint8Array([...utf8(`DSSEv1 ${IN_TOTO.length} ${IN_TOTO} ${payload.length} `), ...payload]);
  const sig = derToRaw(base64Bytes(envelope.signatures[0].sig, SIGNATURE_NAME));
  let trusted = false;
  for (const pem of trust) {
    const key = await subtle.importKey("spki", pemBytes(pem), { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"])
      .catch(() => { throw new EdgeshrinkError("a trusted key is not a P-256 public key"); });
    if (sig && await subtle.verify({ name: "ECDSA", hash: "SHA-256" }, key, sig, signed)) { trusted = true; break; }
  }
  if (!trusted) throw new EdgeshrinkError(`bundle ${base.href} is not signed by a trusted key: refused`);
  const statement = decodeJson(payload, `${SIGNATURE_NAME}'s statement`);
  const resources = statement?.predicate?.resources;
  if (!Array.isArray(resources) || statement?.predicate?.serialization?.method !== "files") {
    throw new EdgeshrinkError(`${SIGNATURE_NAME}: the signed statement lists no files`);
  }
  const digests = new Map(resources.map((r) => [r?.name, r?.algorithm === "sha256" ? r?.digest : null]));
  const differ = (rel) => new EdgeshrinkError(`bundle ${base.href} is signed by a trusted key but its files differ from ` +
    `what was signed (${rel}): refused`);
  if (digests.get("manifest.json") !== await sha256Hex(manifestBytes)) throw differ("manifest.json changed");
  for (const [rel, meta] of Object.entries(manifest.files)) {
    if (digests.get(rel) !== meta.sha256) throw differ(`${rel} ${digests.has(rel) ? "changed" : "added"}`);
  }
  for (const rel of digests.keys()) {
    if (rel !== "manifest.json" && !(rel in manifest.files)) throw differ(`${rel} missing`);
  }
}

/**
 * Load a device bundle from `where` (a URL or path of its folder). Every file the runtime uses is fetched, its size
 * and sha256 checked against the manifest, and only then handed to onnxruntime-web. Options: `threads` (wasm
 * threads; threads need a cross-origin-isolated page), `onProgress(message)`, `trust` (PEM public keys as text: the
 * bundle must be signed by one of them, `edgeshrink sign`, checked before any other file is used).
 * Returns a Classifier (text-classification) or a Generator (text-generation).
 */
export async function load(where, options = {}) {
  const base = baseUrl(where);
  const progress = options.onProgress ?? (() => {});
  const started = performance.now();
  const manifestBytes = await readBytes(new URL("manifest.json", base), MAX_MANIFEST_BYTES);
  const manifest = checkManifest(decodeJson(manifestBytes, `${base.href}manifest.json`), base.href);
  if (options.trust?.length) {
    progress("checking the signature");
    await checkSignature(base, manifestBytes, manifest, options.trust);
  }
  const tok = manifest.tokenizer;
  progress(`verifying ${Object.keys(manifest.files).length} files`);
  const modelBytes = await verifiedFile(base, manifest, "model.onnx");
  const external = [];
  for (const rel of Object.keys(manifest.files)) {
    if (/\.(onnx\.data|onnx_data|data)$/.test(rel)) external.push({ path: rel, data: await verifiedFile(base, manifest, rel) });
  }
  const tokenizerJson = decodeJson(await verifiedFile(base, manifest, tok.file), tok.file);
  let router = null;
  if (manifest.router) {
    const bytes = await verifiedFile(base, manifest, manifest.router.file, MAX_ROUTER_BYTES);
    if (manifest.router.sha256 && (await sha256Hex(bytes)) !== manifest.router.sha256) {
      throw new EdgeshrinkError(`${manifest.router.file} does not match the router hash in the manifest`);
    }
    // a language model's router (answer signals of a prompted task) is not run here: generate/stream only
    if (!TASKS[manifest.task].generates) router = checkRouter(decodeJson(bytes, manifest.router.file), manifest);
  }
  const chatTemplate = tok.chat_template
    ? new TextDecoder("utf-8", { fatal: true }).decode(await verifiedFile(base, manifest, tok.chat_template)) : null;
  progress("starting onnxruntime-web");
  if (options.threads) ort.env.wasm.numThreads = options.threads;
  let session;
  try {
    session = await ort.InferenceSession.create(modelBytes, {
      executionProviders: ["wasm"], graphOptimizationLevel: "all", ...(external.length ? { externalData: external } : {}) });
  } catch (e) {
    throw new EdgeshrinkError(`cannot load model.onnx: ${String(e.message ?? e).split("\n")[0].slice(0, 200)}`);
  }
  const tokenizer = tokenizerFrom(tokenizerJson, tok.file);
  const readyMs = performance.now() - started;
  const Kind = TASKS[manifest.task].generates ? Generator : Classifier;
  const model = new Kind({ base, manifest, session, tokenizer, router, chatTemplate });
  model.loadMs = readyMs;
  return model;
}

// The "Nmt" normalizer of sentencepiece-converted tokenizers (XLM-R and others) that tokenizers.js lacks, as the
// Rust crate defines it: drop ASCII control characters, map other whitespace code points to a space. Written as
// two Replace normalizers, which tokenizers.js has.
const NMT_AS_REPLACES = [
  { type: "Replace", pattern: { Regex: "[\u0001-\u0008\u000B\u000E-\u001F\u007F\u008F\u009F]" }, content: "" },
  { type: "Replace", pattern: { Regex: "[\u0009\u000A\u000C\u000D\u1680\u200B-\u200F\u2028\u2029\u2581\uFEFF\uFFFD]" }, content: " " },
];

function adaptNormalizer(normalizer) {
  if (!isObject(normalizer)) return normalizer;
  if (normalizer.type === "Nmt") return { type: "Sequence", normalizers: NMT_AS_REPLACES };
  if (normalizer.type === "Sequence" && Array.isArray(normalizer.normalizers)) {
    return { ...normalizer, normalizers: normalizer.normalizers.map(adaptNormalizer) };
  }
  return normalizer;
}

/** The tokenizer.json tokenizers.js is given (a copy: the verified file is not changed). */
function adaptTokenizer(json) {
  return isObject(json) ? { ...json, normalizer: adaptNormalizer(json.normalizer) } : json;
}

/** A tokenizers.js tokenizer of a parsed tokenizer.json, decoding as the Rust crate does (no clean-up). */
export function tokenizerFrom(json, name = "tokenizer.json") {
  try {
    return new Tokenizer(adaptTokenizer(json), { clean_up_tokenization_spaces: false });
  } catch (e) {
    throw new EdgeshrinkError(`${name} is not a tokenizer: ${String(e.message ?? e).split("\n")[0].slice(0, 200)}`);
  }
}

// -- classifiers ----------------------------------------------------------------------------------------------
function softmax64(row) {
  let top = -Infinity;
  for (const v of row) top = Math.max(top, v);
  const e = row.map((v) => Math.exp(v - top));
  const total = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / total);
}

/** runtime/predictor.py's tokenization of one text: ids and type ids, cut at maxLength as `tokenizers`' truncation
 * does (the content is cut, the special tokens the post-processor adds are kept). */
export function encodeText(tokenizer, text, maxLength) {
  const full = tokenizer.encode(text, { return_token_type_ids: true });
  const types = full.token_type_ids ?? full.ids.map(() => 0);
  if (full.ids.length <= maxLength) return { ids: full.ids, types, truncated: false };
  const content = tokenizer.encode(text, { add_special_tokens: false }).ids;
  let prefix = 0;
  while (prefix < full.ids.length && !sameRun(full.ids, prefix, content)) prefix += 1;
  const suffix = full.ids.length - prefix - content.length;
  const keep = Math.max(0, maxLength - prefix - suffix);
  const ids = [...full.ids.slice(0, prefix + keep), ...full.ids.slice(prefix + content.length)];
  const cutTypes = [...types.slice(0, prefix + keep), ...types.slice(prefix + content.length)];
  return { ids, types: cutTypes, truncated: true };
}

function sameRun(ids, at, content) {
  if (at + content.length > ids.length) return false;
  for (let i = 0; i < content.length; i++) if (ids[at + i] !== content[i]) return false;
  return true;
}

function int64Tensor(rows, width, fill) {
  const data = new BigInt64Array(rows.length * width).fill(BigInt(fill));
  rows.forEach((row, r) => row.forEach((v, c) => { data[r * width + c] = BigInt(v); }));
  return new ort.Tensor("int64", data, [rows.length, width]);
}

export class Classifier {
  constructor({ base, manifest, session, tokenizer, router }) {
    Object.assign(this, { base, manifest, session, tokenizer });
    this.task = manifest.task;
    this.labels = [...manifest.labels];
    this.maxLength = manifest.max_length;
    this.padId = manifest.tokenizer.pad_id;
    this.inputNames = session.inputNames;
    this.outputName = session.outputNames[0];
    const unknown = this.inputNames.filter((n) => !["input_ids", "attention_mask", "token_type_ids"].includes(n));
    if (unknown.length) throw new EdgeshrinkError(`model.onnx takes input ${JSON.stringify(unknown[0])}; a text bundle's model takes input_ids, attention_mask and token_type_ids`);
    this.router = router ? new Router(router) : null;
  }

  async run(encodings) {
    const width = Math.max(...encodings.map((e) => e.ids.length));
    const feeds = {
      input_ids: int64Tensor(encodings.map((e) => e.ids), width, this.padId),
      attention_mask: int64Tensor(encodings.map((e) => e.ids.map(() => 1)), width, 0),
      token_type_ids: int64Tensor(encodings.map((e) => e.types), width, 0),
    };
    const out = await this.session.run(Object.fromEntries(this.inputNames.map((n) => [n, feeds[n]])));
    const logits = out[this.outputName];
    const k = this.labels.length;
    if (logits.dims.length !== 2 || logits.dims[1] !== k) {
      throw new EdgeshrinkError(`model.onnx gives scores of shape [${logits.dims}], not (batch, ${k} labels)`);
    }
    const rows = [];
    for (let r = 0; r < encodings.length; r++) rows.push(Array.from(logits.data.slice(r * k, (r + 1) * k)));
    return rows;
  }

  /** Labels, probabilities (rows summing to 1, as float32 like the Python runtime), raw logits and whether each
   * text was cut at max_length. Texts of similar length share a batch (Predictor.predict's order). */
  async predict(texts, batchSize = 32) {
    texts = Array.from(texts, String);
    const logits = new Array(texts.length);
    const truncated = new Array(texts.length).fill(false);
    const order = texts.map((_, i) => i).sort((a, b) => texts[a].length - texts[b].length);
    for (let start = 0; start < order.length; start += batchSize) {
      const rows = order.slice(start, start + batchSize);
      const encodings = rows.map((i) => encodeText(this.tokenizer, texts[i], this.maxLength));
      const out = await this.run(encodings);
      rows.forEach((i, j) => { logits[i] = out[j]; truncated[i] = encodings[j].truncated; });
    }
    const probabilities = logits.map((row) => softmax64(row).map(Math.fround));
    const labels = probabilities.map((p) => this.labels[argmax(p)]);
    return { labels, probabilities, logits, truncated };
  }

  /** One answer per text: {label, probabilities: {label: p}, confidence (top probability), truncated}. */
  async classify(texts) {
    const pred = await this.predict(texts);
    return pred.labels.map((label, i) => ({
      label, confidence: Math.max(...pred.probabilities[i]), truncated: pred.truncated[i],
      probabilities: Object.fromEntries(this.labels.map((l, j) => [l, pred.probabilities[i][j]])),
    }));
  }

  /**
   * Answer on the device or escalate to the cloud, as `edgeshrink serve --cloud URL` does: the bundle's router.json
   * decides (calibrated confidence against its threshold; per-text `private` / `cloudOnly` flags), escalated texts
   * go to `cloud.url` (POST /v1/classify, or the Open Inference Protocol with `protocol: "v2"` and `model`) within
   * `cloud.deadlineMs` (retries included), and a cloud that fails or is late leaves the device's answer, with
   * source "device-fallback" and the reason. Each result has the device service's fields.
   */
  async route(texts, { cloud = null, private: priv = null, cloudOnly = null } = {}) {
    if (!this.router) throw new EdgeshrinkError("this bundle has no calibrated router; run `edgeshrink route calibrate` first");
    const started = performance.now();
    texts = Array.from(texts, String);
    const pred = await this.predict(texts);
    const { scores, reasons, escalate } = this.router.decide(pred, priv, cloudOnly);
    const up = escalate.flatMap((e, i) => (e ? [i] : []));
    let answered = new Map(), fallbackReason = null;
    if (up.length) {
      const client = cloud ? (cloud instanceof CloudClient ? cloud : new CloudClient(cloud, this.labels)) : null;
      const got = client ? await client.classify(up.map((i) => texts[i])) : { labels: null, reason: "no_cloud" };
      fallbackReason = got.reason;
      if (got.labels) up.forEach((i, j) => answered.set(i, [got.labels[j], got.probabilities[j] ?? { [got.labels[j]]: 1 }]));
    }
    const latency = performance.now() - started;
    return texts.map((_, i) => {
      const fellBack = escalate[i] && !answered.has(i);
      const [label, probabilities] = answered.get(i) ??
        [pred.labels[i], Object.fromEntries(this.labels.map((l, j) => [l, pred.probabilities[i][j]]))];
      return { label, probabilities, source: answered.has(i) ? "cloud" : fellBack ? "device-fallback" : "device",
        confidence: scores[i], latency_ms: latency, reason: reasons[i], fallback_reason: fellBack ? fallbackReason : null,
        truncated_chars: 0, truncated_tokens: pred.truncated[i] };
    });
  }
}

function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

// -- the router (route/router.py, route/confidence.py) --------------------------------------------------------
const SIGNALS = {
  "max-prob": (p) => Math.max(...p),
  "margin": (p) => { const s = [...p].sort((a, b) => b - a); return s[0] - (s.length > 1 ? s[1] : 0); },
  "neg-entropy": (p) => p.reduce((acc, v) => { const c = Math.min(Math.max(v, 1e-12), 1); return acc + c * Math.log(c); }, 0),
};

function checkRouter(settings, manifest) {
  if (!isObject(settings) || settings.kind !== "edgeshrink-router") throw new EdgeshrinkError(`${manifest.router.file} is not a router file`);
  if (!(settings.signal in SIGNALS)) {
    throw new EdgeshrinkError(`the router uses signal ${JSON.stringify(settings.signal)}, which the web runtime does not compute ` +
      `(it computes ${Object.keys(SIGNALS).join(", ")})`);
  }
  if (!(settings.temperature > 0)) throw new EdgeshrinkError(`${manifest.router.file}: temperature must be positive`);
  if (settings.threshold !== null && typeof settings.threshold !== "number") throw new EdgeshrinkError(`${manifest.router.file}: no valid threshold`);
  if (Array.isArray(settings.labels) && settings.labels.join("\n") !== manifest.labels.join("\n")) {
    throw new EdgeshrinkError(`${manifest.router.file} was calibrated for other labels than the model's`);
  }
  return settings;
}

export class Router {
  constructor(settings) {
    this.settings = settings;
    this.signal = settings.signal;
    this.temperature = settings.temperature ?? 1;
    this.threshold = settings.escalate_everything ? Infinity : settings.threshold === null ? -Infinity : settings.threshold;
    this.escalateTruncated = settings.rules?.escalate_truncated ?? true;
  }

  /** The calibrated signal of one row of probabilities: softmax(log p / T), then the signal. */
  score(probs) {
    const logits = probs.map((p) => Math.log(Math.min(Math.max(p, 1e-12), 1)) / this.temperature);
    return SIGNALS[this.signal](softmax64(logits));
  }

  decide(pred, priv = null, cloudOnly = null) {
    const n = pred.labels.length;
    priv = priv ?? new Array(n).fill(false);
    cloudOnly = cloudOnly ?? new Array(n).fill(false);
    if (priv.length !== n || cloudOnly.length !== n) throw new EdgeshrinkError("private and cloudOnly need one flag per text");
    if (priv.some((p, i) => p && cloudOnly[i])) throw new EdgeshrinkError("a request cannot be both private and cloud-only");
    const scores = pred.probabilities.map((p) => this.score(p));
    const reasons = scores.map((s, i) => priv[i] ? "private" : cloudOnly[i] ? "cloud only"
      : pred.truncated[i] && this.escalateTruncated ? "truncated" : s >= this.threshold ? "confident" : "not confident");
    return { scores, reasons, escalate: reasons.map((r) => ESCALATE_REASONS.has(r)) };
  }
}

// -- the cloud (serve/cloud_client.py) ------------------------------------------------------------------------
class AttemptFailed extends Error {
  constructor(reason, retry = true) { super(reason); this.reason = reason; this.retry = retry; }
}

/** Escalations to the cloud with a deadline (retries and backoff inside it) and a circuit breaker. Never throws:
 * classify() gives {labels, probabilities} or {labels: null, reason}. */
export class CloudClient {
  constructor(config, labels = null) {
    if (typeof config === "string") config = { url: config };
    this.config = { ...CLOUD_DEFAULTS, ...config };
    if (!/^https?:\/\/[^/]+/.test(this.config.url ?? "")) throw new EdgeshrinkError(`the cloud URL must be http(s)://host[:port], got ${JSON.stringify(this.config.url)}`);
    if (this.config.protocol === "v2" && !this.config.model) throw new EdgeshrinkError("the v2 protocol needs the cloud model's name (model)");
    if (!["edgeshrink", "v2"].includes(this.config.protocol)) throw new EdgeshrinkError(`unknown cloud protocol ${JSON.stringify(this.config.protocol)}`);
    this.url = this.config.url.replace(/\/+$/, "");
    this.labels = labels;
    this.failures = 0;
    this.openedAt = null;
    this.probing = false;
  }

  get breaker() {
    if (this.openedAt === null) return "closed";
    return performance.now() - this.openedAt >= this.config.breakerResetS * 1000 ? "half-open" : "open";
  }

  record(ok) {
    this.probing = false;
    if (ok) { this.failures = 0; this.openedAt = null; return; }
    this.failures += 1;
    if (this.openedAt !== null || this.failures >= this.config.breakerFailures) this.openedAt = performance.now();
  }

  async classify(texts) {
    const state = this.breaker;
    if (state === "open" || (state === "half-open" && this.probing)) return { labels: null, probabilities: null, reason: "breaker_open", attempts: 0 };
    if (state === "half-open") this.probing = true;
    const deadline = performance.now() + this.config.deadlineMs;
    let attempts = 0, reason = "unreachable";
    while (attempts <= this.config.retries) {
      const remaining = deadline - performance.now();
      if (remaining <= 0) { reason = "deadline"; break; }
      attempts += 1;
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(), remaining);
      let retry = true;
      try {
        const response = await fetch(this.endpoint(), { method: "POST", body: JSON.stringify(this.body(texts)), signal: abort.signal,
          headers: { "content-type": "application/json", ...(this.config.apiKey ? { "x-api-key": this.config.apiKey } : {}) } });
        if (response.status !== 200) throw new AttemptFailed(`http_${Math.floor(response.status / 100)}xx`, response.status >= 500 || response.status === 429);
        let answer;
        try { answer = this.parse(await response.json(), texts.length); } catch (e) {
          if (e.name === "AbortError") throw e;
          throw new AttemptFailed("bad_response", false);
        }
        clearTimeout(timer);
        this.record(true);
        return { ...answer, reason: null, attempts };
      } catch (e) {
        if (e instanceof AttemptFailed) { reason = e.reason; retry = e.retry; }
        else if (e.name === "AbortError" || abort.signal.aborted) { reason = "deadline"; retry = false; }
        else reason = "unreachable";
      } finally {
        clearTimeout(timer);
      }
      const pause = this.config.backoffMs * 2 ** (attempts - 1);
      if (!retry || attempts > this.config.retries || performance.now() + pause >= deadline) break;
      await new Promise((resolve) => setTimeout(resolve, pause));
    }
    this.record(false);
    return { labels: null, probabilities: null, reason, attempts };
  }

  endpoint() {
    return this.config.protocol === "v2" ? `${this.url}/v2/models/${encodeURIComponent(this.config.model)}/infer` : `${this.url}/v1/classify`;
  }

  body(texts) {
    if (this.config.protocol !== "v2") return { texts };
    return { inputs: [{ name: "text", datatype: "BYTES", shape: [texts.length], data: texts }],
      outputs: [{ name: "logits", parameters: { classification: this.labels ? this.labels.length : 1 } }] };
  }

  parse(answer, n) {
    const known = (labels) => !this.labels || labels.every((l) => this.labels.includes(l));
    if (this.config.protocol !== "v2") {
      const results = answer.results;
      const labels = results.map((r) => r.label);
      if (labels.length !== n || !labels.every((l) => typeof l === "string") || !known(labels)) throw new Error("bad answers");
      return { labels, probabilities: results.map((r) => (isObject(r.probabilities) ? r.probabilities : null)) };
    }
    const output = answer.outputs.find((o) => o.name === "logits");
    if (output.datatype !== "BYTES" || output.shape.length !== 2 || output.shape[0] !== n) throw new Error("not a classification output");
    const k = output.shape[1];
    if (output.data.length !== n * k) throw new Error("wrong number of entries");
    const labels = [], probabilities = [];
    for (let row = 0; row < n; row++) {
      const scores = {};
      for (const entry of output.data.slice(row * k, (row + 1) * k)) {
        const [score, , ...rest] = entry.split(":");
        scores[rest.join(":")] = Number(score);
      }
      if (!known(Object.keys(scores))) throw new Error("labels the device does not know");
      const top = Math.max(...Object.values(scores));
      const weights = Object.fromEntries(Object.entries(scores).map(([l, s]) => [l, Math.exp(s - top)]));
      const total = Object.values(weights).reduce((a, b) => a + b, 0);
      labels.push(Object.keys(scores).reduce((a, b) => (scores[b] > scores[a] ? b : a)));
      probabilities.push(Object.fromEntries(Object.entries(weights).map(([l, w]) => [l, w / total])));
    }
    return { labels, probabilities };
  }
}

// -- language models (runtime/generate.py, runtime/sampling.py) -----------------------------------------------
const DEFAULT_NEW_TOKENS = 128;
const DTYPES = { float32: Float32Array, float16: Uint16Array };

/** A seeded generator of uniform numbers in [0, 1) (mulberry32): sampling repeats seed for seed within this
 * runtime (its draws are not numpy's, so sampled answers differ from the Python runtime's; greedy ones do not). */
function rng(seed) {
  let a = (seed ?? Math.floor(Math.random() * 2 ** 32)) >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function logSoftmax(row) {
  let top = -Infinity;
  for (const v of row) if (v > top) top = v;
  let total = 0;
  for (const v of row) total += Math.exp(v - top);
  const lse = top + Math.log(total);
  return Float64Array.from(row, (v) => v - lse);
}

/** sampling.penalized: repetition (divide positive / multiply negative logits), frequency and presence penalties
 * over the tokens generated so far. */
export function penalized(row, s, generated) {
  if ((s.repetitionPenalty ?? 1) === 1 && !s.frequencyPenalty && !s.presencePenalty) return row;
  if (!generated.length) return row;
  const out = Float32Array.from(row);
  const counts = new Map();
  for (const id of generated) if (id >= 0 && id < out.length) counts.set(id, (counts.get(id) ?? 0) + 1);
  for (const [id, count] of counts) {
    let v = out[id];
    if ((s.repetitionPenalty ?? 1) !== 1) v = v > 0 ? v / s.repetitionPenalty : v * s.repetitionPenalty;
    v -= (s.frequencyPenalty ?? 0) * count + (s.presencePenalty ?? 0);
    out[id] = v;
  }
  return out;
}

/** sampling.distribution: the ids and probabilities a sampler draws from (temperature, top-k, top-p); one-hot on
 * the argmax at temperature 0. */
export function distribution(row, s) {
  if (!s.temperature) return { ids: [argmax(row)], probs: [1] };
  const scaled = logSoftmax(row).map((v) => v / s.temperature);
  let order = Array.from(scaled.keys()).sort((a, b) => scaled[b] - scaled[a] || a - b);
  if (s.topK) order = order.slice(0, s.topK);
  const top = scaled[order[0]];
  let probs = order.map((i) => Math.exp(scaled[i] - top));
  let total = probs.reduce((a, b) => a + b, 0);
  probs = probs.map((p) => p / total);
  if ((s.topP ?? 1) < 1) {
    let cum = 0, keep = order.length;
    for (let i = 0; i < probs.length; i++) { cum += probs[i]; if (cum >= s.topP) { keep = i + 1; break; } }
    order = order.slice(0, keep);
    total = probs.slice(0, keep).reduce((a, b) => a + b, 0);
    probs = probs.slice(0, keep).map((p) => p / total);
  }
  return { ids: order, probs };
}

function checkSampling(s) {
  if (!(s.temperature >= 0 && Number.isFinite(s.temperature) && s.topP > 0 && s.topP <= 1 && s.topK >= 0)) {
    throw new EdgeshrinkError("need temperature >= 0, 0 < topP <= 1, topK >= 0 (finite numbers)");
  }
  if (!(s.repetitionPenalty > 0 && Number.isFinite(s.repetitionPenalty))) throw new EdgeshrinkError("repetitionPenalty must be a positive number (1: off)");
  for (const name of ["frequencyPenalty", "presencePenalty"]) {
    if (!(s[name] >= -2 && s[name] <= 2)) throw new EdgeshrinkError(`${name} must be in [-2, 2] (0: off)`);
  }
}

export class Generator {
  constructor({ base, manifest, session, tokenizer, chatTemplate }) {
    Object.assign(this, { base, manifest, session, tokenizer, chatTemplate });
    this.task = manifest.task;
    this.inputNames = session.inputNames;
    this.pastNames = this.inputNames.filter((n) => n.startsWith("past_key_values."));
    const missing = ["input_ids", ...this.pastNames.map((n) => n.replace("past_key_values.", "present."))]
      .filter((n) => !this.inputNames.includes(n) && !session.outputNames.includes(n));
    if (!session.outputNames.includes("logits")) missing.unshift("logits");
    if (missing.length) throw new EdgeshrinkError(`model.onnx is not a decoder with a KV cache (no ${JSON.stringify(missing[0])})`);
    const declared = Object.fromEntries((manifest.inputs ?? []).map((i) => [i.name, i]));
    this.past = this.pastNames.map((name) => {
      const meta = declared[name];
      if (!meta || !Array.isArray(meta.shape) || meta.shape.length !== 4 || !(meta.dtype in DTYPES)) {
        throw new EdgeshrinkError(`the manifest does not describe the KV-cache input ${name} ([batch, heads, sequence, head dim])`);
      }
      return { name, heads: meta.shape[1], headDim: meta.shape[3], dtype: meta.dtype };
    });
    if (this.past.some((p) => !Number.isInteger(p.heads) || !Number.isInteger(p.headDim))) {
      throw new EdgeshrinkError("the manifest's KV-cache shapes need fixed head counts and sizes");
    }
    this.eosIds = new Set(manifest.generation.eos_token_ids ?? []);
    this.contextLength = manifest.generation.context_length;
    this.addSpecial = manifest.tokenizer.add_special_tokens ?? true;
    this._template = null;
  }

  /** Token ids of a prompt: a string (tokenized as is) or chat messages (the bundle's chat template). */
  async encode(prompt) {
    if (typeof prompt === "string") return this.tokenizer.encode(prompt, { add_special_tokens: this.addSpecial }).ids;
    return this.tokenizer.encode(await this.renderChat(prompt), { add_special_tokens: false }).ids;
  }

  async renderChat(messages) {
    if (!this.chatTemplate) throw new EdgeshrinkError("this bundle has no chat template: give a plain prompt, not chat messages");
    if (!this._template) {
      const { Template } = await import("./vendor/jinja.mjs");
      try { this._template = new Template(this.chatTemplate); } catch (e) {
        throw new EdgeshrinkError(`chat template: ${String(e.message ?? e).split("\n")[0].slice(0, 200)}`);
      }
    }
    try {
      return this._template.render({ messages, add_generation_prompt: true, ...(this.manifest.tokenizer.special_tokens ?? {}) });
    } catch (e) {
      throw new EdgeshrinkError(`chat template: ${String(e.message ?? e).split("\n")[0].slice(0, 200)}`);
    }
  }

  emptyPast() {
    return Object.fromEntries(this.past.map((p) => [p.name, new ort.Tensor(p.dtype, new DTYPES[p.dtype](0), [1, p.heads, 0, p.headDim])]));
  }

  /** Run `ids` after `total - ids.length` cached positions: the last position's logits and the new cache. */
  async step(ids, past, total) {
    const feeds = { input_ids: new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]) };
    if (this.inputNames.includes("attention_mask")) feeds.attention_mask = new ort.Tensor("int64", new BigInt64Array(total).fill(1n), [1, total]);
    if (this.inputNames.includes("position_ids")) {
      feeds.position_ids = new ort.Tensor("int64", BigInt64Array.from({ length: ids.length }, (_, i) => BigInt(total - ids.length + i)), [1, ids.length]);
    }
    Object.assign(feeds, past);
    let out;
    try { out = await this.session.run(feeds); } catch (e) {
      throw new EdgeshrinkError(`model.onnx failed to run: ${String(e.message ?? e).split("\n")[0].slice(0, 200)}`);
    }
    const logits = out.logits;
    const vocab = logits.dims[logits.dims.length - 1];
    const last = logits.data.subarray((ids.length - 1) * vocab, ids.length * vocab);
    const next = Object.fromEntries(this.past.map((p) => [p.name, out[p.name.replace("past_key_values.", "present.")]]));
    return { row: Float32Array.from(last), past: next };
  }

  /** Logits of the last prompt position after one prefill pass (for checks against the Python runtime). */
  async lastLogits(ids) {
    return (await this.step(ids, this.emptyPast(), ids.length)).row;
  }

  /**
   * Yield {id, text, logprob} as tokens are produced. Options (as Generator.stream in Python): maxNewTokens (64;
   * null: what the context leaves, at most 128), temperature (0: greedy), topK, topP, stop (strings), seed,
   * ignoreEos, repetitionPenalty (1: off), frequencyPenalty, presencePenalty, info (an object that receives
   * promptTokens, firstTokenMs, decodeTokensPerS and stopReason: eos | stop | length).
   */
  async *stream(prompt, options = {}) {
    const s = { temperature: options.temperature ?? 0, topK: options.topK ?? 0, topP: options.topP ?? 1,
      repetitionPenalty: options.repetitionPenalty ?? 1, frequencyPenalty: options.frequencyPenalty ?? 0,
      presencePenalty: options.presencePenalty ?? 0 };
    checkSampling(s);
    const stop = options.stop ?? [];
    if (stop.some((x) => typeof x !== "string" || !x)) throw new EdgeshrinkError("a stop string must be a non-empty string");
    let maxNew = options.maxNewTokens === undefined ? 64 : options.maxNewTokens;
    if (maxNew !== null && !(Number.isInteger(maxNew) && maxNew > 0)) throw new EdgeshrinkError(`maxNewTokens must be a positive whole number, got ${maxNew}`);
    const ids = Array.isArray(prompt) && typeof prompt[0] === "number" ? [...prompt] : await this.encode(prompt);
    if (!ids.length) throw new EdgeshrinkError("the prompt is empty");
    if (ids.length + (maxNew ?? 1) > this.contextLength) {
      throw new EdgeshrinkError(`prompt of ${ids.length} tokens + maxNewTokens ${maxNew ?? 1} exceeds the context length ${this.contextLength}`);
    }
    if (maxNew === null) maxNew = Math.min(DEFAULT_NEW_TOKENS, this.contextLength - ids.length);
    const info = options.info ?? {};
    Object.assign(info, { promptTokens: ids.length, stopReason: "length" });
    const draw = rng(options.seed);
    const started = performance.now();
    let { row, past } = await this.step(ids, this.emptyPast(), ids.length);
    let total = ids.length, textSoFar = "", decodeStarted = started;
    const generated = [];
    for (let step = 0; step < maxNew; step++) {
      const logprobs = logSoftmax(row);
      const { ids: support, probs } = distribution(penalized(row, s, generated), s);
      let token = support[0];
      if (support.length > 1) {
        let u = draw(), acc = 0;
        for (let i = 0; i < support.length; i++) { acc += probs[i]; if (u < acc) { token = support[i]; break; } token = support[i]; }
      }
      if (step === 0) { info.firstTokenMs = performance.now() - started; decodeStarted = performance.now(); }
      if (this.eosIds.has(token) && !options.ignoreEos) { info.stopReason = "eos"; break; }
      generated.push(token);
      const text = this.tokenizer.decode(generated, { skip_special_tokens: true });
      let piece = "";
      if (!(text.endsWith("\ufffd") && step + 1 < maxNew)) { piece = text.slice(textSoFar.length); textSoFar = text; }
      yield { id: token, text: piece, logprob: logprobs[token] };
      if (stop.length && stop.some((x) => textSoFar.includes(x))) { info.stopReason = "stop"; break; }
      if (step + 1 < maxNew) {
        total += 1;
        ({ row, past } = await this.step([token], past, total));
      }
    }
    const steps = generated.length - 1;
    info.decodeTokensPerS = steps > 0 ? steps / ((performance.now() - decodeStarted) / 1000) : null;
  }

  /** Generate to the end: {text, tokenIds, logprobs, stopReason, promptTokens, firstTokenMs, decodeTokensPerS}. */
  async generate(prompt, options = {}) {
    const info = {};
    const tokens = [];
    for await (const t of this.stream(prompt, { ...options, info })) tokens.push(t);
    let text = tokens.map((t) => t.text).join("");
    for (const x of options.stop ?? []) if (text.includes(x)) text = text.slice(0, text.indexOf(x));
    return { text, tokenIds: tokens.map((t) => t.id), logprobs: tokens.map((t) => t.logprob), stopReason: info.stopReason,
      promptTokens: info.promptTokens, firstTokenMs: info.firstTokenMs ?? 0, decodeTokensPerS: info.decodeTokensPerS };
  }
}
