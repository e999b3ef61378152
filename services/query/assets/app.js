// imagetag web UI: a plain ES module with no dependencies and no build step.
//
// Safety rule: everything that comes from the API or from the user (tags,
// file names, keys, detected text, error messages) is put into the page as
// text nodes or attribute values through h()/svg() below. Nothing here ever
// assigns innerHTML/outerHTML or uses insertAdjacentHTML, so a tag like
// "<script>" shows up as those characters and never runs.

const PAGE_SIZE = 24;
const SUGGESTION_LIMIT = 10;
const MAX_PARALLEL_UPLOADS = 3;
const POLL_FIRST_MS = 600;
const POLL_MAX_MS = 4000;
const POLL_GIVE_UP_MS = 15 * 60 * 1000;
const CARD_TAGS = 3;
const UPLOAD_TAGS = 6;
const IMAGE_ID = /^[0-9a-f]{32}$/;

// ---------------------------------------------------------------- helpers

const $ = (selector, root = document) => root.querySelector(selector);

/** Creates an element. Strings among the children become text nodes. */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  appendChildren(el, children);
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value != null) el.setAttribute(name, String(value));
  }
  appendChildren(el, children);
  return el;
}

function setProps(el, props) {
  for (const [name, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (name === 'class') el.className = value;
    else if (name === 'text') el.textContent = value;
    else if (name === 'dataset') Object.assign(el.dataset, value);
    else if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (value === true) el.setAttribute(name, '');
    else el.setAttribute(name, String(value));
  }
}

function appendChildren(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function icon(paths, extraClass = '') {
  return svg('svg', { class: `icon ${extraClass}`.trim(), viewBox: '0 0 24 24', 'aria-hidden': 'true', focusable: 'false' },
    paths.map((d) => svg('path', { d })));
}

const ICONS = {
  close: ['M6 6l12 12M18 6 6 18'],
  check: ['M5 12.5l4.5 4.5L19 7.5'],
  shield: ['M12 3l7 3v5.5c0 4.4-3 8-7 9.5-4-1.5-7-5.1-7-9.5V6z', 'M8.8 12.2l2.2 2.2 4.3-4.4'],
};

const clamp = (value, min, max) => Math.min(max, Math.max(min, value));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function percent(confidence) {
  const value = Number(confidence);
  if (!Number.isFinite(value)) return '–';
  return `${value >= 99.95 ? '100' : value.toFixed(1)}%`;
}

function formatBytes(bytes) {
  const value = Number(bytes);
  if (!Number.isFinite(value) || value < 0) return '–';
  if (value < 1024) return `${value} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let scaled = value / 1024;
  let unit = 0;
  while (scaled >= 1024 && unit < units.length - 1) {
    scaled /= 1024;
    unit += 1;
  }
  return `${scaled >= 10 ? scaled.toFixed(0) : scaled.toFixed(1)} ${units[unit]}`;
}

const numberFormat = new Intl.NumberFormat();
const formatCount = (n) => numberFormat.format(Number(n) || 0);

function formatTime(value) {
  if (!value) return '–';
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return date.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
}

function basename(key) {
  const text = String(key ?? '');
  const parts = text.split('/').filter(Boolean);
  return parts.length ? parts[parts.length - 1] : text;
}

/**
 * The name to show for a key: its last part, less the random prefix the
 * upload API puts before the uploaded file's name (`uploads/…/1a2b3c4d-name`).
 */
function displayName(key) {
  const name = basename(key);
  const uploaded = /^uploads\//.test(String(key ?? '')) ? /^[0-9a-f]{8}-(.+)$/.exec(name) : null;
  return uploaded ? uploaded[1] : name;
}

/** Search terms are case-insensitive and comma-separated in the API. */
const normalizeTag = (name) => String(name ?? '').replace(/,/g, ' ').trim().replace(/\s+/g, ' ').toLowerCase();

const imagePath = (id, what = '') => `/v1/images/${encodeURIComponent(id)}${what ? `/${what}` : ''}`;

function announce(message) {
  const region = $('#announcer');
  region.textContent = '';
  // A fresh node, so screen readers announce repeats too.
  setTimeout(() => { region.textContent = message; }, 30);
}

// -------------------------------------------------------------------- API

class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// ---------------------------------------------------------------- API key

/** The API key the user saved in this browser, sent as a bearer token to
 *  this API only (never to a presigned storage URL). */
const KEY_STORAGE = 'imagetag.apiKey';

function apiKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || '';
  } catch {
    return '';
  }
}

function saveApiKey(value) {
  try {
    if (value) localStorage.setItem(KEY_STORAGE, value);
    else localStorage.removeItem(KEY_STORAGE);
  } catch {
    // Private browsing can refuse storage; the key then lasts for nothing.
  }
  updateKeyButton();
}

/** Headers that authenticate a request to `url` if it goes to this API. */
function authHeaders(url) {
  const key = apiKey();
  const sameOrigin = typeof url === 'string' && url.startsWith('/') && !url.startsWith('//');
  return key && sameOrigin ? { Authorization: `Bearer ${key}` } : {};
}

function updateKeyButton() {
  const button = document.getElementById('key-button');
  if (!button) return;
  const set = Boolean(apiKey());
  button.dataset.set = String(set);
  button.setAttribute('aria-label', set ? 'API key (set)' : 'API key (not set)');
  button.querySelector('.key-state').textContent = set ? 'Key set' : 'API key';
}

function setupKeyDialog() {
  const dialog = document.getElementById('key-dialog');
  const input = document.getElementById('key-input');
  const button = document.getElementById('key-button');
  if (!dialog || !input || !button) return;
  button.addEventListener('click', () => {
    input.value = apiKey();
    dialog.showModal();
    input.focus();
  });
  document.getElementById('key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    saveApiKey(input.value.trim());
    dialog.close();
    announce(apiKey() ? 'API key saved in this browser.' : 'API key removed.');
  });
  document.getElementById('key-forget').addEventListener('click', () => {
    saveApiKey('');
    input.value = '';
    dialog.close();
    announce('API key removed.');
  });
  document.getElementById('key-cancel').addEventListener('click', () => dialog.close());
  updateKeyButton();
}

/** Message of an API error body `{error:{code,message}}`, or a fallback. */
function errorMessage(body, status, statusText, retryAfter) {
  if (status === 401) {
    return apiKey()
      ? 'The saved API key was not accepted. Check it with the key button at the top.'
      : 'This needs an API key. Enter one with the key button at the top.';
  }
  if (status === 403) return 'The saved API key may only read, not change anything.';
  if (status === 429) {
    const seconds = Number(retryAfter);
    return `Too many requests. Try again${Number.isFinite(seconds) && seconds > 0 ? ` in ${seconds} s` : ' shortly'}.`;
  }
  const message = body && typeof body === 'object' && body.error && body.error.message;
  if (typeof message === 'string' && message) return message;
  if (status) return `The server answered ${status}${statusText ? ` ${statusText}` : ''}.`;
  return 'The server could not be reached.';
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, {
      ...options,
      headers: { Accept: 'application/json', ...authHeaders(path), ...(options.headers || {}) },
    });
  } catch (error) {
    if (error && error.name === 'AbortError') throw error;
    throw new ApiError('The server could not be reached. Is imagetag still running?', 0, 'network');
  }
  const text = await response.text();
  let body = null;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = null;
    }
  }
  if (!response.ok) {
    throw new ApiError(errorMessage(body, response.status, response.statusText, response.headers.get('Retry-After')), response.status, body?.error?.code);
  }
  return { body, response };
}

const getJson = async (path, options) => (await api(path, options)).body;

// ------------------------------------------------------------ search state

/** The search the page shows; mirrored in the URL's query string. */
const query = {
  chips: [], // { name, exclude }
  match: 'all',
  minConfidence: 0,
  category: '',
};

function readQueryFromUrl() {
  const params = new URLSearchParams(location.search);
  const list = (name) => (params.get(name) || '').split(',').map(normalizeTag).filter(Boolean);
  query.chips = [];
  for (const name of list('tags')) addChipToList(name, false);
  for (const name of list('exclude')) addChipToList(name, true);
  query.match = params.get('match') === 'any' ? 'any' : 'all';
  const confidence = Number(params.get('min_confidence') || 0);
  query.minConfidence = Number.isFinite(confidence) ? clamp(Math.round(confidence), 0, 100) : 0;
  query.category = normalizeTag(params.get('category') || '');
}

function addChipToList(name, exclude) {
  if (!name || query.chips.some((chip) => chip.name === name)) return false;
  query.chips.push({ name, exclude });
  return true;
}

/** The query as URL parameters: shared by the page URL and the API call. */
function queryParams() {
  const params = new URLSearchParams();
  const include = query.chips.filter((chip) => !chip.exclude).map((chip) => chip.name);
  const exclude = query.chips.filter((chip) => chip.exclude).map((chip) => chip.name);
  if (include.length) params.set('tags', include.join(','));
  if (exclude.length) params.set('exclude', exclude.join(','));
  if (query.match === 'any') params.set('match', 'any');
  if (query.minConfidence > 0) params.set('min_confidence', String(query.minConfidence));
  if (query.category) params.set('category', query.category);
  return params;
}

const hasFilters = () => query.chips.length > 0 || query.category !== '';

function writeUrl(mode) {
  const qs = queryParams().toString();
  const url = `${location.pathname}${qs ? `?${qs}` : ''}${location.hash}`;
  if (url === `${location.pathname}${location.search}${location.hash}`) return;
  if (mode === 'push') history.pushState(history.state, '', url);
  else history.replaceState(history.state, '', url);
}

/** Applies a change to the query, updates the URL and searches again. */
function changeQuery(mutate, { urlMode = 'push', delay = 0 } = {}) {
  mutate();
  renderQueryControls();
  writeUrl(urlMode);
  scheduleSearch(delay);
}

// --------------------------------------------------------------- chip UI

const tagInput = $('#tag-input');
const chipList = $('#chips');
const suggestionList = $('#suggestions');

function renderQueryControls() {
  chipList.replaceChildren(...query.chips.map(chipElement));
  $(query.match === 'any' ? '#match-any' : '#match-all').checked = true;
  $('#match-field').classList.toggle('muted', query.chips.filter((c) => !c.exclude).length < 2);
  const slider = $('#confidence');
  slider.value = String(query.minConfidence);
  $('#confidence-value').textContent = `${query.minConfidence}%`;
  slider.setAttribute('aria-valuetext', `${query.minConfidence} percent`);
  syncCategorySelect();
  tagInput.placeholder = query.chips.length ? 'Add another tag…' : 'Add a tag, e.g. dog';
}

function chipElement(chip) {
  const mode = chip.exclude ? 'not' : '';
  const item = h('li', { class: `chip${chip.exclude ? ' exclude' : ''}`, dataset: { tag: chip.name } },
    h('button', {
      type: 'button',
      class: 'chip-toggle',
      'aria-pressed': chip.exclude ? 'true' : 'false',
      'aria-label': `${chip.exclude ? 'Excluded' : 'Included'} tag ${chip.name}. Press to ${chip.exclude ? 'include' : 'exclude'} it.`,
      title: chip.exclude ? 'Excluded: click to include' : 'Click to exclude',
      onclick: () => {
        changeQuery(() => { chip.exclude = !chip.exclude; });
        focusChip(chip.name, '.chip-toggle');
      },
    },
    mode ? h('span', { class: 'chip-mode', 'aria-hidden': 'true', text: mode }) : null,
    h('span', { class: 'chip-name', text: chip.name })),
    h('button', {
      type: 'button',
      class: 'chip-remove',
      'aria-label': `Remove tag ${chip.name}`,
      title: 'Remove',
      onclick: () => removeChip(chip.name),
    }, icon(ICONS.close)));
  return item;
}

function focusChip(name, selector) {
  for (const item of chipList.children) {
    if (item.dataset.tag === name) {
      item.querySelector(selector)?.focus();
      return;
    }
  }
}

function removeChip(name) {
  changeQuery(() => {
    query.chips = query.chips.filter((chip) => chip.name !== name);
  });
  tagInput.focus();
}

/** Adds what the user typed: "a, b" adds two chips, "-a" an exclude chip. */
function addTypedTags(text) {
  const parts = String(text).split(',');
  let added = 0;
  const mutate = () => {
    for (const part of parts) {
      let raw = part.trim();
      let exclude = false;
      if (/^[-−!]/.test(raw)) {
        exclude = true;
        raw = raw.slice(1);
      }
      if (addChipToList(normalizeTag(raw), exclude)) added += 1;
    }
  };
  changeQuery(mutate);
  return added;
}

// Autocomplete: a combobox with a listbox of suggestions from /v1/tags.
let suggestions = [];
let activeSuggestion = -1;
let suggestController = null;
let suggestTimer = 0;

function typedPrefix() {
  const raw = tagInput.value.split(',').pop().trim();
  const exclude = /^[-−!]/.test(raw);
  return { exclude, prefix: normalizeTag(exclude ? raw.slice(1) : raw) };
}

function scheduleSuggestions() {
  clearTimeout(suggestTimer);
  suggestTimer = setTimeout(loadSuggestions, 120);
}

async function loadSuggestions() {
  const { prefix, exclude } = typedPrefix();
  suggestController?.abort();
  const controller = new AbortController();
  suggestController = controller;
  const params = new URLSearchParams({ limit: String(SUGGESTION_LIMIT) });
  if (prefix) params.set('prefix', prefix);
  try {
    const body = await getJson(`/v1/tags?${params}`, { signal: controller.signal });
    if (controller.signal.aborted || document.activeElement !== tagInput) return;
    const taken = new Set(query.chips.map((chip) => chip.name));
    suggestions = (body?.items || [])
      .filter((item) => item && typeof item.name === 'string' && !taken.has(item.name))
      .map((item) => ({ name: item.name, count: item.image_count, exclude }));
    activeSuggestion = -1;
    renderSuggestions(prefix);
  } catch (error) {
    if (error?.name !== 'AbortError') closeSuggestions();
  }
}

function renderSuggestions(prefix) {
  if (!suggestions.length) {
    closeSuggestions();
    return;
  }
  suggestionList.replaceChildren(...suggestions.map((item, index) => {
    const name = item.name;
    const matched = prefix && name.startsWith(prefix) ? prefix.length : 0;
    return h('li', {
      id: `suggestion-${index}`,
      class: `suggestion${item.exclude ? ' exclude-hint' : ''}`,
      role: 'option',
      'aria-selected': index === activeSuggestion ? 'true' : 'false',
      dataset: { tag: name },
      // mousedown, not click: the input keeps focus.
      onmousedown: (event) => {
        event.preventDefault();
        pickSuggestion(index);
      },
    },
    h('span', {},
      item.exclude ? h('span', { class: 'chip-mode', text: 'not ' }) : null,
      matched ? h('mark', { text: name.slice(0, matched) }) : null,
      name.slice(matched)),
    h('span', { class: 'count', text: `${formatCount(item.count)} ${Number(item.count) === 1 ? 'image' : 'images'}` }));
  }));
  suggestionList.hidden = false;
  tagInput.setAttribute('aria-expanded', 'true');
  updateActiveSuggestion();
}

function updateActiveSuggestion() {
  [...suggestionList.children].forEach((el, index) => {
    el.setAttribute('aria-selected', index === activeSuggestion ? 'true' : 'false');
  });
  if (activeSuggestion >= 0) {
    tagInput.setAttribute('aria-activedescendant', `suggestion-${activeSuggestion}`);
    suggestionList.children[activeSuggestion]?.scrollIntoView({ block: 'nearest' });
  } else {
    tagInput.removeAttribute('aria-activedescendant');
  }
}

function closeSuggestions() {
  suggestController?.abort();
  clearTimeout(suggestTimer);
  suggestions = [];
  activeSuggestion = -1;
  suggestionList.hidden = true;
  suggestionList.replaceChildren();
  tagInput.setAttribute('aria-expanded', 'false');
  tagInput.removeAttribute('aria-activedescendant');
}

function pickSuggestion(index) {
  const item = suggestions[index];
  if (!item) return;
  // Keep chips typed earlier in the same input ("a, b, c…").
  const earlier = tagInput.value.split(',').slice(0, -1).join(',');
  tagInput.value = '';
  closeSuggestions();
  if (earlier.trim()) addTypedTags(earlier);
  changeQuery(() => { addChipToList(item.name, item.exclude); });
  announce(`Added ${item.exclude ? 'excluded ' : ''}tag ${item.name}`);
  tagInput.focus();
}

function commitInput() {
  const text = tagInput.value;
  if (!text.trim().replace(/^[-−!]/, '').trim()) return false;
  tagInput.value = '';
  closeSuggestions();
  const added = addTypedTags(text);
  if (added) announce(`Added ${added === 1 ? 'a tag' : `${added} tags`}`);
  return true;
}

tagInput.addEventListener('input', () => {
  if (tagInput.value.includes(',') && tagInput.value.trim().endsWith(',')) {
    commitInput();
    return;
  }
  scheduleSuggestions();
});
tagInput.addEventListener('focus', scheduleSuggestions);
tagInput.addEventListener('blur', () => setTimeout(() => {
  if (document.activeElement !== tagInput) closeSuggestions();
}, 100));
tagInput.addEventListener('keydown', (event) => {
  const open = !suggestionList.hidden && suggestions.length > 0;
  switch (event.key) {
    case 'ArrowDown':
      event.preventDefault();
      if (!open) {
        loadSuggestions();
        return;
      }
      activeSuggestion = (activeSuggestion + 1) % suggestions.length;
      updateActiveSuggestion();
      break;
    case 'ArrowUp':
      if (!open) return;
      event.preventDefault();
      activeSuggestion = activeSuggestion <= 0 ? suggestions.length - 1 : activeSuggestion - 1;
      updateActiveSuggestion();
      break;
    case 'Enter':
      event.preventDefault();
      if (open && activeSuggestion >= 0) pickSuggestion(activeSuggestion);
      else if (!commitInput()) runSearchNow();
      break;
    case 'Escape':
      if (open) {
        event.preventDefault();
        closeSuggestions();
      }
      break;
    case 'Backspace':
      if (tagInput.value === '' && query.chips.length) {
        event.preventDefault();
        const last = query.chips[query.chips.length - 1];
        changeQuery(() => { query.chips.pop(); });
        announce(`Removed tag ${last.name}`);
      }
      break;
    default:
  }
});

$('#chip-box').addEventListener('mousedown', (event) => {
  if (event.target === event.currentTarget || event.target === chipList) {
    event.preventDefault();
    tagInput.focus();
  }
});

$('#search-form').addEventListener('submit', (event) => {
  event.preventDefault();
  if (!commitInput()) runSearchNow();
});

for (const radio of document.querySelectorAll('input[name="match"]')) {
  radio.addEventListener('change', () => {
    if (radio.checked) changeQuery(() => { query.match = radio.value === 'any' ? 'any' : 'all'; });
  });
}

const confidenceSlider = $('#confidence');
confidenceSlider.addEventListener('input', () => {
  // While dragging: live label, replaceState, debounced search.
  changeQuery(() => { query.minConfidence = clamp(Number(confidenceSlider.value) || 0, 0, 100); },
    { urlMode: 'replace', delay: 250 });
});

const categorySelect = $('#category');
categorySelect.addEventListener('change', () => {
  changeQuery(() => { query.category = normalizeTag(categorySelect.value); });
});

$('#clear-search').addEventListener('click', () => {
  tagInput.value = '';
  changeQuery(() => {
    query.chips = [];
    query.match = 'all';
    query.minConfidence = 0;
    query.category = '';
  });
  tagInput.focus();
});

let knownCategories = [];
const categoryCounts = new Map();

function syncCategorySelect() {
  const names = new Set(knownCategories);
  if (query.category) names.add(query.category);
  const options = [h('option', { value: '', text: 'All categories' })];
  for (const name of [...names].sort()) {
    const count = categoryCounts.get(name);
    options.push(h('option', { value: name, text: count != null ? `${name} (${formatCount(count)})` : name }));
  }
  categorySelect.replaceChildren(...options);
  categorySelect.value = query.category;
}

async function loadCategories() {
  try {
    const body = await getJson('/v1/tags?kind=category&limit=100');
    knownCategories = [];
    categoryCounts.clear();
    for (const item of body?.items || []) {
      if (typeof item?.name !== 'string') continue;
      knownCategories.push(item.name);
      categoryCounts.set(item.name, item.image_count);
    }
    syncCategorySelect();
  } catch {
    // The filter still works with a category from the URL.
  }
}

// ---------------------------------------------------------------- results

const results = $('#results');
const loadMore = $('#load-more');
const searchError = $('#search-error');
let searchSeq = 0;
let searchTimer = 0;
let nextCursor = null;
let shownCount = 0;
let pagesLoaded = 0;
let searching = false;

function scheduleSearch(delay) {
  clearTimeout(searchTimer);
  if (delay > 0) searchTimer = setTimeout(() => runSearch(), delay);
  else runSearch();
}

function runSearchNow() {
  clearTimeout(searchTimer);
  runSearch();
}

async function runSearch({ append = false } = {}) {
  const seq = ++searchSeq;
  const params = queryParams();
  const shown = params.toString();
  params.set('limit', String(PAGE_SIZE));
  if (append && nextCursor) params.set('cursor', nextCursor);
  searching = true;
  searchError.hidden = true;
  $('#results-title').textContent = hasFilters() ? 'Results' : 'Recent images';
  if (append) {
    loadMore.disabled = true;
    loadMore.textContent = 'Loading…';
  } else {
    results.setAttribute('aria-busy', 'true');
    // Refreshing the same query keeps the cards until the new ones arrive.
    if (!results.children.length || results.dataset.query !== shown) showSkeleton();
  }
  try {
    const page = await getJson(`/v1/images?${params}`);
    if (seq !== searchSeq) return;
    const items = Array.isArray(page?.items) ? page.items : [];
    if (!append) {
      results.replaceChildren();
      shownCount = 0;
      pagesLoaded = 0;
    }
    const firstNew = results.children.length;
    results.append(...items.map(resultCard));
    shownCount += items.length;
    pagesLoaded += 1;
    nextCursor = page?.next_cursor || null;
    results.dataset.query = shown;
    renderResultState();
    if (append) results.children[firstNew]?.querySelector('a')?.focus();
  } catch (error) {
    if (seq !== searchSeq) return;
    if (!append) {
      results.replaceChildren();
      shownCount = 0;
      nextCursor = null;
    }
    searchError.textContent = error.message;
    searchError.hidden = false;
    $('#results-empty').hidden = true;
    $('#results-summary').textContent = '';
    loadMore.hidden = !nextCursor;
  } finally {
    if (seq === searchSeq) {
      searching = false;
      results.removeAttribute('aria-busy');
      loadMore.disabled = false;
      loadMore.textContent = 'Load more';
    }
  }
}

function renderResultState() {
  const empty = shownCount === 0;
  $('#results-empty').hidden = !empty;
  if (empty) {
    $('#results-empty-title').textContent = hasFilters() ? 'No images match' : 'No images yet';
    $('#results-empty-text').textContent = hasFilters()
      ? 'Try fewer tags, switch to “Any tag”, or lower the minimum confidence.'
      : 'Drop some photos on this page, or choose files, to get started.';
  }
  loadMore.hidden = !nextCursor;
  const noun = shownCount === 1 ? 'image' : 'images';
  $('#results-summary').textContent = empty
    ? (hasFilters() ? 'No matches' : '')
    : `${formatCount(shownCount)} ${noun}${nextCursor ? ' shown, more available' : ''}`;
}

function showSkeleton() {
  const count = Math.min(8, Math.max(4, results.children.length || 8));
  results.replaceChildren(...Array.from({ length: count }, () => h('li', { class: 'card skeleton', 'aria-hidden': 'true' },
    h('div', { class: 'thumb' }),
    h('div', { class: 'card-body' }, h('div', { class: 'skeleton-line' }), h('div', { class: 'skeleton-line short' })))));
  $('#results-empty').hidden = true;
}

loadMore.addEventListener('click', () => {
  if (nextCursor && !searching) runSearch({ append: true });
});

/** Points `img` at an image of this API. With a key saved, the bytes are
 *  fetched with it (an <img> cannot send headers) and shown from a blob;
 *  a failure fires the image's error event either way. */
function setImageSource(img, path) {
  const headers = authHeaders(path);
  if (!headers.Authorization) {
    img.src = path;
    return;
  }
  fetch(path, { headers })
    .then((response) => (response.ok ? response.blob() : Promise.reject(new Error(String(response.status)))))
    .then((blob) => {
      const url = URL.createObjectURL(blob);
      img.addEventListener('load', () => URL.revokeObjectURL(url), { once: true });
      img.src = url;
    })
    .catch(() => img.dispatchEvent(new Event('error')));
}

/** A thumbnail that falls back to the original when there is none. */
function thumbnail(id, alt) {
  const wrapper = h('div', { class: 'thumb' });
  const img = h('img', { alt, loading: 'lazy', decoding: 'async' });
  let fellBack = false;
  img.addEventListener('error', () => {
    if (!fellBack) {
      fellBack = true;
      setImageSource(img, imagePath(id, 'content'));
    } else {
      wrapper.classList.add('broken');
      img.removeAttribute('src');
    }
  });
  setImageSource(img, imagePath(id, 'thumbnail'));
  wrapper.append(img);
  return wrapper;
}

function labelPills(labels, count, { buttons = false } = {}) {
  return h('div', { class: 'pills' }, (labels || []).slice(0, count).map((label) => {
    const content = [label.name, h('span', { class: 'conf', text: percent(label.confidence) })];
    if (!buttons) return h('span', { class: 'pill' }, content);
    return h('button', {
      type: 'button',
      class: 'pill',
      title: `Search for ${label.name}`,
      onclick: () => searchForTag(label.name),
    }, content);
  }));
}

function resultCard(item) {
  const name = displayName(item.key);
  const labels = Array.isArray(item.labels) ? item.labels : [];
  const alt = labels.length ? `${name}: ${labels.slice(0, CARD_TAGS).map((l) => l.name).join(', ')}` : name;
  const thumb = thumbnail(item.id, alt);
  if (item.score != null && hasFilters()) {
    thumb.append(h('span', { class: 'score', title: 'Confidence of the matched tag', text: percent(item.score) }));
  }
  return h('li', { class: 'card', dataset: { id: item.id } },
    h('a', { class: 'card-link', href: `#/image/${encodeURIComponent(item.id)}`, 'aria-label': `${name}, open details` },
      thumb,
      h('div', { class: 'card-body' },
        h('div', { class: 'card-title', title: item.key, text: name }),
        labels.length ? labelPills(labels, CARD_TAGS) : h('span', { class: 'muted', text: 'No tags' }))));
}

