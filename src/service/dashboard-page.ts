/**
 * The dashboard: one self-contained page (no external assets, works on an
 * air-gapped host) polling the JSON API every 2 s. Charts are inline SVG.
 */
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vfsx</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .2em}h2{font-size:1.05em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left}
th{background:#f0f0f0}.up{color:#080;font-weight:bold}.down,.unknown{color:#b00;font-weight:bold}.connecting{color:#a60}
.ok{color:#080}.warn{color:#b00;font-weight:bold}svg{background:#fff;border:1px solid #ddd}
.charts{display:flex;flex-wrap:wrap;gap:1em}.chart{font-size:12px}code{background:#eee;padding:0 .2em}
#events li{font-family:monospace;font-size:12px}
</style></head><body>
<h1>vfsx</h1>
<div>DR site <code id="site-url"></code>: <span id="site-state" class="unknown">…</span>
 · bandwidth: <span id="bandwidth"></span> · journal: <span id="journal"></span> · spool: <span id="spool"></span> · updated <span id="updated">never</span></div>
<h2>DR sites</h2>
<table id="sites"><thead><tr><th>site</th><th>url</th><th>link</th><th>bandwidth</th><th>backlog records</th><th>worst RPO age</th></tr></thead><tbody></tbody></table>
<h2>Shares</h2>
<table id="shares"><thead><tr><th>site</th><th>share</th><th>backlog records</th><th>files</th><th>dirty bytes</th><th>RPO age</th><th>ops/s (1 min)</th><th>bytes/s (1 min)</th><th>last commit</th><th>scrub</th></tr></thead><tbody></tbody></table>
<h2>Backlog and RPO over time</h2>
<div class="charts" id="charts"></div>
<h2>Records waiting to be retried</h2>
<table id="retrying"><caption id="retry-note"></caption><thead><tr><th>site</th><th>share</th><th>path</th><th>op</th><th>attempts</th><th>last error</th><th></th></tr></thead><tbody></tbody></table>
<h2>Left out: paths the DR site cannot take</h2>
<table id="left-out"><thead><tr><th>site</th><th>share</th><th>path</th><th>op</th><th>since</th><th>why</th></tr></thead><tbody></tbody></table>
<h2>Recent events</h2>
<ul id="events"></ul>
<h2>Why?</h2>
<form id="why-form">share <input id="why-share" size="10"> path <input id="why-path" size="40"> <button id="why-go">explain</button></form>
<pre id="why-out"></pre>
<script>
const token = new URLSearchParams(location.search).get('token');
const q = (p) => p + (token ? (p.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token) : '');
const api = async (p, opts) => { const r = await fetch(q(p), opts); if (!r.ok) throw new Error(p + ': ' + r.status); return r.json(); };
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]));
const age = (s) => s < 1 ? (s * 1000).toFixed(0) + ' ms' : s < 120 ? s.toFixed(1) + ' s' : (s / 60).toFixed(1) + ' min';
const when = (ms) => ms ? new Date(ms).toLocaleTimeString() : '—';
function chart(id, title, points, key, color) {
  const W = 360, H = 110, n = points.length;
  const max = Math.max(1, ...points.map((p) => p.v));
  const xy = points.map((p, i) => (n < 2 ? 0 : (i / (n - 1)) * W).toFixed(1) + ',' + (H - (p.v / max) * (H - 10)).toFixed(1)).join(' ');
  const last = n ? points[n - 1].v : 0;
  return '<div class="chart"><div>' + esc(title) + ': <b>' + esc(key === 'rpo' ? age(last) : last) + '</b> (max ' + esc(key === 'rpo' ? age(max) : max) + ')</div>'
    + '<svg id="' + esc(id) + '" data-points="' + n + '" data-last="' + last + '" width="' + W + '" height="' + H + '"><polyline fill="none" stroke="' + color + '" stroke-width="2" points="' + xy + '"/></svg></div>';
}
function rate(b) {
  const u = [['GiB', 1073741824], ['MiB', 1048576], ['KiB', 1024]];
  for (const [n, v] of u) if (b >= v) return (b / v).toFixed(1) + ' ' + n + '/s';
  return Math.round(b) + ' B/s';
}
async function refresh() {
  const [st, hist, evs] = await Promise.all([api('/api/status'), api('/api/history'), api('/api/events?n=30')]);
  document.getElementById('site-url').textContent = st.site.url;
  const ss = document.getElementById('site-state');
  ss.textContent = st.site.state + (st.site.lastError && st.site.state !== 'up' ? ' (' + st.site.lastError + ')' : '');
  ss.className = st.site.state;
  const bw = st.site.bandwidth;
  document.getElementById('bandwidth').textContent = (bw.limit > 0 ? 'limited to ' + rate(bw.limit) : 'no limit')
    + (bw.text.indexOf(',') >= 0 ? ' (timetable ' + bw.text + ')' : '') + (bw.source === 'override' ? ' (set by vfsx bwlimit)' : '')
    + ', sending ' + rate(bw.sentPerSec);
  document.querySelector('#sites tbody').innerHTML = st.sites.map((v) => {
    const b = v.site.bandwidth;
    const back = v.shares.reduce((a, x) => a + x.backlog.records, 0);
    const rpo = v.shares.reduce((a, x) => Math.max(a, x.rpoAgeSeconds), 0);
    return '<tr data-site="' + esc(v.site.name) + '"><td>' + esc(v.site.name) + '</td><td>' + esc(v.site.url) + '</td><td class="' + esc(v.site.state) + '">' + esc(v.site.state)
      + (v.site.initialSync === 'pending' ? ' (initial sync)' : '') + '</td><td>' + (b.limit > 0 ? 'limited to ' + rate(b.limit) : 'no limit') + ', sending ' + rate(b.sentPerSec)
      + '</td><td class="records">' + back + '</td><td>' + rpo.toFixed(1) + ' s</td></tr>';
  }).join('');
  document.getElementById('journal').textContent = st.journal.unpumped + ' unpumped, ' + st.journal.awaitingOutcome + ' awaiting outcome';
  const sp = document.getElementById('spool');
  sp.textContent = st.spool.failOpenEngaged ? 'FAIL-OPEN: ' + st.spool.files + ' files, ' + st.spool.bytes + ' bytes' : 'empty';
  sp.className = st.spool.failOpenEngaged ? 'warn' : 'ok';
  document.getElementById('updated').textContent = new Date(st.at).toLocaleTimeString();
  // Every share at every site: a site that falls behind shows on its own rows and charts.
  const rows = st.sites.flatMap((v, k) => v.shares.map((s) => ({ site: v.site.name, first: k === 0, s })));
  document.querySelector('#shares tbody').innerHTML = rows.map(({ site, s }) => '<tr data-share="' + esc(s.share) + '" data-site="' + esc(site) + '"><td>' + esc(site) + '</td><td>' + esc(s.share) + '</td><td class="records">' + s.backlog.records
    + '</td><td>' + s.backlog.files + '</td><td>' + s.backlog.bytes + '</td><td class="rpo ' + (s.rpoAgeSeconds > 60 ? 'warn' : 'ok') + '">' + age(s.rpoAgeSeconds)
    + '</td><td>' + s.throughput.opsPerSec.toFixed(2) + '</td><td>' + s.throughput.bytesPerSec.toFixed(0) + '</td><td>' + when(s.lastCommitAt) + ' ' + esc(s.lastCommitPath || '')
    + '</td><td class="scrub">' + (s.scrub.state === 'running' ? esc(s.scrub.kind) + ' pass: ' + s.scrub.checked + ' checked'
      : s.scrub.state === 'never' ? 'not yet' : esc(s.scrub.kind) + ' ' + when(s.scrub.finishedAt) + ': '
      + (s.scrub.error ? 'FAILED ' + esc(s.scrub.error) : s.scrub.repaired + '/' + s.scrub.differences + ' repaired' + (s.scrub.leftOut ? ', ' + s.scrub.leftOut + ' left out' : ''))) + '</td></tr>').join('');
  // The first site's charts keep their ids (chart-backlog-SHARE); another site's end in @SITE.
  document.getElementById('charts').innerHTML = rows.map(({ site, first, s }) => {
    const pts = hist.map((h) => (first ? h.shares : (h.sites || {})[site] || {})[s.share]).filter(Boolean);
    const id = s.share + (first ? '' : '@' + site), title = s.share + (st.sites.length > 1 ? ' at ' + site : '');
    return chart('chart-backlog-' + id, title + ' backlog (records)', pts.map((p) => ({ v: p.records })), 'records', '#36c')
      + chart('chart-rpo-' + id, title + ' RPO age', pts.map((p) => ({ v: p.rpoAgeSeconds })), 'rpo', '#c33');
  }).join('');
  const retrying = st.sites.flatMap((v) => v.shares.flatMap((s) => s.retrying.map((r) => ({ site: v.site.name, r }))));
  document.querySelector('#retrying tbody').innerHTML = retrying.length === 0 ? '<tr><td colspan="7">none</td></tr>' : retrying.map(({ site, r }) => '<tr><td>' + esc(site) + '</td><td>' + esc(r.share) + '</td><td>' + esc(r.path)
    + '</td><td>' + esc(r.op) + '</td><td>' + r.attempts + '</td><td>' + esc(r.error) + '</td><td><button class="retry" data-job="' + esc(r.jobId) + '" data-site="' + esc(site) + '">retry now</button></td></tr>').join('');
  const leftOut = st.sites.flatMap((v) => v.shares.flatMap((s) => s.leftOut.paths.map((e) => ({ site: v.site.name, share: s.share, e }))));
  document.querySelector('#left-out tbody').innerHTML = leftOut.length === 0 ? '<tr><td colspan="6">none</td></tr>' : leftOut.map(({ site, share, e }) => '<tr><td>' + esc(site) + '</td><td>' + esc(share)
    + '</td><td>' + esc(e.path) + '</td><td>' + esc(e.op) + '</td><td>' + esc(when(e.since)) + '</td><td>' + esc(e.error) + '</td></tr>').join('');
  document.getElementById('events').innerHTML = evs.map((e) => '<li>' + esc(new Date(e.at).toLocaleTimeString() + ' ' + e.type + ' ' + (e.share || e.site || '') + ' ' + (e.path || '') + ' ' + (e.error || '')
    + (e.rpoAgeMs !== undefined ? ' rpo ' + age(e.rpoAgeMs / 1000) : '')) + '</li>').join('');
}
document.addEventListener('click', async (ev) => {
  const b = ev.target.closest && ev.target.closest('button.retry');
  if (!b) return;
  b.disabled = true;
  // The answer also goes to the table's caption: the next refresh redraws the rows (and drops a record that committed).
  const note = (t) => { b.textContent = t; document.getElementById('retry-note').textContent = 'job ' + b.dataset.job + ': ' + t; };
  try { const r = await api('/api/retry?job=' + encodeURIComponent(b.dataset.job) + '&site=' + encodeURIComponent(b.dataset.site), { method: 'POST' }); note('retried (' + r.was + ')'); }
  catch (e) { note('failed: ' + e.message); }
});
document.getElementById('why-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const share = document.getElementById('why-share').value, path = document.getElementById('why-path').value;
  const out = document.getElementById('why-out');
  out.textContent = '…';
  try { out.textContent = JSON.stringify(await api('/api/why?share=' + encodeURIComponent(share) + '&path=' + encodeURIComponent(path)), null, 2); }
  catch (e) { out.textContent = String(e); }
});
const loop = () => refresh().catch((e) => { document.getElementById('site-state').textContent = 'dashboard cannot reach vfsx serve: ' + e.message; }).finally(() => setTimeout(loop, 2000));
loop();
</script></body></html>
`;
