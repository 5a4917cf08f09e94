// The console in a real browser: Debian's Chromium, headless, driven by playwright-core (never a browser of
// its own). Run by tests/e2e/test_console_e2e.py against the real stack; every step awaits a selector, a
// response or a condition of the page, never a fixed time. Prints one JSON line: what the test checks next.
//
// Environment: CONSOLE_URL (http://host:port/console), ADMIN_KEY, USAGE_SUBJECT and USAGE_REQUESTS (a
// subject the test just made chat requests with, and how many), TENANT_KEY (that subject's key: signed in
// with it, the console shows only its own usage), KEY_NAME (the key to create and revoke), MODEL,
// SCREENSHOTS (the folder for <page>.png), CHROMIUM (default /usr/bin/chromium).

"use strict";

const fs = require("node:fs");
const path = require("node:path");
const { chromium } = require("playwright-core");

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};
const CONSOLE_URL = env("CONSOLE_URL");
const ADMIN_KEY = env("ADMIN_KEY");
const USAGE_SUBJECT = env("USAGE_SUBJECT");
const USAGE_REQUESTS = Number(env("USAGE_REQUESTS"));
const TENANT_KEY = env("TENANT_KEY");
const KEY_NAME = env("KEY_NAME");
const MODEL = env("MODEL");
const SCREENSHOTS = env("SCREENSHOTS");
const STEP_MS = 120_000;  // one generation on the CPU may queue behind the other tests' leftovers

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function main() {
  fs.mkdirSync(SCREENSHOTS, { recursive: true });
  const browser = await chromium.launch({
    executablePath: env("CHROMIUM", "/usr/bin/chromium"),
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const result = { screenshots: [] };
  try {
    const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
    context.setDefaultTimeout(STEP_MS);
    const page = await context.newPage();
    const urls = [];
    const problems = [];
    page.on("request", (request) => urls.push(request.url()));
    page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
    page.on("response", (response) => {  // nothing the console does here may fail
      if (response.status() >= 400) problems.push(`${response.request().method()} ${response.url()}: ${response.status()}`);
    });
    page.on("console", (message) => {
      if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) {
        problems.push(`console: ${message.text()}`);
      }
    });
    page.on("dialog", (dialog) => dialog.accept());  // the console's "Delete the key …?" confirmations
    const shot = async (name) => {
      const file = path.join(SCREENSHOTS, `${name}.png`);
      await page.screenshot({ path: file, fullPage: true });
      result.screenshots.push(file);
    };

    // -- sign in ---------------------------------------------------------------------------------
    await page.goto(CONSOLE_URL);
    await page.locator("#signin-key").waitFor();
    await shot("signin");
    await page.fill("#signin-key", ADMIN_KEY);
    await page.click("#signin-form button[type=submit]");
    await page.locator("#tabs").waitFor();
    const stored = await page.evaluate(() => sessionStorage.getItem("hubmesh.console.key"));
    check(stored === ADMIN_KEY, "the key is not kept in sessionStorage");
    check(!(await page.evaluate(() => localStorage.length)), "something was written to localStorage");

    // -- usage: the requests the test just made ------------------------------------------------------
    await page.click("#tabs a[data-tab=usage]");
    // the answer of GET /v1/usage whose parameters match `wanted`
    const usageAnswer = (wanted) => page.waitForResponse((r) => {
      const url = new URL(r.url());
      return url.pathname === "/v1/usage" && r.status() === 200
        && Object.entries(wanted).every(([name, value]) => url.searchParams.get(name) === value);
    });
    let answered = usageAnswer({ group_by: "day,subject" });
    await page.selectOption("#usage-form select[name=split]", "subject");
    await answered;
    answered = usageAnswer({ group_by: "day,subject", subject: USAGE_SUBJECT });
    await page.fill("#usage-form input[name=subject]", USAGE_SUBJECT);
    await page.click("#usage-form button[type=submit]");
    await answered;
    const row = page.locator(`#usage-table tbody tr[data-series="${USAGE_SUBJECT}"]`);
    await row.first().waitFor();
    const requestsCell = await row.first().locator("td").nth(2).textContent();
    check(Number(requestsCell) === USAGE_REQUESTS,
      `usage shows ${requestsCell} requests for ${USAGE_SUBJECT}, not ${USAGE_REQUESTS}`);
    const bars = page.locator(`#usage-chart rect[data-series="${USAGE_SUBJECT}"]`);
    await bars.first().waitFor();
    const drawn = await bars.evaluateAll((rects) => rects.reduce((sum, r) => sum + Number(r.dataset.value), 0));
    check(drawn === USAGE_REQUESTS, `the chart draws ${drawn} requests for ${USAGE_SUBJECT}, not ${USAGE_REQUESTS}`);
    result.usage_requests = Number(requestsCell);
    // the CSV is made from the same JSON
    const csv = await page.evaluate(async () => (await import("/console/usage.js")).csv());
    check(csv.startsWith("day,subject,requests,") && csv.includes(USAGE_SUBJECT), `unexpected CSV: ${csv.slice(0, 200)}`);
    // per hour: the same requests, in this hour's bucket
    answered = usageAnswer({ group_by: "hour,subject", subject: USAGE_SUBJECT });
    await page.selectOption("#usage-form select[name=period]", "hour");
    await answered;
    const hourly = page.locator(`#usage-table tbody tr[data-series="${USAGE_SUBJECT}"]`);
    await hourly.first().waitFor();
    const hours = await hourly.evaluateAll((rows) => rows.map((r) => [r.dataset.period, Number(r.children[2].textContent)]));
    check(hours.every(([hour]) => /^\d{4}-\d{2}-\d{2}T\d{2}:00Z$/.test(hour)), `hours: ${JSON.stringify(hours)}`);
    check(hours.reduce((sum, [, n]) => sum + n, 0) === USAGE_REQUESTS, `per hour: ${JSON.stringify(hours)}`);
    answered = usageAnswer({ group_by: "day,subject", subject: USAGE_SUBJECT });
    await page.selectOption("#usage-form select[name=period]", "day");
    await answered;
    // the whole picture (every subject, per model) for the screenshot
    answered = usageAnswer({ group_by: "day,model", subject: null });
    await page.fill("#usage-form input[name=subject]", "");
    await page.selectOption("#usage-form select[name=split]", "model");
    await answered;
    await page.locator("#usage-chart rect").first().waitFor();
    await shot("usage");

    // -- keys: create one (its secret shown once), block it, delete it ------------------------------
    await page.click("#tabs a[data-tab=keys]");
    await page.locator("#keys-table tbody tr").first().waitFor();
    await page.fill("#key-form input[name=name]", KEY_NAME);
    await page.check("#key-form input[name=scope][value=models]");
    await page.check("#key-form input[name=scope][value=chat]");
    await page.fill("#key-form input[name=rpm]", "60");
    await page.click("#key-form button[type=submit]");
    await page.waitForFunction(() => document.getElementById("key-secret-value").textContent.startsWith("sk-hm-"));
    const secretValue = await page.locator("#key-secret-value").textContent();
    check(await page.locator("#key-secret").isVisible(), "the secret is not shown");
    const keyRow = page.locator(`#keys-table tbody tr[data-key-name="${KEY_NAME}"]`);
    await keyRow.waitFor();
    result.key_id = await keyRow.getAttribute("data-key-id");
    const status = async (secret) => (await fetch(new URL("/v1/models", CONSOLE_URL),
      { headers: { Authorization: `Bearer ${secret}` } })).status;
    check(await status(secretValue) === 200, "the new key is refused");
    await page.click("#key-secret-done");
    await page.locator("#key-secret").waitFor({ state: "hidden" });
    // regenerated: a new secret shown once, the first one refused from now on (no grace period)
    await keyRow.locator("button[data-action=regenerate]").click();
    await page.waitForFunction((old) => {
      const shown = document.getElementById("key-secret-value").textContent;
      return shown.startsWith("sk-hm-") && shown !== old;
    }, secretValue);
    const regenerated = await page.locator("#key-secret-value").textContent();
    check(await status(regenerated) === 200, "the regenerated key is refused");
    result.secrets = [secretValue, regenerated];
    await page.click("#key-secret-done");
    await keyRow.locator("button[data-action=block]").click();
    await page.locator(`#keys-table tbody tr[data-key-name="${KEY_NAME}"][data-status=blocked]`).waitFor();
    await shot("keys");
    await keyRow.locator("button[data-action=delete]").click();
    await keyRow.waitFor({ state: "detached" });

    // -- playground: a streamed answer -----------------------------------------------------------------
    await page.click("#tabs a[data-tab=playground]");
    await page.locator(`#play-model option[value="${MODEL}"]`).waitFor({ state: "attached" });
    await page.selectOption("#play-model", MODEL);
    await page.fill("#play-form input[name=temperature]", "0");
    await page.fill("#play-form input[name=max_tokens]", "24");
    await page.fill("#play-message", "What is the capital of France?");
    const streamed = page.waitForResponse((r) => r.url().endsWith("/v1/chat/completions") && r.request().method() === "POST");
    await page.click("#play-send");
    const response = await streamed;
    check(response.status() === 200, `the playground's request got ${response.status()}`);
    check((response.headers()["content-type"] || "").startsWith("text/event-stream"), "the answer is not a stream");
    // text appears while it streams, then the stream ends
    await page.waitForFunction(() => (document.querySelector(".msg.assistant .content")?.textContent || "").length > 0);
    await page.locator('.msg.assistant[data-state="done"]').waitFor();
    result.streamed = await page.locator(".msg.assistant .content").textContent();
    check(result.streamed.trim().length > 0, "the streamed answer is empty");
    const curl = await page.locator("#play-curl").textContent();
    const python = await page.locator("#play-python").textContent();
    check(curl.includes("/v1/chat/completions") && curl.includes(MODEL), `curl text: ${curl}`);
    check(python.includes("from openai import OpenAI") && python.includes(MODEL), `python text: ${python}`);
    check(!curl.includes(ADMIN_KEY) && !python.includes(ADMIN_KEY), "the code shown holds the key");
    await shot("playground");

    // -- mesh: the text service's replicas ------------------------------------------------------------
    await page.click("#tabs a[data-tab=mesh]");
    const text = page.locator('#mesh-services section[data-service=text][data-available=true]');
    await text.locator("tr[data-replica]").first().waitFor();
    result.text_replicas = await text.locator("tr[data-replica]").evaluateAll(
      (rows) => rows.map((r) => ({ address: r.dataset.replica, state: r.dataset.state })));
    result.mesh_services = await page.locator("#mesh-services section[data-service]").evaluateAll(
      (cards) => cards.map((c) => ({ service: c.dataset.service, available: c.dataset.available === "true" })));
    await shot("mesh");

    // -- sign out: the key leaves the tab ------------------------------------------------------------
    await page.click("#sign-out");
    await page.locator("#signin-key").waitFor();
    check(await page.evaluate(() => sessionStorage.getItem("hubmesh.console.key")) === null, "the key outlived sign-out");

    // -- a tenant signs in with its own key: its usage, nobody else's ----------------------------------
    await page.goto(`${CONSOLE_URL}#usage`);
    await page.locator("#signin-key").waitFor();
    const tenantUsage = usageAnswer({ group_by: "day,model" });
    await page.fill("#signin-key", TENANT_KEY);
    await page.click("#signin-form button[type=submit]");
    await tenantUsage;
    const shown = () => page.evaluate(() => document.querySelector("#usage-summary .stat[data-stat=requests] b")?.textContent);
    await page.waitForFunction(() => document.querySelector("#usage-summary .stat[data-stat=requests] b"));
    result.tenant_requests = Number(await shown());
    // its chat requests, and the GET /v1/models that signing in made with its key
    check(result.tenant_requests === USAGE_REQUESTS + 1,
      `signed in with its own key, the tenant sees ${result.tenant_requests} requests, not its ${USAGE_REQUESTS} + 1`);
    await page.click("#sign-out");
    await page.locator("#signin-key").waitFor();

    check(!urls.some((u) => [ADMIN_KEY, TENANT_KEY, ...result.secrets].some((k) => u.includes(k))), "a key appeared in a URL");
    check(!problems.length, problems.join("\n"));
    result.requests_seen = urls.length;
  } finally {
    await browser.close();
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main().catch((err) => {
  process.stderr.write(`console browser test failed: ${err.stack || err}\n`);
  process.exit(1);
});