/** Shows the search view with a new query (from a pill, a bar or a label). */
function showSearch(mutate) {
  if (detail.open) {
    // Leave the image route without going back in history.
    detailPushed = false;
    detail.close();
  }
  mutate();
  renderQueryControls();
  const qs = queryParams().toString();
  history.pushState(history.state, '', `${location.pathname}${qs ? `?${qs}` : ''}`);
  route();
  runSearchNow();
  window.scrollTo({ top: 0, behavior: 'smooth' });
}

function searchForTag(name) {
  const tag = normalizeTag(name);
  if (!tag) return;
  showSearch(() => {
    query.chips = [{ name: tag, exclude: false }];
    query.category = '';
  });
}

function searchForCategory(name) {
  const category = normalizeTag(name);
  if (!category) return;
  showSearch(() => {
    query.chips = [];
    query.category = category;
  });
}

// ---------------------------------------------------------------- uploads

const fileInput = $('#file-input');
const uploadList = $('#upload-list');
const uploads = [];
let activeUploads = 0;

const EXTENSION_TYPES = {
  jpg: 'image/jpeg', jpeg: 'image/jpeg', png: 'image/png', gif: 'image/gif', webp: 'image/webp',
  bmp: 'image/bmp', tif: 'image/tiff', tiff: 'image/tiff', heic: 'image/heic', avif: 'image/avif',
};

