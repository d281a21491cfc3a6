// Drives Debian's chromium (playwright-core, never a downloaded browser) over the gateway's web
// console, as e2e/tests/console.rs asks:
//
//   node check.mjs <console base URL> <service> <entity key> <screenshot.png> [<expected text>...]
//
// Opens every page, checks the partitions table (one row per partition, each with an owner),
// inspects the entity through the search form and checks that its events appear (each expected
// text, e.g. a product name of an AddItem, must be in the events table), checks that a hostile
// entity key is shown as text, that nothing outside the console was requested, and saves a
// screenshot of the inspector. Prints `console check ok` and exits 0, or prints why and exits 1.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [base, service, key, screenshot, ...expected] = process.argv.slice(2);
if (!base || !service || !key || !screenshot) {
  console.error('usage: node check.mjs <base-url> <service> <entity-key> <screenshot.png> [expected text...]');
  process.exit(2);
}

const userDataDir = mkdtempSync(join(tmpdir(), 'statehouse-console-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
  viewport: { width: 1280, height: 900 },
});

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const foreign = [];
const failures = [];
try {
  const page = await context.newPage();
  page.on('request', (request) => {
    const url = request.url();
    if (/^(https?|wss?):/.test(url) && !url.startsWith(base)) foreign.push(url);
  });
  page.on('pageerror', (error) => failures.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') failures.push(`console error: ${message.text()}`);
  });
  const open = async (path) => {
    const response = await page.goto(base + path, { waitUntil: 'load' });
    check(response && response.status() === 200, `${path} answered ${response && response.status()}`);
  };
  // CONSOLE_SCREENSHOTS=<dir>: also keep a screenshot of every page (for a look by hand).
  const keep = async (name) => {
    if (process.env.CONSOLE_SCREENSHOTS) {
      await page.screenshot({ path: join(process.env.CONSOLE_SCREENSHOTS, `${name}.png`), fullPage: true });
    }
  };

  // Services: the registry's service with its processors.
  await open('/console');
  const services = await page.locator('#services tbody').innerText();
  check(services.includes(service), `the services table lacks ${service}: ${services}`);
  console.log(`services page: ${service} listed`);
  await keep('services');

  // Partitions: one row per partition, every one with an owner and an epoch.
  await page.click('nav >> text=Partitions');
  await page.waitForSelector('#partitions');
  const rows = page.locator('#partitions tbody tr');
  const count = await rows.count();
  check(count > 0, 'the partitions table is empty');
  for (let i = 0; i < count; i++) {
    const cells = await rows.nth(i).locator('td').allInnerTexts();
    check(cells[0] === String(i), `row ${i} is partition ${cells[0]}`);
    check(!cells[1].includes('no owner') && cells[1].length > 0, `partition ${i} has no owner: ${cells}`);
    check(/^\d+$/.test(cells[2]), `partition ${i} has no epoch: ${cells}`);
  }
  const headers = await page.locator('#partitions thead th').allInnerTexts();
  check(headers.some((h) => h.startsWith('Backup lag')), `partitions headers: ${headers}`);
  console.log(`partitions page: ${count} partitions, each with an owner`);
  await keep('partitions');

  // Charts: two inline SVG charts with drawn data.
  await open('/console/charts');
  check(await page.locator('svg#throughput').count() === 1, 'no throughput chart');
  check(await page.locator('svg#latency').count() === 1, 'no latency chart');
  const drawn = await page.locator('svg#throughput polyline, svg#throughput circle').count();
  check(drawn > 0, 'the throughput chart draws no data');
  console.log(`charts page: ${drawn} throughput line(s)`);
  await keep('charts');
  // The charts page reloads itself (a meta refresh): leave it before a slower page loads.
  await page.goto('about:blank');

  // Lag.
  await open('/console/lag');
  const backup = await page.locator('#backup-lag tbody').innerText();
  check(backup.includes(service), `the backup lag table lacks ${service}: ${backup}`);
  console.log('lag page: backup lag listed');
  await keep('lag');

  // Entity inspector, through its search form.
  await open('/console/entity');
  await page.selectOption('#service', service);
  await page.fill('#key', key);
  await Promise.all([page.waitForURL(/\/console\/entity\?/), page.click('#inspect')]);
  check((await page.locator('#entity-key').innerText()) === key, 'the inspected key is not shown');
  const events = page.locator('table#events');
  check(await events.count() === 1, `no events table: ${await page.locator('main').innerText()}`);
  const eventText = await events.innerText();
  for (const text of expected) {
    check(eventText.includes(text), `the events lack ${JSON.stringify(text)}: ${eventText}`);
  }
  const eventRows = await events.locator('tbody tr').count();
  console.log(`entity inspector: ${eventRows} event(s) of ${key}`);
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`screenshot: ${screenshot}`);

  // A hostile key is text, not markup.
  const hostile = '<img src=x id=injected onerror=alert(1)>';
  await open(`/console/entity?service=${encodeURIComponent(service)}&key=${encodeURIComponent(hostile)}`);
  check(await page.locator('#injected').count() === 0, 'a key was rendered as markup');
  check((await page.locator('#entity-key').innerText()) === hostile, 'the hostile key is not shown as text');
  console.log('escaping: a hostile key shows as text');

  check(failures.length === 0, failures.join('\n'));

  // A bad request is a clear 4xx (the browser logs the 404 itself: checked above, not after).
  const bad = await page.goto(`${base}/console/partitions?service=no-such-service`);
  check(bad.status() === 404, `unknown service answered ${bad.status()}`);
  check((await page.locator('#error').innerText()).includes('no-such-service'), 'no error message');

  check(foreign.length === 0, `requests outside the console: ${foreign}`);
  console.log('console check ok');
} catch (error) {
  console.error(`console check FAILED: ${error.message}`);
  process.exitCode = 1;
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
