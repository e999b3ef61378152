// The imagetag web UI in headless Chromium, the way a person uses it.
//
//   node tests/browser/ui.test.mjs <base-url> <artifact-dir> <image>...
//
// Expects `imagetag up` at <base-url> on an empty folder, tagging with
// Rekognition on moto (every image gets one "Mobile Phone" label, parent
// "Phone", category "Technology and Computing", with one bounding box).
// Prints one line per check; exits non-zero with the reason on the first
// failure, after saving a screenshot of the page as it was.

import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, extname, join } from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.IMAGETAG_CHROMIUM || '/usr/bin/chromium';
const LAUNCH_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const DESKTOP = { width: 1280, height: 900 };
const PHONE = { width: 390, height: 844 };
const TAG = 'mobile phone';
const LABEL = 'Mobile Phone';
const CATEGORY = 'technology and computing';
/** Would run if any name were put into the page as HTML. */
const HOSTILE_FILE = '<img src=x onerror=alert(1)>.png';
const HOSTILE_TAG = '<b>x</b>';
/** Claims to be a PNG; the tagger refuses it and the page says why. */
const NOT_AN_IMAGE = 'not-an-image.png';
const MIME_TYPES = { '.png': 'image/png', '.jpg': 'image/jpeg', '.jpeg': 'image/jpeg', '.gif': 'image/gif', '.webp': 'image/webp' };
const TAG_WAIT_MS = 180_000;
const WAIT_MS = 20_000;

const [base, artifactDir, ...imagePaths] = process.argv.slice(2);
if (!base || !artifactDir || imagePaths.length < 2) {
  console.error('usage: node ui.test.mjs <base-url> <artifact-dir> <image> <image>...');
  process.exit(2);
}
const origin = new URL(base).origin;
mkdirSync(artifactDir, { recursive: true });

// ------------------------------------------------------------ harness

/** Everything the page did that it should not have: reported at the end. */
const problems = [];
let currentStep = 'start';
let currentPage = null;

class CheckFailed extends Error {}

function assert(condition, message) {
  if (!condition) throw new CheckFailed(message);
}

function near(actual, expected, tolerance, what) {
  assert(Math.abs(actual - expected) <= tolerance,
    `${what}: expected ${expected.toFixed(4)} ± ${tolerance}, got ${actual.toFixed(4)}`);
}

async function step(name, body) {
  currentStep = name;
  const started = Date.now();
  await body();
  console.log(`ok   ${name} (${Date.now() - started} ms)`);
}

async function screenshot(page, name) {
  const path = join(artifactDir, name);
  await page.screenshot({ path, animations: 'disabled' });
  console.log(`     screenshot ${path}`);
}

/** Resource errors the UI provokes on purpose and handles. */
function expectedResourceError(message) {
  if (!/status of 404/.test(message.text())) return false;
  const url = message.location()?.url || '';
  // Polling a just-uploaded image before ingest has recorded it, and a
  // thumbnail the grid then replaces with the original.
  return /\/v1\/images\/[0-9a-f]{32}(\/thumbnail)?$/.test(new URL(url, origin).pathname);
}

function watch(page, label) {
  page.on('console', (message) => {
    if (message.type() === 'error' && !expectedResourceError(message)) {
      problems.push(`${label}: console error during "${currentStep}": ${message.text()} (${message.location()?.url || 'no location'})`);
    }
  });
  page.on('pageerror', (error) => problems.push(`${label}: uncaught exception during "${currentStep}": ${error.message}`));
  page.on('dialog', (dialog) => {
    problems.push(`${label}: a ${dialog.type()} dialog opened during "${currentStep}": ${dialog.message()}`);
    dialog.dismiss().catch(() => {});
  });
  page.on('request', (request) => {
    const url = request.url();
    if (!url.startsWith(`${origin}/`) && !url.startsWith('blob:') && !url.startsWith('data:')) {
      problems.push(`${label}: request outside the app during "${currentStep}": ${url}`);
    }
  });
  page.on('requestfailed', (request) => {
    const failure = request.failure()?.errorText || 'failed';
    // Aborted on purpose: superseded autocomplete lookups, lazy images.
    if (!/ERR_ABORTED/.test(failure)) {
      problems.push(`${label}: request failed during "${currentStep}": ${request.method()} ${request.url()}: ${failure}`);
    }
  });
}