function contentTypeOf(file) {
  if (file.type) return file.type;
  const ext = (file.name.split('.').pop() || '').toLowerCase();
  return EXTENSION_TYPES[ext] || 'application/octet-stream';
}

function addFiles(fileList) {
  const files = [...(fileList || [])].filter((file) => file && file.size >= 0);
  if (!files.length) return;
  $('#uploads').hidden = false;
  for (const file of files) {
    const entry = { file, status: 'queued', element: null, preview: null, imageId: null, done: false };
    entry.element = uploadRow(entry);
    uploads.push(entry);
    uploadList.prepend(entry.element);
  }
  announce(`${files.length === 1 ? 'One file' : `${files.length} files`} added to uploads`);
  pumpUploads();
}

function uploadRow(entry) {
  const { file } = entry;
  const previewable = /^image\/(jpeg|png|gif|webp|bmp|avif|svg\+xml)$/.test(file.type) && file.size < 30 * 1024 * 1024;
  if (previewable) entry.preview = URL.createObjectURL(file);
  const placeholder = () => h('div', { class: 'upload-preview none', 'aria-hidden': 'true' });
  let preview = placeholder();
  if (previewable) {
    preview = h('img', { class: 'upload-preview', alt: '' });
    // Not every file that claims to be an image is one: no broken icon.
    preview.addEventListener('error', () => preview.replaceWith(placeholder()), { once: true });
    preview.src = entry.preview;
  }
  const bar = h('div', { class: 'progress-fill' });
  const progress = h('div', {
    class: 'progress',
    role: 'progressbar',
    'aria-label': `Upload of ${file.name}`,
    'aria-valuemin': '0',
    'aria-valuemax': '100',
    'aria-valuenow': '0',
  }, bar);
  const state = h('p', { class: 'upload-state', text: 'Waiting…' });
  const tags = h('div', { class: 'upload-tags' });
  const row = h('li', { class: 'upload', dataset: { status: 'queued' } },
    preview,
    h('div', { class: 'upload-main' },
      h('div', { class: 'upload-title' },
        h('span', { class: 'upload-name', title: file.name, text: file.name }),
        h('span', { class: 'upload-size', text: formatBytes(file.size) })),
      progress,
      state,
      tags));
  entry.parts = { bar, progress, state, tags };
  return row;
}

