// Drive a demo page in headless Chromium (Debian's, through playwright-core) for the browser tests and the bench.
//   node browser.mjs REQUEST.json  -> one JSON line on stdout
// REQUEST: {"url": page URL, "screenshot": path?, "steps": [{"classify": text, "cloud": url?} |
//           {"generate": text, "max_new_tokens": n} | {"click": true}], "chromium": "/usr/bin/chromium"?}
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
      reply.steps.push(await page.evaluate(([t, c]) => edgeshrinkDemo.classify(t, c ?? ""), [step.classify, step.cloud ?? null]));
    } else if (step.generate !== undefined) {
      reply.steps.push(await page.evaluate(([t, n]) => edgeshrinkDemo.generate(t, n), [step.generate, step.max_new_tokens ?? 16]));
    } else if (step.type !== undefined) {
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
