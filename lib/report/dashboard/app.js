/* OffLog dashboard: plain browser JavaScript over the /api reports, charts by uPlot (inlined above). */
(() => {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const PALETTE = ['#3559e0', '#e8702a', '#12a37c', '#c23b7a', '#8a5cf6', '#d4a20b', '#1497b8', '#6b7a8c', '#e0453a', '#59a14f'];
  const TOKEN_KEY = 'offlog.reportToken';
  const REFRESH_MS = 30_000;

  const state = { last: '24h', from: null, to: null, step: 'auto', topAction: null, topLimit: 25, user: null };
  const charts = {};
  let token = localStorage.getItem(TOKEN_KEY) || '';
  let timer = null;
  let loading = false;

  // ── numbers and times ──
  const group = (s) => String(s).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  const big = (s) => BigInt(s);
  const sumStr = (xs) => xs.reduce((a, x) => a + big(x), 0n).toString();
  const pad = (n) => String(n).padStart(2, '0');
  const utc = (iso) => { const d = new Date(iso); return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`; };
  const short = (iso) => { const d = new Date(iso); return `${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`; };
  const duration = (s) => (s < 60 ? `${s}s` : s < 3600 ? `${Math.round(s / 60)} min` : s < 86400 ? `${(s / 3600).toFixed(1)} h` : `${(s / 86400).toFixed(1)} d`);
  const actionName = (a) => (a.name ? a.name : `action ${a.id}`);
  const colorOf = (id) => PALETTE[(id - 1) % PALETTE.length];
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
  const tzDate = (ts) => uPlot.tzDate(new Date(ts * 1e3), 'Etc/UTC');
  // The range inputs hold UTC (the page says so) as "YYYY-MM-DD HH:MM"; anything else goes to the API as typed, which says what is wrong with it.
  const toInput = (ms) => new Date(ms).toISOString().slice(0, 16).replace('T', ' ');
  const fromInput = (v) => { const t = v.trim(); return /^\d{4}-\d\d-\d\d[ T]\d\d:\d\d$/.test(t) ? `${t.replace(' ', 'T')}:00Z` : t; };

  // ── the API ──
  class ApiError extends Error {
    constructor(status, body) { super(body.error || `HTTP ${status}`); this.status = status; this.field = body.field; }
  }
  async function api(path, params = {}) {
    const qs = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== '')).toString();
    const res = await fetch(`api/${path}${qs ? `?${qs}` : ''}`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
    let body = {};
    try { body = await res.json(); } catch { /* not JSON: reported by status below */ }
    if (!res.ok) throw new ApiError(res.status, body);
    return body;
  }
  const rangeParams = () => (state.from ? { from: state.from, to: state.to } : { last: state.last });

  // ── messages ──
  function notice(text, kind = 'error') {
    const n = $('notice');
    if (!text) { n.hidden = true; n.textContent = ''; return; }
    n.hidden = false;
    n.className = kind === 'error' ? 'notice' : 'notice info';
    n.textContent = text;
  }
  function explain(err) {
    if (err instanceof ApiError && err.status === 400) {
      const what = ['from', 'to', 'last'].includes(err.field) ? 'This range cannot be shown' : err.field === 'step' ? 'This step cannot be shown' : 'This request is not valid';
      return `${what}: ${err.message}. Still showing the last range that worked.`;
    }
    if (err instanceof ApiError) return `The report failed (HTTP ${err.status}): ${err.message}`;
    return `Could not reach OffLog: ${err.message}`;
  }

  // ── charts ──
  function chartWidth(el) { return Math.max(240, Math.floor(el.clientWidth)); }
  function chartHeight(el) { return el.classList.contains('chart-small') ? (innerWidth < 640 ? 170 : 200) : (innerWidth < 640 ? 220 : 280); }

  function drawChart(key, el, t, lines, opts = {}) {
    if (charts[key]) { charts[key].destroy(); delete charts[key]; }
    const empty = el.querySelector('.empty');
    const hasData = lines.some((l) => l.values.some((v) => v > 0));
    if (empty) empty.hidden = hasData;
    const styles = getComputedStyle(document.documentElement);
    const axis = { stroke: styles.getPropertyValue('--muted').trim(), grid: { stroke: styles.getPropertyValue('--line').trim(), width: 1 }, ticks: { show: false }, font: '11px system-ui, sans-serif' };
    const series = [{}].concat(lines.map((l) => ({
      label: l.label, stroke: l.color, width: 1.75, fill: opts.fill ? `${l.color}22` : undefined,
      paths: opts.stepped ? uPlot.paths.stepped({ align: 1 }) : undefined, points: { show: t.length < 60 },
    })));
    const data = [t.map((ms) => ms / 1000)].concat(lines.map((l) => l.values));
    charts[key] = new uPlot({
      width: chartWidth(el), height: chartHeight(el), tzDate, series, legend: { show: false }, cursor: { drag: { x: true, y: false } },
      scales: { y: { range: (u, min, max) => [0, max > 0 ? max * 1.08 : 1] } },
      axes: [Object.assign({}, axis, { values: timeTicks }), Object.assign({}, axis, { size: 56, values: (u, vals) => vals.map((v) => (v >= 1e6 ? `${+(v / 1e6).toFixed(1)}M` : v >= 1e3 ? `${+(v / 1e3).toFixed(1)}k` : v)) })],
    }, data, el);
  }

  /** 24-hour UTC tick labels: the date at midnight, the time otherwise. */
  function timeTicks(u, splits) {
    return splits.map((s) => {
      const d = new Date(s * 1000);
      return d.getUTCHours() === 0 && d.getUTCMinutes() === 0 ? `${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}` : `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
    });
  }

  function resizeCharts() {
    for (const [key, id] of [['actions', 'chart-actions'], ['action', 'chart-action'], ['user', 'chart-user']]) {
      const el = $(id);
      if (charts[key] && el.clientWidth > 0) charts[key].setSize({ width: chartWidth(el), height: chartHeight(el) });
    }
  }

  function legend(el, lines) {
    el.innerHTML = lines.map((l) => `<span><i style="background:${l.color}"></i>${esc(l.label)} <b data-total="${esc(l.total)}">${group(l.total)}</b></span>`).join('');
  }

  // ── the parts of the page ──
  async function loadSeries() {
    const s = await api('series', { ...rangeParams(), step: state.step });
    const lines = s.lines.filter((l) => l.total.count !== '0');
    const shown = (lines.length > 0 ? lines : s.lines).slice().sort((a, b) => (big(b.total.count) > big(a.total.count) ? 1 : -1));
    const events = sumStr(s.lines.map((l) => l.total.count));
    const value = sumStr(s.lines.map((l) => l.total.valueSum));
    $('kpi-events').textContent = group(events);
    $('kpi-events').dataset.value = events;
    $('kpi-value').textContent = group(value);
    $('kpi-value').dataset.value = value;
    $('kpi-range').textContent = `${utc(s.from)} → ${utc(s.to)}`;
    const busiest = lines.length ? shown[0] : null;
    $('kpi-busiest').textContent = busiest ? actionName(busiest.action) : '–';
    $('kpi-busiest-foot').textContent = busiest ? `${group(busiest.total.count)} events` : 'no events in range';
    $('series-meta').textContent = `${s.t.length} × ${s.step === 'slice' ? duration(s.stepSeconds) : s.step} · ${utc(s.from)} → ${utc(s.to)}`;
    const chartLines = shown.slice(0, 10).map((l) => ({ label: actionName(l.action), color: colorOf(l.action.id), values: l.count.map(Number), total: l.total.count }));
    drawChart('actions', $('chart-actions'), s.t, chartLines, { fill: chartLines.length <= 3 });
    legend($('legend-actions'), chartLines);
    // The top-users picker lists every action seen, busiest first.
    const select = $('top-action');
    const previous = state.topAction ?? (busiest ? busiest.action.id : null);
    select.innerHTML = shown.map((l) => `<option value="${l.action.id}">${esc(actionName(l.action))} · ${group(l.total.count)}</option>`).join('');
    if (previous !== null && shown.some((l) => l.action.id === previous)) select.value = String(previous);
    state.topAction = select.value ? Number(select.value) : null;
    const chosen = s.lines.find((l) => l.action.id === state.topAction);
    if (chosen) {
      const pair = [
        { label: `${actionName(chosen.action)} events`, color: colorOf(chosen.action.id), values: chosen.count.map(Number), total: chosen.total.count },
        { label: 'distinct users per step', color: '#98a2b3', values: chosen.users, total: String(Math.max(0, ...chosen.users)) },
      ];
      drawChart('action', $('chart-action'), s.t, pair, { fill: true });
      $('legend-action').innerHTML = `<span><i style="background:${pair[0].color}"></i>${esc(pair[0].label)} <b>${group(pair[0].total)}</b></span><span><i style="background:${pair[1].color}"></i>${esc(pair[1].label)}, at most <b>${group(pair[1].total)}</b></span>`;
    }
  }

  async function loadTop() {
    const body = $('top-table').tBodies[0];
    if (state.topAction === null) { body.innerHTML = '<tr><td colspan="5" class="muted">No actions in this range.</td></tr>'; return; }
    const r = await api('top', { ...rangeParams(), action: state.topAction, limit: state.topLimit });
    const max = r.users.length ? Number(r.users[0].count) : 1;
    body.innerHTML = r.users.length === 0 ? '<tr><td colspan="5" class="muted">No users did this in the range.</td></tr>' : r.users.map((u) => `
      <tr data-user="${esc(u.userId)}"><td class="num">${u.rank}</td><td class="user">${esc(u.userId)}</td>
      <td class="num" data-count="${esc(u.count)}">${group(u.count)}</td><td class="num" data-value="${esc(u.valueSum)}">${group(u.valueSum)}</td>
      <td class="sharecell"><div class="sharebar"><span style="width:${Math.max(1, (100 * Number(u.count)) / max).toFixed(1)}%;background:${colorOf(state.topAction)}"></span></div></td></tr>`).join('');
  }

  async function loadUser() {
    if (!state.user) return;
    const r = await api('timeline', { ...rangeParams(), step: state.step, user: state.user });
    $('user-empty').hidden = r.lines.length > 0;
    $('user-empty').textContent = r.lines.length ? '' : `User ${state.user} did nothing in this range.`;
    $('user-result').hidden = r.lines.length === 0;
    if (r.lines.length === 0) return;
    const lines = r.lines.slice(0, 10).map((l) => ({ label: actionName(l.action), color: colorOf(l.action.id), values: l.count.map(Number) }));
    // Drawn once visible, so the chart takes the card's width.
    drawChart('user', $('chart-user'), r.t, lines, { stepped: true, fill: true });
    $('user-table').tBodies[0].innerHTML = r.lines.map((l) => `<tr><td><span class="badge" style="background:${colorOf(l.action.id)}22;color:${colorOf(l.action.id)}">${esc(actionName(l.action))}</span></td>
      <td class="num" data-count="${esc(l.total.count)}">${group(l.total.count)}</td><td class="num">${group(l.total.valueSum)}</td></tr>`).join('');
  }

  async function loadHealth() {
    const h = await api('health', { slices: 24 });
    const pill = $('health-pill');
    pill.className = `pill pill-${h.level}`;
    pill.textContent = h.level === 'ok' ? 'healthy' : h.level === 'warn' ? 'needs a look' : 'problem';
    const lvl = $('health-level');
    lvl.className = `badge lvl-${h.level}`;
    lvl.textContent = h.level;
    $('health-reasons').innerHTML = h.reasons.length ? h.reasons.map((r) => `<li>${esc(r)}</li>`).join('') : '<li class="ok">Flushing on time; nothing lost, late or evicted.</li>';
    if (!h.flush.error) {
      $('kpi-lag').textContent = h.flush.lagSlices === null ? '–' : h.flush.lagSlices === 0 ? 'on time' : duration(h.flush.lagSeconds);
      $('kpi-watermark').textContent = h.flush.watermark ? `flushed to ${utc(h.flush.watermark)}` : 'nothing flushed yet';
    }
    const queued = h.gearman.reduce((n, g) => n + g.queued, 0);
    $('h-queue').textContent = group(queued);
    $('h-workers').textContent = group(h.gearman.reduce((n, g) => n + g.workers, 0));
    const deadQueued = h.gearman.reduce((n, g) => n + g.deadLettersQueued, 0);
    $('h-dead').textContent = h.deadLetters.error ? '?' : group(h.deadLetters.stored + deadQueued);
    if (!h.memcached.error) {
      const bytes = h.memcached.reduce((n, m) => n + m.bytes, 0);
      const limit = h.memcached.reduce((n, m) => n + m.limitBytes, 0);
      const fill = limit ? bytes / limit : 0;
      $('h-fill').style.width = `${Math.min(100, fill * 100).toFixed(1)}%`;
      $('h-fill').style.background = fill > 0.9 ? 'var(--bad)' : fill > 0.7 ? 'var(--warn)' : 'var(--ok)';
      $('h-fill-text').textContent = `${(fill * 100).toFixed(1)} % of ${Math.round(limit / 2 ** 20)} MiB · ${group(h.memcached.reduce((n, m) => n + m.items, 0))} items`;
      $('h-evictions').textContent = group(h.memcached.reduce((n, m) => n + m.evictions, 0));
    }
    const body = $('h-slices').tBodies[0];
    const recent = h.slices.error ? [] : h.slices.recent;
    body.innerHTML = recent.length === 0 ? '<tr><td colspan="5" class="muted">No slices flushed yet.</td></tr>' : recent.map((s) => {
      const flags = [];
      if (s.status !== 'flushed') flags.push(`<span class="badge b-${esc(s.status)}">${esc(s.status)}</span>`);
      if (s.late !== '0') flags.push(`<span class="badge b-late" title="events counted late">late ${group(s.late)}</span>`);
      if (s.pairsMissing > 0) flags.push(`<span class="badge b-missing" title="pairs missing from memcached">missing ${group(s.pairsMissing)}</span>`);
      if (flags.length === 0) flags.push('<span class="badge b-ok">ok</span>');
      return `<tr data-status="${esc(s.status)}"><td>${short(s.sliceStart)}</td><td>${esc(s.status)}</td><td class="num">${group(s.rows)}</td><td class="num">${s.events === null ? '–' : group(s.events)}</td><td>${flags.join('')}</td></tr>`;
    }).join('');
  }

  // ── refresh ──
  async function refresh() {
    if (loading) return;
    loading = true;
    document.body.dataset.state = 'loading';
    // Visible while loading, so that charts measure the width they will have.
    const wasHidden = $('main').hidden;
    $('main').hidden = false;
    try {
      const results = await Promise.allSettled([loadSeries().then(loadTop), loadHealth(), loadUser()]);
      const failed = results.find((r) => r.status === 'rejected');
      if (failed && failed.reason instanceof ApiError && failed.reason.status === 401) {
        $('token-form').hidden = false;
        $('main').hidden = true;
        notice(token ? 'The report token was refused.' : 'Reading the reports needs a token.', token ? 'error' : 'info');
      } else if (failed) {
        notice(explain(failed.reason));
      } else {
        notice('');
        $('token-form').hidden = true;
        if (wasHidden) resizeCharts();
        // When the first charts with data were on screen (the benchmark's "first paint").
        if (performance.getEntriesByName('offlog:data').length === 0) performance.mark('offlog:data');
      }
      $('updated').textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC`;
    } finally {
      loading = false;
      document.body.dataset.state = 'ready';
    }
  }

  function schedule() {
    clearInterval(timer);
    timer = $('auto').checked ? setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS) : null;
  }

  function markPreset() {
    for (const b of document.querySelectorAll('#presets button')) b.setAttribute('aria-pressed', String(!state.from && b.dataset.last === state.last));
  }

  function saveHash() {
    const p = new URLSearchParams(state.from ? { from: state.from, to: state.to } : { last: state.last });
    if (state.step !== 'auto') p.set('step', state.step);
    if (state.user) p.set('user', state.user);
    history.replaceState(null, '', `#${p}`);
  }

  function readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    if (p.get('from') && p.get('to')) Object.assign(state, { from: p.get('from'), to: p.get('to') });
    else if (p.get('last')) state.last = p.get('last');
    if (p.get('step')) state.step = p.get('step');
    if (p.get('user')) state.user = p.get('user');
  }

  function syncInputs() {
    const to = state.from ? Date.parse(state.to) : Date.now();
    const units = { m: 60e3, h: 3600e3, d: 86400e3 };
    const m = /^(\d+)([mhd])$/.exec(state.last || '');
    const from = state.from ? Date.parse(state.from) : m ? to - Number(m[1]) * units[m[2]] : to - 86400e3;
    if (Number.isFinite(from)) $('from').value = toInput(from);
    if (Number.isFinite(to)) $('to').value = toInput(to);
    $('step').value = state.step;
    $('user').value = state.user || '';
  }

  // ── wiring ──
  document.querySelectorAll('#presets button').forEach((b) => b.addEventListener('click', () => {
    Object.assign(state, { last: b.dataset.last, from: null, to: null });
    markPreset(); syncInputs(); saveHash(); refresh();
  }));
  $('custom').addEventListener('submit', (e) => {
    e.preventDefault();
    Object.assign(state, { from: fromInput($('from').value), to: fromInput($('to').value) });
    markPreset(); saveHash(); refresh();
  });
  $('step').addEventListener('change', () => { state.step = $('step').value; saveHash(); refresh(); });
  $('top-action').addEventListener('change', () => { state.topAction = Number($('top-action').value); refresh(); });
  $('top-limit').addEventListener('change', () => { state.topLimit = Number($('top-limit').value); loadTop().catch((e) => notice(explain(e))); });
  $('top-table').addEventListener('click', (e) => {
    const row = e.target.closest('tr[data-user]');
    if (!row) return;
    state.user = row.dataset.user;
    $('user').value = state.user;
    saveHash();
    loadUser().then(() => $('user-form').scrollIntoView({ behavior: 'smooth', block: 'nearest' })).catch((err) => notice(explain(err)));
  });
  $('user-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const v = $('user').value.trim();
    if (!/^\d{1,20}$/.test(v)) { notice(`user: must be an unsigned 64-bit integer, got ${JSON.stringify(v)}`); return; }
    state.user = v;
    saveHash();
    loadUser().then(() => notice('')).catch((err) => notice(explain(err)));
  });
  $('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    token = $('token').value.trim();
    localStorage.setItem(TOKEN_KEY, token);
    refresh();
  });
  $('health-pill').addEventListener('click', () => $('health-card').scrollIntoView({ behavior: 'smooth' }));
  $('refresh').addEventListener('click', refresh);
  $('auto').addEventListener('change', schedule);
  let resizeTimer = null;
  addEventListener('resize', () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(resizeCharts, 120); });

  readHash();
  markPreset();
  syncInputs();
  schedule();
  refresh();
})();