function setUploadState(entry, status, message, { spinner = false, progress = null } = {}) {
  entry.status = status;
  entry.element.dataset.status = status;
  const { state, bar, progress: track } = entry.parts;
  state.replaceChildren();
  appendChildren(state, [spinner ? h('span', { class: 'spinner', 'aria-hidden': 'true' }) : null, message]);
  if (progress === 'indeterminate') {
    track.classList.add('indeterminate');
    track.removeAttribute('aria-valuenow');
  } else if (progress != null) {
    track.classList.remove('indeterminate');
    const value = clamp(Math.round(progress), 0, 100);
    bar.style.width = `${value}%`;
    track.setAttribute('aria-valuenow', String(value));
  }
}

function pumpUploads() {
  while (activeUploads < MAX_PARALLEL_UPLOADS) {
    const next = uploads.find((entry) => entry.status === 'queued');
    if (!next) return;
    activeUploads += 1;
    next.status = 'starting';
    upload(next).finally(() => {
      activeUploads -= 1;
      pumpUploads();
    });
  }
}

async function upload(entry) {
  const { file } = entry;
  try {
    if (file.size === 0) throw new ApiError('This file is empty.', 0);
    setUploadState(entry, 'uploading', 'Starting upload…', { spinner: true, progress: 0 });
    const { body, response } = await api('/v1/uploads', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ filename: file.name, content_type: contentTypeOf(file), size: file.size }),
    });
    const target = body?.upload;
    if (!body?.image_id || !target?.url) throw new ApiError('The server did not say where to upload.', response.status);
    entry.imageId = body.image_id;
    entry.key = body.key;
    // Server time, so a record left from an earlier file of the same name is
    // not taken for this one, whatever the browser's clock says.
    const serverDate = Date.parse(response.headers.get('Date') || '');
    entry.startedAt = Number.isNaN(serverDate) ? null : serverDate - 1000;
    await putFile(target, file, (fraction) => {
      setUploadState(entry, 'uploading', `Uploading… ${Math.round(fraction * 100)}%`, { progress: fraction * 100 });
    });
    setUploadState(entry, 'processing', 'Uploaded. Waiting for tags…', { spinner: true, progress: 'indeterminate' });
    await waitForTags(entry);
  } catch (error) {
    setUploadState(entry, 'error', error?.message || 'Upload failed.', { progress: 100 });
    entry.done = true;
  }
}