const searchParam = (page, name) => new URL(page.url()).searchParams.get(name);

async function waitForCards(page, count, what) {
  try {
    await page.waitForFunction((n) => {
      const grid = document.querySelector('#results');
      return grid.getAttribute('aria-busy') !== 'true'
        && grid.querySelectorAll('.card:not(.skeleton)').length === n;
    }, count, { timeout: WAIT_MS });
  } catch {
    const shown = await page.locator('#results .card:not(.skeleton)').count();
    const error = await page.locator('#search-error').textContent();
    throw new CheckFailed(`${what}: expected ${count} result card(s), the grid shows ${shown}${error ? ` (error: ${error})` : ''}`);
  }
}

async function waitForEmptyResults(page, what) {
  try {
    await page.locator('#results-empty').waitFor({ state: 'visible', timeout: WAIT_MS });
  } catch {
    const shown = await page.locator('#results .card').count();
    throw new CheckFailed(`${what}: expected no results, the grid shows ${shown}`);
  }
  assert(await page.locator('#results .card').count() === 0, `${what}: cards shown next to the empty state`);
}

async function noHorizontalOverflow(page, what) {
  const sizes = await page.evaluate(() => ({
    viewport: window.innerWidth,
    document: document.documentElement.scrollWidth,
    body: document.body.scrollWidth,
    widest: [...document.querySelectorAll('body *')]
      .filter((el) => el.getClientRects().length && !el.closest('dialog:not([open])'))
      .map((el) => ({ el, right: el.getBoundingClientRect().right }))
      .filter(({ right }) => right > window.innerWidth + 1)
      .slice(0, 5)
      .map(({ el, right }) => `${el.tagName.toLowerCase()}${el.id ? `#${el.id}` : ''}.${[...el.classList].join('.')} (right ${Math.round(right)})`),
  }));
  assert(sizes.document <= sizes.viewport && sizes.body <= sizes.viewport,
    `${what}: the page is wider than the ${sizes.viewport}px viewport (document ${sizes.document}px, body ${sizes.body}px); sticking out: ${sizes.widest.join(', ') || 'nothing visible'}`);
}

// --------------------------------------------------------------- run

const profile = mkdtempSync(join(tmpdir(), 'imagetag-chromium-'));
let context;
let exitCode = 0;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: LAUNCH_ARGS,
    viewport: DESKTOP,
    deviceScaleFactor: 1,
    reducedMotion: 'reduce',
    timeout: 60_000,
  });
  context.setDefaultTimeout(WAIT_MS);
  console.log(`chromium ${context.browser()?.version() ?? '(persistent context)'} at ${CHROMIUM}`);
  await run(context);
  assert(problems.length === 0, `the page misbehaved:\n  ${problems.join('\n  ')}`);
  console.log('all browser checks passed');
} catch (error) {
  exitCode = 1;
  console.error(`FAIL ${currentStep}: ${error instanceof CheckFailed ? error.message : error.stack || error}`);
  if (problems.length) console.error(`also seen:\n  ${problems.join('\n  ')}`);
  if (currentPage && !currentPage.isClosed()) {
    const name = `failure-${currentStep.replace(/[^a-z0-9]+/gi, '-').toLowerCase()}.png`;
    await currentPage.screenshot({ path: join(artifactDir, name), fullPage: true }).then(
      () => console.error(`     screenshot ${join(artifactDir, name)}`),
      () => {},
    );
  }
} finally {
  await context?.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
process.exit(exitCode);

async function run(context) {
  const page = context.pages()[0] ?? await context.newPage();
  currentPage = page;
  watch(page, 'desktop');
  // Images that end up tagged: the fixtures and the hostile-named copy.
  const uploads = imagePaths.length + 1;

  await step('the page loads with an empty library', async () => {
    const response = await page.goto(base, { waitUntil: 'load' });
    assert(response?.ok(), `GET ${base} answered ${response?.status()}`);
    const policy = response.headers()['content-security-policy'] || '';
    assert(policy.includes("script-src 'self'"), `no content security policy on the page (${policy || 'none'})`);
    assert(await page.title() === 'imagetag', `title is ${JSON.stringify(await page.title())}`);
    await page.locator('#tag-input').waitFor({ state: 'visible' });
    await waitForEmptyResults(page, 'a new library');
    assert((await page.locator('#results-empty-title').textContent()) === 'No images yet', 'the empty library is not explained');
  });

  await step('the keyboard reaches everything with visible focus', async () => {
    await page.evaluate(() => document.activeElement?.blur());
    await page.keyboard.press('Tab');
    const skip = await page.evaluate(() => ({
      cls: document.activeElement?.className,
      top: document.activeElement?.getBoundingClientRect().top,
    }));
    assert(skip.cls === 'skip-link' && skip.top >= 0, `the first Tab stop is not a visible skip link (${JSON.stringify(skip)})`);
    await page.keyboard.press('Tab');
    const outline = await page.evaluate(() => {
      const style = getComputedStyle(document.activeElement);
      return { tag: document.activeElement.tagName, style: style.outlineStyle, width: style.outlineWidth };
    });
    assert(outline.style !== 'none' && outline.width !== '0px', `no focus outline on ${outline.tag} (${JSON.stringify(outline)})`);
    await page.evaluate(() => document.activeElement?.blur());
    await page.keyboard.press('/');
    assert(await page.evaluate(() => document.activeElement?.id) === 'tag-input', '"/" does not focus the tag input');
    const unlabelled = await page.evaluate(() => [...document.querySelectorAll('input:not([type=hidden]):not([hidden]), select, button')]
      .filter((el) => el.getClientRects().length)
      .filter((el) => !(el.labels?.length || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby') || el.textContent.trim()))
      .map((el) => el.outerHTML.slice(0, 80)));
    assert(unlabelled.length === 0, `controls without a label: ${unlabelled.join(', ')}`);
  });

  await step('files chosen in the picker upload and show their tags', async () => {
    // Playwright takes either paths or buffers: all buffers, so one of them
    // can carry a name no file system would.
    const files = imagePaths.map((path) => ({
      name: basename(path),
      mimeType: MIME_TYPES[extname(path).toLowerCase()] || 'application/octet-stream',
      buffer: readFileSync(path),
    }));
    files.push({ name: HOSTILE_FILE, mimeType: 'image/png', buffer: readFileSync(imagePaths.find((p) => p.endsWith('.png'))) });
    files.push({ name: NOT_AN_IMAGE, mimeType: 'image/png', buffer: Buffer.from('this is text, not a PNG\n') });
    await page.setInputFiles('#file-input', files);
    await page.locator('#uploads').waitFor({ state: 'visible' });
    assert(await page.locator('#upload-list .upload').count() === files.length, 'not every file got an upload row');
    try {
      await page.waitForFunction(() => {
        const rows = [...document.querySelectorAll('#upload-list .upload')];
        return rows.every((row) => ['tagged', 'rejected', 'failed', 'error'].includes(row.dataset.status));
      }, null, { timeout: TAG_WAIT_MS, polling: 250 });
    } catch {
      const states = await page.$$eval('#upload-list .upload', (rows) => rows.map((row) => `${row.querySelector('.upload-name').textContent}: ${row.dataset.status} (${row.querySelector('.upload-state').textContent})`));
      throw new CheckFailed(`uploads not tagged within ${TAG_WAIT_MS / 1000} s: ${states.join('; ')}`);
    }
    const rows = await page.$$eval('#upload-list .upload', (list) => list.map((row) => ({
      name: row.querySelector('.upload-name').textContent,
      status: row.dataset.status,
      state: row.querySelector('.upload-state').textContent,
      pills: [...row.querySelectorAll('.pill')].map((pill) => pill.firstChild.textContent),
      progress: row.querySelector('[role=progressbar]').getAttribute('aria-valuenow'),
    })));
    const rejected = rows.find((row) => row.name === NOT_AN_IMAGE);
    assert(rejected?.status === 'rejected' && /^Rejected: \S/.test(rejected.state),
      `${NOT_AN_IMAGE} should be rejected with a reason, the page says ${JSON.stringify(rejected)}`);
    for (const row of rows.filter((r) => r !== rejected)) {
      assert(row.status === 'tagged', `${row.name} ended ${row.status}: ${row.state}`);
      assert(/^Tagged: 1 tag/.test(row.state), `${row.name} says ${JSON.stringify(row.state)}`);
      assert(row.pills.includes(LABEL), `${row.name} shows tags ${JSON.stringify(row.pills)}, not ${LABEL}`);
      assert(row.progress === '100', `${row.name} progress ends at ${row.progress}`);
    }
  });

  await step('a hostile file name shows as text and runs nothing', async () => {
    const names = await page.$$eval('#upload-list .upload-name', (els) => els.map((el) => el.textContent));
    assert(names.includes(HOSTILE_FILE), `the name ${HOSTILE_FILE} is not shown literally (${JSON.stringify(names)})`);
    assert(await page.locator('img[src="x"]').count() === 0, 'the file name became an <img> element');
  });

  await step('autocomplete offers the tag and a chip searches for it', async () => {
    await page.locator('#tag-input').click();
    await page.keyboard.type('mobi');
    const option = page.locator(`#suggestions [role=option][data-tag="${TAG}"]`);
    await option.waitFor({ state: 'visible' });
    assert(await page.locator('#tag-input').getAttribute('aria-expanded') === 'true', 'the combobox does not say it is expanded');
    for (let i = 0; i < 10 && await option.getAttribute('aria-selected') !== 'true'; i += 1) {
      await page.keyboard.press('ArrowDown');
    }
    assert(await option.getAttribute('aria-selected') === 'true', 'arrow keys do not reach the suggestion');
    await page.keyboard.press('Enter');
    await page.locator(`#chips .chip[data-tag="${TAG}"]`).waitFor();
    await waitForCards(page, uploads, 'search by chip');
    assert(searchParam(page, 'tags') === TAG, `the URL does not hold the tag: ${page.url()}`);
    assert(await page.locator('#results-title').textContent() === 'Results', 'the results are not titled as a search');
    const cards = await page.$$eval('#results .card:not(.skeleton)', (list) => list.map((card) => [...card.querySelectorAll('.pill')].map((pill) => pill.firstChild.textContent)));
    assert(cards.every((pills) => pills.includes(LABEL)), `cards without the label: ${JSON.stringify(cards)}`);
    await page.waitForFunction(() => [...document.querySelectorAll('#results .thumb img')]
      .every((img) => img.complete && img.naturalWidth > 0), null, { timeout: WAIT_MS })
      .catch(() => { throw new CheckFailed('thumbnails did not load in the grid'); });
  });

  await step('the confidence slider filters and goes in the URL', async () => {
    const slider = page.locator('#confidence');
    await slider.focus();
    await page.keyboard.press('End');
    await page.waitForFunction(() => new URL(location.href).searchParams.get('min_confidence') === '100');
    await waitForEmptyResults(page, 'min_confidence=100 (the label has 99.94)');
    await page.keyboard.press('ArrowLeft');
    await page.waitForFunction(() => new URL(location.href).searchParams.get('min_confidence') === '99');
    await waitForCards(page, uploads, 'min_confidence=99');
    assert(await page.locator('#confidence-value').textContent() === '99%', 'the slider value is not shown');
  });

  await step('the category filter lists categories and filters', async () => {
    await page.waitForFunction((category) => [...document.querySelectorAll('#category option')].some((o) => o.value === category), CATEGORY)
      .catch(() => { throw new CheckFailed(`the category filter does not offer ${CATEGORY}`); });
    await page.selectOption('#category', CATEGORY);
    await page.waitForFunction((category) => new URL(location.href).searchParams.get('category') === category, CATEGORY);
    await waitForCards(page, uploads, 'category filter');
  });

  await step('exclude chips and the all/any toggle', async () => {
    await page.locator(`#chips .chip[data-tag="${TAG}"] .chip-toggle`).click();
    await page.waitForFunction((tag) => new URL(location.href).searchParams.get('exclude') === tag, TAG);
    assert(await page.locator(`#chips .chip.exclude[data-tag="${TAG}"]`).count() === 1, 'the chip does not show it excludes');
    await waitForEmptyResults(page, `excluding ${TAG}`);
    await page.locator(`#chips .chip[data-tag="${TAG}"] .chip-toggle`).click();
    await waitForCards(page, uploads, `including ${TAG} again`);

    await page.locator('#tag-input').fill(HOSTILE_TAG);
    await page.locator('#tag-input').press('Enter');
    const chip = page.locator('#chips .chip').filter({ hasText: HOSTILE_TAG });
    await chip.waitFor();
    assert(await chip.locator('.chip-name').textContent() === HOSTILE_TAG, 'the chip does not show its text literally');
    assert(await page.locator('#chips b').count() === 0, 'a chip rendered its text as HTML');
    const tags = searchParam(page, 'tags')?.split(',') ?? [];
    assert(tags.includes(HOSTILE_TAG) && tags.includes(TAG), `the URL does not hold both tags: ${page.url()}`);
    await waitForEmptyResults(page, 'two tags with match=all');
    await page.locator('label[for="match-any"]').click();
    await page.waitForFunction(() => new URL(location.href).searchParams.get('match') === 'any');
    await waitForCards(page, uploads, 'two tags with match=any');
    await chip.locator('.chip-remove').click();
    await page.waitForFunction(() => new URL(location.href).searchParams.get('tags') === 'mobile phone');
    await waitForCards(page, uploads, 'after removing a chip');
  });

  await step('the URL holds the whole query', async () => {
    const url = new URL(page.url());
    const want = { tags: TAG, match: 'any', min_confidence: '99', category: CATEGORY };
    for (const [name, value] of Object.entries(want)) {
      assert(url.searchParams.get(name) === value, `URL parameter ${name} is ${url.searchParams.get(name)}, not ${value} (${url})`);
    }
    await page.locator('#results .card').first().hover();
    await screenshot(page, 'desktop-grid.png');
  });

  await step('results page with "Load more"', async () => {
    // Small pages, so three images take several: the cursors are the server's.
    await page.route(/\/v1\/images\?/, (route) => {
      const url = new URL(route.request().url());
      url.searchParams.set('limit', '2');
      route.continue({ url: url.toString() });
    });
    await page.reload({ waitUntil: 'load' });
    await waitForCards(page, 2, 'first page of two');
    const more = page.locator('#load-more');
    for (let pages = 1; await more.isVisible() && pages < 10; pages += 1) {
      const before = await page.locator('#results .card').count();
      await more.click();
      await page.waitForFunction((n) => document.querySelectorAll('#results .card').length > n
        && !document.querySelector('#load-more').disabled, before);
    }
    await page.unroute(/\/v1\/images\?/);
    const shown = await page.locator('#results .card').count();
    assert(shown === uploads, `paging showed ${shown} images, not ${uploads}`);
    const ids = await page.$$eval('#results .card', (cards) => cards.map((card) => card.dataset.id));
    assert(new Set(ids).size === ids.length, `paging repeated images: ${ids.join(', ')}`);
    assert(!await more.isVisible(), '"Load more" still shows after the last page');
  });

  await step('the detail view draws the label box where the record says', async () => {
    const firstCard = page.locator('#results .card').first();
    const id = await firstCard.getAttribute('data-id');
    await firstCard.locator('a').click();
    await page.locator('#detail[open]').waitFor();
    assert(new URL(page.url()).hash === `#/image/${id}`, `the URL does not point at the image: ${page.url()}`);
    await page.locator('#detail .bbox-label').first().waitFor();
    await page.waitForFunction(() => {
      const img = document.querySelector('#detail .stage img');
      return img && img.complete && img.naturalWidth > 0;
    });
    const record = await page.evaluate(async (imageId) => (await fetch(`/v1/images/${imageId}`)).json(), id);
    const label = record.labels.find((l) => l.name === LABEL);
    assert(label?.instances?.length === 1, `the record has no ${LABEL} instance: ${JSON.stringify(record.labels)}`);
    const expected = label.instances[0].bounding_box;
    const drawn = await page.evaluate(() => {
      const img = document.querySelector('#detail .stage img');
      const box = document.querySelector('#detail .bbox-label').getBoundingClientRect();
      const frame = img.getBoundingClientRect();
      // Where the picture itself is inside the <img> (object-fit: contain).
      const scale = Math.min(frame.width / img.naturalWidth, frame.height / img.naturalHeight);
      const width = img.naturalWidth * scale;
      const height = img.naturalHeight * scale;
      const left = frame.left + (frame.width - width) / 2;
      const top = frame.top + (frame.height - height) / 2;
      return {
        left: (box.left - left) / width,
        top: (box.top - top) / height,
        width: box.width / width,
        height: box.height / height,
        pictureWidth: width,
        caption: document.querySelector('#detail .bbox-label .bbox-caption')?.textContent,
      };
    });
    assert(drawn.pictureWidth > 200, `the image is drawn only ${drawn.pictureWidth}px wide`);
    for (const side of ['left', 'top', 'width', 'height']) {
      near(drawn[side], expected[side], 0.01, `box ${side}`);
    }
    assert(drawn.caption?.startsWith(LABEL), `the box caption is ${JSON.stringify(drawn.caption)}`);

    const row = page.locator(`#detail .label-row[data-label="${LABEL}"]`);
    assert(await row.count() === 1, `no label row for ${LABEL}`);
    const meter = await row.locator('.meter-fill').evaluate((fill) => fill.getBoundingClientRect().width / fill.parentElement.getBoundingClientRect().width);
    near(meter, label.confidence / 100, 0.02, 'confidence bar');
    assert((await row.locator('.label-meta').textContent()).includes('Phone'), 'the parent label is not shown');
    const info = await page.locator('#detail .info').textContent();
    assert(info.includes('No unsafe content detected'), 'the moderation result is not shown');
    for (const fact of [record.key, 'rekognition', `${record.facts.width} × ${record.facts.height} px`]) {
      assert(info.includes(fact), `the file facts do not show ${fact}`);
    }
    assert(await page.evaluate(() => document.querySelector('#detail').contains(document.activeElement)), 'focus is not inside the dialog');
    await row.hover();
    await screenshot(page, 'detail.png');
    await page.keyboard.press('Escape');
    await page.locator('#detail[open]').waitFor({ state: 'detached' });
    await page.waitForFunction(() => location.hash === '' || location.hash === '#/');
    assert(searchParam(page, 'tags') === TAG, `closing the detail lost the query: ${page.url()}`);
  });

  await step('the stats view charts tags, categories and totals', async () => {
    await page.getByRole('link', { name: 'Stats' }).click();
    await page.locator('#view-stats').waitFor({ state: 'visible' });
    const bar = page.locator(`#top-tags .bar-row[data-name="${TAG}"]`);
    await bar.waitFor();
    const barWidth = await bar.locator('.bar-fill').evaluate((el) => el.getBoundingClientRect().width);
    assert(barWidth > 50, `the top tag's bar is ${barWidth}px wide`);
    assert(await bar.locator('.bar-count').textContent() === String(uploads), `the top tag's count is not ${uploads}`);
    assert(await page.locator(`#top-categories .bar-row[data-name="${CATEGORY}"]`).count() === 1, 'the category chart misses the category');
    const tagged = await page.locator('#totals [data-status="tagged"] dd').textContent();
    assert(tagged === String(uploads), `the tagged total is ${tagged}, not ${uploads}`);
    const rejected = await page.locator('#totals [data-status="rejected"] dd').textContent();
    assert(rejected === '1', `the rejected total is ${rejected}, not 1`);
    const segments = await page.$$eval('#status-chart rect', (rects) => Object.fromEntries(rects.map((r) => [r.getAttribute('class'), Number(r.getAttribute('width'))])));
    near(segments['seg-tagged'] ?? 0, (1000 * uploads) / (uploads + 1), 1, 'tagged part of the status chart');
    near(segments['seg-rejected'] ?? 0, 1000 / (uploads + 1), 1, 'rejected part of the status chart');
    await screenshot(page, 'stats.png');
    await bar.click();
    await page.locator('#view-browse').waitFor({ state: 'visible' });
    assert(searchParam(page, 'tags') === TAG && !searchParam(page, 'category'), `a bar does not search its tag: ${page.url()}`);
    await waitForCards(page, uploads, 'search from the chart');
  });

  await step('a shared link restores the search on a phone-sized screen', async () => {
    const shared = `${base}/?${new URLSearchParams({ tags: TAG, match: 'any', min_confidence: '99', category: CATEGORY })}`;
    const phone = await context.newPage();
    currentPage = phone;
    watch(phone, 'phone');
    await phone.setViewportSize(PHONE);
    await phone.goto(shared, { waitUntil: 'load' });
    await phone.locator(`#chips .chip[data-tag="${TAG}"]`).waitFor();
    assert(await phone.locator('#confidence').inputValue() === '99', 'the slider was not restored');
    assert(await phone.locator('#category').inputValue() === CATEGORY, 'the category was not restored');
    assert(await phone.locator('#match-any').isChecked(), 'match=any was not restored');
    await waitForCards(phone, uploads, 'the shared link');
    await phone.waitForFunction(() => [...document.querySelectorAll('#results .thumb img')].slice(0, 2).every((img) => img.complete && img.naturalWidth > 0));
    await noHorizontalOverflow(phone, 'the grid on a phone');
    const columns = await phone.$$eval('#results .card', (cards) => new Set(cards.map((c) => Math.round(c.getBoundingClientRect().left))).size);
    assert(columns === 2, `the phone grid has ${columns} columns`);
    await screenshot(phone, 'mobile.png');

    await phone.locator('#results .card a').first().click();
    await phone.locator('#detail .bbox-label').first().waitFor();
    const dialog = await phone.locator('#detail').boundingBox();
    assert(dialog && dialog.width <= PHONE.width && dialog.x >= 0, `the dialog does not fit the phone: ${JSON.stringify(dialog)}`);
    await noHorizontalOverflow(phone, 'the detail view on a phone');
    await screenshot(phone, 'mobile-detail.png');
    await phone.locator('#detail-close').click();
    await phone.locator('#detail[open]').waitFor({ state: 'detached' });

    await phone.getByRole('link', { name: 'Stats' }).click();
    await phone.locator('#top-tags .bar-row').first().waitFor();
    await noHorizontalOverflow(phone, 'the stats view on a phone');
    await phone.close();
    currentPage = page;
  });

  await step('nothing ran that should not have', async () => {
    assert(await page.evaluate(() => document.querySelectorAll('img[src="x"], #chips b').length) === 0, 'injected markup is in the page');
    assert(problems.length === 0, `the page misbehaved:\n  ${problems.join('\n  ')}`);
  });
}
