// Drive a demo page in headless Chromium (Debian's, through playwright-core) for the browser tests and the bench.
//   node browser.mjs REQUEST.json  -> one JSON line on stdout
// REQUEST: {"url": page URL, "screenshot": path?, "chromium": "/usr/bin/chromium"?, "steps": [step, ...]}, a step:
//   {"classify": text, "cloud": url?}        the demo's classify (routed to `cloud`, else the page's cloud field)
//   {"route": [texts], "cloud": {...}?, "cloud_only": bool?}   the runtime's route() called in the page
//   {"generate": text, "max_new_tokens": n}  the demo's generate (streams into the page)
//   {"stream": prompt, "options": {...}}     the runtime's stream() called in the page: ids, count, timings
//   {"type": text, "cloud": url?}            a person typing the text and pressing the button
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const request = JSON.parse(readFileSync(process.argv[2], "utf8"));
const reply = { steps: [], console: [] };
let browser;
try {
  browser = await chromium.launch({ executablePath: request.chromium ?? "/usr/bin/chromium", headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
      "--disable-sync", "--no-first-run"] });
  const page = await browser.newPage({ viewport: { width: 900, height: 640 } });
  page.on("console", (m) => reply.console.push(`${m.type()}: ${m.text()}`.slice(0, 300)));
  page.on("pageerror", (e) => reply.console.push(`pageerror: ${e.message}`.slice(0, 300)));
  const t0 = Date.now();
  await page.goto(request.url, { waitUntil: "load" });
  await page.waitForFunction(() => globalThis.edgeshrinkDemo && (edgeshrinkDemo.state.ready || edgeshrinkDemo.state.error),
    null, { timeout: request.timeout_ms ?? 120000 });
  reply.ready_ms = Date.now() - t0;
  reply.state = await page.evaluate(() => ({ ...edgeshrinkDemo.state, isolated: globalThis.crossOriginIsolated }));
  reply.status = await page.textContent("#status");
  for (const step of request.steps ?? []) {
    if (reply.state.error) break;
    if (step.classify !== undefined) {
      reply.steps.push(await page.evaluate(([t, c]) => (c === null ? edgeshrinkDemo.classify(t) : edgeshrinkDemo.classify(t, c)),
        [step.classify, step.cloud ?? null]));
    } else if (step.generate !== undefined) {
      reply.steps.push(await page.evaluate(([t, n]) => edgeshrinkDemo.generate(t, n), [step.generate, step.max_new_tokens ?? 16]));
    } else if (step.route !== undefined) {
      reply.steps.push(await page.evaluate(([texts, cloud, only]) => edgeshrinkDemo.model.route(texts,
        { cloud, cloudOnly: only ? texts.map(() => true) : null }), [step.route, step.cloud ?? null, step.cloud_only ?? false]));
    } else if (step.stream !== undefined) {
      reply.steps.push(await page.evaluate(async ([prompt, options]) => {
        const info = {}, ids = [];
        let pieces = 0;
        for await (const t of edgeshrinkDemo.model.stream(prompt, { ...options, info })) { ids.push(t.id); pieces += 1; }
        return { ids, pieces, ...info };
      }, [step.stream, step.options ?? {}]));
    } else if (step.type !== undefined) {
      await page.evaluate(() => { edgeshrinkDemo.state.last = null; });
      if (step.cloud !== undefined) await page.fill("#cloud", step.cloud);
      await page.fill("#text", step.type);
      await page.click("#go");
      await page.waitForFunction(() => !document.querySelector("#go").disabled && edgeshrinkDemo.state.last, null, { timeout: 120000 });
      reply.steps.push(await page.evaluate(() => ({ shown: document.querySelector("#answer").innerText, last: edgeshrinkDemo.state.last })));
    }
  }
  if (request.screenshot) await page.screenshot({ path: request.screenshot, fullPage: true });
} catch (e) {
  reply.error = String(e.message ?? e).split("\n")[0];
} finally {
  if (browser) await browser.close();
}
process.stdout.write(JSON.stringify(reply) + "\n");