/** PUTs the bytes with XMLHttpRequest: fetch cannot report upload progress. */
function putFile(target, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(target.method || 'PUT', target.url);
    const headers = { ...(target.headers || {}), ...authHeaders(target.url) };
    for (const [name, value] of Object.entries(headers)) {
      xhr.setRequestHeader(name, String(value));
    }
    xhr.upload.addEventListener('progress', (event) => {
      if (event.lengthComputable && event.total > 0) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener('load', () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        onProgress(1);
        resolve();
        return;
      }
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      const s3Message = /<Message>([^<]*)<\/Message>/.exec(xhr.responseText || '');
      reject(new ApiError(body ? errorMessage(body, xhr.status, xhr.statusText, xhr.getResponseHeader('Retry-After'))
        : s3Message ? `Upload refused: ${s3Message[1]}` : `Upload failed (${xhr.status}).`, xhr.status));
    });
    xhr.addEventListener('error', () => reject(new ApiError('The upload could not reach the server.', 0)));
    xhr.addEventListener('abort', () => reject(new ApiError('The upload was cancelled.', 0)));
    xhr.send(file);
  });
}

async function waitForTags(entry) {
  const started = Date.now();
  let delay = POLL_FIRST_MS;
  let seenRecord = false;
  while (Date.now() - started < POLL_GIVE_UP_MS) {
    await sleep(delay);
    delay = Math.min(POLL_MAX_MS, Math.round(delay * 1.35));
    let record;
    try {
      record = await getJson(imagePath(entry.imageId));
    } catch (error) {
      if (error?.status === 404 || error?.status === 503 || error?.status === 0) continue;
      throw error;
    }
    if (!record) continue;
    const stamp = Date.parse(record.updated_at || '');
    const stale = entry.startedAt != null && !Number.isNaN(stamp) && stamp < entry.startedAt;
    if (stale) continue;
    if (!seenRecord) {
      seenRecord = true;
      delay = POLL_FIRST_MS;
    }
    switch (record.status) {
      case 'tagged':
        showUploadTags(entry, record);
        return;
      case 'rejected':
      case 'failed':
        setUploadState(entry, record.status, `${record.status === 'rejected' ? 'Rejected' : 'Failed'}: ${record.reason || 'no reason given'}`, { progress: 100 });
        entry.done = true;
        showUploadLink(entry);
        return;
      case 'deleted':
        setUploadState(entry, 'error', 'The file was removed before it was tagged.', { progress: 100 });
        entry.done = true;
        return;
      default:
        setUploadState(entry, 'processing', 'Tagging…', { spinner: true, progress: 'indeterminate' });
    }
  }
  setUploadState(entry, 'error', 'Still not tagged after a long wait. Is the tagger running?', { progress: 100 });
  entry.done = true;
}

function showUploadTags(entry, record) {
  const labels = [...(record.labels || [])].sort((a, b) => b.confidence - a.confidence);
  const count = labels.length;
  setUploadState(entry, 'tagged', [
    h('span', { 'aria-hidden': 'true' }, icon(ICONS.check)),
    count ? `Tagged: ${count} ${count === 1 ? 'tag' : 'tags'}` : 'Tagged: nothing recognised',
  ], { progress: 100 });
  entry.parts.tags.replaceChildren(labelPills(labels, UPLOAD_TAGS, { buttons: true }));
  entry.done = true;
  showUploadLink(entry);
  announce(`${entry.file.name} tagged${count ? `: ${labels.slice(0, 3).map((l) => l.name).join(', ')}` : ''}`);
  onLibraryChanged();
}

function showUploadLink(entry) {
  entry.parts.state.append(h('a', { class: 'open-original', href: `#/image/${encodeURIComponent(entry.imageId)}`, text: 'Details' }));
}

$('#clear-uploads').addEventListener('click', () => {
  for (const entry of [...uploads]) {
    if (!entry.done) continue;
    entry.element.remove();
    if (entry.preview) URL.revokeObjectURL(entry.preview);
    uploads.splice(uploads.indexOf(entry), 1);
  }
  if (!uploads.length) $('#uploads').hidden = true;
});

let libraryRefresh = 0;

/** New tags exist: refresh what shows counts, and a first page of results. */
function onLibraryChanged() {
  clearTimeout(libraryRefresh);
  libraryRefresh = setTimeout(() => {
    loadCategories();
    if (currentView === 'stats') loadStats();
    // Only a first page is reloaded: it would reset "Load more" otherwise.
    if (pagesLoaded <= 1 && !searching && document.activeElement?.closest?.('#results') == null) runSearch();
  }, 400);
}

$('#upload-button').addEventListener('click', () => fileInput.click());
$('#choose-files').addEventListener('click', () => fileInput.click());
fileInput.addEventListener('change', () => {
  addFiles(fileInput.files);
  fileInput.value = '';
});

// Drop anywhere on the page.
const dropOverlay = $('#drop-overlay');
let dragDepth = 0;
const carriesFiles = (event) => [...(event.dataTransfer?.types || [])].includes('Files');

window.addEventListener('dragenter', (event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault();
  dragDepth += 1;
  dropOverlay.hidden = false;
  $('#dropzone').classList.add('dragging');
});
window.addEventListener('dragover', (event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault();
  event.dataTransfer.dropEffect = 'copy';
});
window.addEventListener('dragleave', (event) => {
  if (!carriesFiles(event)) return;
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) {
    dropOverlay.hidden = true;
    $('#dropzone').classList.remove('dragging');
  }
});
window.addEventListener('drop', (event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault();
  dragDepth = 0;
  dropOverlay.hidden = true;
  $('#dropzone').classList.remove('dragging');
  addFiles(event.dataTransfer.files);
});
window.addEventListener('paste', (event) => {
  const files = [...(event.clipboardData?.files || [])];
  if (files.length) {
    event.preventDefault();
    addFiles(files);
  }
});

// ----------------------------------------------------------------- detail

const detail = $('#detail');
const detailBody = $('#detail-body');
let detailSeq = 0;
let detailPushed = false;

function openDetail(id, pushed) {
  detailPushed = pushed;
  const seq = ++detailSeq;
  $('#detail-title').textContent = 'Loading…';
  $('#detail-status').hidden = true;
  detailBody.replaceChildren(h('p', { class: 'loading' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), 'Loading image details…'));
  if (!detail.open) detail.showModal();
  getJson(imagePath(id)).then((record) => {
    if (seq === detailSeq) renderDetail(record);
  }, (error) => {
    if (seq !== detailSeq) return;
    $('#detail-title').textContent = 'Image not available';
    detailBody.replaceChildren(h('div', { class: 'alert', role: 'alert', text: error.message }));
  });
}

function closeDetailFromRoute() {
  detailSeq += 1;
  if (detail.open) detail.close();
}

detail.addEventListener('close', () => {
  detailSeq += 1;
  if (imageRoute()) {
    if (detailPushed) history.back();
    else history.replaceState(history.state, '', `${location.pathname}${location.search}`);
  }
});
$('#detail-close').addEventListener('click', () => detail.close());
detail.addEventListener('click', (event) => {
  // A click on the backdrop lands on the dialog itself.
  if (event.target === detail) detail.close();
});

function renderDetail(record) {
  const id = record.image_id;
  const name = displayName(record.key);
  $('#detail-title').textContent = name;
  $('#detail-title').title = record.key || '';
  const badge = $('#detail-status');
  badge.textContent = record.status || 'unknown';
  badge.className = `status-badge ${record.status || ''}`;
  badge.hidden = false;

  const labels = [...(record.labels || [])].sort((a, b) => b.confidence - a.confidence);
  const faces = record.faces || [];
  const text = record.text || [];
  const viewer = detailViewer(record, labels, faces, text);
  const info = h('div', { class: 'info' },
    record.reason ? h('p', { class: 'reason', text: `${record.status === 'tagged' ? 'Note' : 'Reason'}: ${record.reason}` }) : null,
    labelsSection(labels, record.status),
    faces.length ? h('section', { class: 'info-section' },
      h('h3', {}, 'Faces', h('span', { class: 'count', text: String(faces.length) })),
      h('p', { text: faces.map((face, index) => `Face ${index + 1}: ${percent(face.confidence)}`).join(' · ') })) : null,
    textSection(text),
    moderationSection(record.moderation || [], record.status),
    factsSection(record, id));
  detailBody.replaceChildren(viewer, info);
}

function detailViewer(record, labels, faces, text) {
  const id = record.image_id;
  const stage = h('div', { class: 'stage' });
  const facts = record.facts;
  if (facts?.width > 0 && facts?.height > 0) stage.style.setProperty('--ar', String(facts.width / facts.height));
  const img = h('img', { alt: `${displayName(record.key)}${labels.length ? `: ${labels.slice(0, 5).map((l) => l.name).join(', ')}` : ''}`, decoding: 'async' });
  img.addEventListener('load', () => {
    if (img.naturalWidth > 0 && img.naturalHeight > 0) {
      stage.style.setProperty('--ar', String(img.naturalWidth / img.naturalHeight));
    }
  });
  img.addEventListener('error', () => {
    stage.replaceChildren(h('p', { class: 'loading', text: 'The image itself could not be loaded.' }));
  });
  setImageSource(img, imagePath(id, 'content'));
  const overlay = h('div', { class: 'overlay', 'aria-hidden': 'true' });
  const counts = { label: 0, face: 0, text: 0 };
  labels.forEach((label, index) => {
    for (const instance of label.instances || []) {
      if (addBox(overlay, 'label', instance.bounding_box, `${label.name} ${percent(instance.confidence)}`, index)) counts.label += 1;
    }
  });
  faces.forEach((face, index) => {
    if (addBox(overlay, 'face', face.bounding_box, `Face ${percent(face.confidence)}`, index)) counts.face += 1;
  });
  text.forEach((item, index) => {
    if (item.bounding_box && addBox(overlay, 'text', item.bounding_box, item.text, index)) counts.text += 1;
  });
  stage.append(img, overlay);

  const toggles = h('div', { class: 'box-toggles', role: 'group', 'aria-label': 'Boxes shown on the image' });
  const kinds = [['label', 'Objects'], ['face', 'Faces'], ['text', 'Text']];
  for (const [kind, title] of kinds) {
    if (!counts[kind]) continue;
    const checkbox = h('input', { type: 'checkbox', checked: true });
    checkbox.addEventListener('change', () => overlay.classList.toggle(`hide-${kind}`, !checkbox.checked));
    toggles.append(h('label', {}, checkbox, h('span', { class: `swatch bbox-${kind}`, 'aria-hidden': 'true' }), `${title} (${counts[kind]})`));
  }
  if (!toggles.children.length) toggles.append(h('span', { text: 'No boxes to draw for this image.' }));
  return h('div', { class: 'viewer' },
    stage,
    toggles,
    h('a', { class: 'open-original', href: imagePath(id, 'content'), target: '_blank', rel: 'noopener', text: 'Open the original' }));
}

function addBox(overlay, kind, box, caption, index) {
  if (!box) return false;
  const left = clamp(Number(box.left), 0, 1);
  const top = clamp(Number(box.top), 0, 1);
  const width = clamp(Number(box.width), 0, 1 - left);
  const height = clamp(Number(box.height), 0, 1 - top);
  if (![left, top, width, height].every(Number.isFinite) || width <= 0 || height <= 0) return false;
  const el = h('div', { class: `bbox bbox-${kind}${top < 0.06 ? ' caption-inside' : ''}`, dataset: { kind, index: String(index) } },
    h('span', { class: 'bbox-caption', text: caption }));
  el.style.left = `${left * 100}%`;
  el.style.top = `${top * 100}%`;
  el.style.width = `${width * 100}%`;
  el.style.height = `${height * 100}%`;
  overlay.append(el);
  return true;
}

function highlightBoxes(kind, index, on) {
  const overlay = detailBody.querySelector('.overlay');
  if (!overlay) return;
  let any = false;
  for (const box of overlay.querySelectorAll(`.bbox-${kind}`)) {
    const match = on && box.dataset.index === String(index);
    box.classList.toggle('active', match);
    any ||= match;
  }
  overlay.classList.toggle('focusing', any);
}

function labelsSection(labels, status) {
  const section = h('section', { class: 'info-section', 'aria-labelledby': 'detail-labels-title' },
    h('h3', { id: 'detail-labels-title' }, 'Labels', h('span', { class: 'count', text: String(labels.length) })));
  if (!labels.length) {
    section.append(h('p', { class: 'muted', text: status === 'tagged' ? 'Nothing was recognised in this image.' : 'No labels yet.' }));
    return section;
  }
  const list = h('ul', { class: 'labels' });
  labels.forEach((label, index) => {
    const value = clamp(Number(label.confidence) || 0, 0, 100);
    const fill = h('div', { class: `meter-fill${value < 60 ? ' low' : value < 80 ? ' mid' : ''}` });
    fill.style.width = `${value}%`;
    const meta = [];
    if (label.parents?.length) meta.push(h('span', {}, 'in ', h('b', { text: label.parents.join(', ') })));
    if (label.categories?.length) meta.push(h('span', {}, 'category ', h('b', { text: label.categories.join(', ') })));
    if (label.aliases?.length) meta.push(h('span', {}, 'also ', h('b', { text: label.aliases.join(', ') })));
    if (label.instances?.length) meta.push(h('span', { text: `${label.instances.length} ${label.instances.length === 1 ? 'box' : 'boxes'}` }));
    const row = h('li', { class: 'label-row', dataset: { label: label.name } },
      h('button', { type: 'button', class: 'label-name', title: `Search for ${label.name}`, text: label.name, onclick: () => searchForTag(label.name) }),
      h('div', { class: 'meter', role: 'img', 'aria-label': `${percent(value)} confidence` }, fill),
      h('span', { class: 'label-value', text: percent(label.confidence) }),
      meta.length ? h('p', { class: 'label-meta' }, meta.flatMap((part, i) => (i ? [' · ', part] : [part]))) : null);
    if (label.instances?.length) {
      row.addEventListener('mouseenter', () => highlightBoxes('label', index, true));
      row.addEventListener('mouseleave', () => highlightBoxes('label', index, false));
      row.addEventListener('focusin', () => highlightBoxes('label', index, true));
      row.addEventListener('focusout', () => highlightBoxes('label', index, false));
    }
    list.append(row);
  });
  section.append(list);
  return section;
}

function textSection(text) {
  if (!text.length) return null;
  return h('section', { class: 'info-section' },
    h('h3', {}, 'Detected text', h('span', { class: 'count', text: String(text.length) })),
    h('ul', { class: 'text-list' }, text.map((item, index) => {
      const row = h('li', { class: 'text-item' }, h('span', { text: item.text }), h('span', { class: 'conf', text: percent(item.confidence) }));
      if (item.bounding_box) {
        row.addEventListener('mouseenter', () => highlightBoxes('text', index, true));
        row.addEventListener('mouseleave', () => highlightBoxes('text', index, false));
      }
      return row;
    })));
}

function moderationSection(moderation, status) {
  const section = h('section', { class: 'info-section' }, h('h3', {}, 'Moderation'));
  if (status !== 'tagged') {
    section.append(h('p', { class: 'muted', text: 'Not checked.' }));
  } else if (!moderation.length) {
    section.append(h('p', { class: 'moderation-ok' }, icon(ICONS.shield), 'No unsafe content detected'));
  } else {
    section.append(h('ul', { class: 'moderation-list' }, moderation.map((item) => h('li', { class: 'moderation-item' },
      h('span', { text: item.parent ? `${item.name} (${item.parent})` : item.name }),
      h('span', { text: percent(item.confidence) })))));
  }
  return section;
}

function factsSection(record, id) {
  const facts = record.facts || {};
  const rows = [
    ['Key', record.key, true],
    ['Bucket', record.bucket, true],
    ['Size', record.size != null ? `${formatBytes(record.size)} (${formatCount(record.size)} bytes)` : null],
    ['Content type', record.content_type, true],
    ['Dimensions', facts.width && facts.height ? `${facts.width} × ${facts.height} px` : null],
    ['Format', facts.format],
    ['Status', record.status],
    ['Reason', record.reason],
    ['Model', record.model ? `${record.model.backend} ${record.model.version}` : null],
    ['Tagged', record.tagged_at ? formatTime(record.tagged_at) : null],
    ['Updated', record.updated_at ? formatTime(record.updated_at) : null],
    ['Image id', id, true],
  ];
  return h('section', { class: 'info-section' },
    h('h3', {}, 'File'),
    h('dl', { class: 'facts' }, rows.filter(([, value]) => value != null && value !== '').map(([term, value, mono]) => [
      h('dt', { text: term }),
      h('dd', { class: mono ? 'mono' : null, text: String(value) }),
    ])));
}

// ------------------------------------------------------------------ stats

let statsSeq = 0;

async function loadStats() {
  const seq = ++statsSeq;
  const error = $('#stats-error');
  try {
    const stats = await getJson('/v1/stats');
    if (seq !== statsSeq) return;
    error.hidden = true;
    renderStats(stats || {});
  } catch (err) {
    if (seq !== statsSeq) return;
    error.textContent = err.message;
    error.hidden = false;
  }
}

const STATUSES = [
  ['tagged', 'Tagged'],
  ['pending', 'Pending'],
  ['rejected', 'Rejected'],
  ['failed', 'Failed'],
];

function renderStats(stats) {
  const images = stats.images || {};
  const total = Number(images.total) || 0;
  $('#totals').replaceChildren(
    h('div', { class: 'total tone-total' }, h('dt', { text: 'Images' }), h('dd', { text: formatCount(total) })),
    ...STATUSES.map(([key, title]) => h('div', { class: `total tone-${key}`, dataset: { status: key } },
      h('dt', { text: title }), h('dd', { text: formatCount(images[key]) }))));

  const figure = $('#status-chart');
  const caption = figure.querySelector('figcaption');
  const chart = svg('svg', { viewBox: '0 0 1000 18', preserveAspectRatio: 'none', role: 'img', 'aria-label': 'Images by status' });
  const sum = STATUSES.reduce((acc, [key]) => acc + (Number(images[key]) || 0), 0);
  if (sum === 0) {
    chart.append(svg('rect', { class: 'seg-empty', x: 0, y: 0, width: 1000, height: 18 }));
  } else {
    let x = 0;
    for (const [key, title] of STATUSES) {
      const count = Number(images[key]) || 0;
      if (!count) continue;
      const width = (count / sum) * 1000;
      chart.append(svg('rect', { class: `seg-${key}`, x: x.toFixed(2), y: 0, width: width.toFixed(2), height: 18 },
        svg('title', {}, `${title}: ${formatCount(count)}`)));
      x += width;
    }
  }
  const legend = h('p', { class: 'legend' }, STATUSES.map(([key, title]) => h('span', { class: `tone-${key}`, text: `${title} ${formatCount(images[key])}` })));
  figure.replaceChildren(caption, chart, legend);
  figure.hidden = false;

  renderBars($('#top-tags'), stats.top_tags || [], 'No tags yet: upload some photos.', searchForTag, 'tags');
  renderBars($('#top-categories'), stats.top_categories || [], 'No categories yet.', searchForCategory, 'categories');
}

function renderBars(list, items, emptyText, onPick, kind) {
  list.classList.toggle('categories', kind === 'categories');
  const valid = items.filter((item) => item && typeof item.name === 'string');
  if (!valid.length) {
    list.replaceChildren(h('li', { class: 'chart-empty', text: emptyText }));
    return;
  }
  const max = Math.max(1, ...valid.map((item) => Number(item.image_count) || 0));
  list.replaceChildren(...valid.map((item) => {
    const count = Number(item.image_count) || 0;
    const fill = h('span', { class: 'bar-fill' });
    fill.style.width = `${(count / max) * 100}%`;
    return h('li', {},
      h('button', {
        type: 'button',
        class: 'bar-row',
        dataset: { name: item.name },
        'aria-label': `${item.name}: ${formatCount(count)} ${count === 1 ? 'image' : 'images'}. Show them.`,
        onclick: () => onPick(item.name),
      },
      h('span', { class: 'bar-name', title: item.name, text: item.name }),
      h('span', { class: 'bar-track', 'aria-hidden': 'true' }, fill),
      h('span', { class: 'bar-count', 'aria-hidden': 'true', text: formatCount(count) })));
  }));
}

$('#refresh-stats').addEventListener('click', loadStats);

// ---------------------------------------------------------------- routing

let currentView = 'browse';

function imageRoute() {
  const match = /^#\/image\/([0-9a-f]{32})$/.exec(location.hash);
  return match ? match[1] : null;
}

function route({ initial = false } = {}) {
  const id = imageRoute();
  const view = location.hash === '#/stats' ? 'stats' : 'browse';
  if (view !== currentView || initial) {
    currentView = view;
    $('#view-browse').hidden = view !== 'browse';
    $('#view-stats').hidden = view !== 'stats';
    for (const link of document.querySelectorAll('[data-view-link]')) {
      if (link.dataset.viewLink === view) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    document.title = view === 'stats' ? 'Stats · imagetag' : 'imagetag';
    if (view === 'stats') loadStats();
  }
  if (id && IMAGE_ID.test(id)) openDetail(id, !initial);
  else closeDetailFromRoute();
}

window.addEventListener('hashchange', () => route());
window.addEventListener('popstate', () => {
  const before = results.dataset.query;
  readQueryFromUrl();
  renderQueryControls();
  if (queryParams().toString() !== before) runSearch();
});

document.addEventListener('keydown', (event) => {
  if (event.key !== '/' || event.defaultPrevented || detail.open) return;
  const target = event.target;
  if (target instanceof HTMLElement && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) return;
  event.preventDefault();
  if (currentView !== 'browse') location.hash = '#/';
  tagInput.focus();
});

// ------------------------------------------------------------------ start

setupKeyDialog();
readQueryFromUrl();
renderQueryControls();
route({ initial: true });
runSearch();
loadCategories();
