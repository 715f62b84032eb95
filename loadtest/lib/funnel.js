// Shared parts of the Funnel k6 scenarios: the traffic model, the per-stage metrics, the
// options builder (warm-up + measured phase, thresholds) and the summary writer.
//
// Every knob is an environment variable (k6 sees the process environment, and `-e KEY=VALUE`);
// loadtest/README.md lists them. run.sh sets BASE_URL, USERS, ITEMS and SUMMARY_JSON.

import http from 'k6/http';
import exec from 'k6/execution';
import { check, fail } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';

const env = __ENV;

function num(name, dflt) {
  const v = env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`${name}=${v} is not a number`);
  return n;
}

function str(name, dflt) {
  const v = env[name];
  return v === undefined || v === '' ? dflt : v;
}

export const BASE_URL = str('BASE_URL', 'http://127.0.0.1:8080');
// Synthetic bundles (index-builder synth) number users 1..=USERS and items 1..=ITEMS.
const USERS = num('USERS', 5000);
const ITEMS = num('ITEMS', 20000);
const K = num('K', 20);
// Traffic mix: known users without a session, known users with 1-5 session items, and cold
// visitors ("visitor-<n>", unknown to the bundle) with session items. The rest is known users.
const SESSION_SHARE = num('SESSION_SHARE', 0.2);
const COLD_SHARE = num('COLD_SHARE', 0.1);
// Known users are drawn from a bounded Zipf over a fixed shuffle of the ids: with s = 0.8 and
// 50K users, the hottest 1 % of users send about a third of the requests (hot users repeat).
const ZIPF_S = num('ZIPF_S', 0.8);
// Share of iterations that also POST /v1/events (impressions of the top 5 + one engagement).
const EVENTS_SHARE = num('EVENTS_SHARE', 0.05);
// explain: true on every request, to record rankers per request and candidate counts. It makes
// responses larger, so it is off by default.
const EXPLAIN = str('EXPLAIN', '0') === '1';
const TIMEOUT = str('TIMEOUT', '5s');
// A `ranking` override sent with every request, as JSON, e.g. '{"strategy": "mean"}' or
// '{"models": ["logistic-v1", "mlp-v1"], "max_models": 2}'.
const RANKING = env.RANKING ? JSON.parse(env.RANKING) : null;

// ALLOW_SHED=1 (the overload scenario): a 503 `overloaded` with Retry-After is a correct answer
// past capacity, counted as shed (its own latency trend), not as an error.
const ALLOW_SHED = str('ALLOW_SHED', '0') === '1';

// VERSIONS=a,b (the reload scenario): the bundle versions allowed to answer; any other (or
// none) counts in wrong_version.
const VERSIONS = str('VERSIONS', '').split(',').filter((v) => v !== '');

// Thresholds (the measured phase only).
const P95_MS = num('P95_MS', 200);
const P99_MS = num('P99_MS', 0); // 0 = no p99 threshold
const ERROR_RATE = num('ERROR_RATE', 0.001);

// ---------------------------------------------------------------------------------------------
// Metrics. Stage trends come from the server's `timings_ms`; they are recorded in the measured
// phase ("main" scenario) only, so warm-up and setup requests never reach the summary's tables.

export const rec_latency = new Trend('rec_latency', true); // client-side, POST /v1/recommend
const server_total = new Trend('server_total', true); // timings_ms.total
const http_overhead = new Trend('http_overhead', true); // client latency - server total
const stages = {
  features: new Trend('stage_features', true),
  item_features: new Trend('stage_item_features', true),
  ann: new Trend('stage_ann', true),
  cf: new Trend('stage_cf', true),
  content: new Trend('stage_content', true),
  trending: new Trend('stage_trending', true),
  sources_max: new Trend('stage_sources_max', true), // the slowest of the four sources
  merge: new Trend('stage_merge', true),
  rank: new Trend('stage_rank', true),
  rerank: new Trend('stage_rerank', true),
};
const degraded = new Rate('degraded'); // degradation != "full"
const degradation = {
  stale_features: new Counter('degradation_stale_features'),
  simple_ranking: new Counter('degradation_simple_ranking'),
  batch: new Counter('degradation_batch'),
  popularity: new Counter('degradation_popularity'),
};
const short_list = new Rate('short_list'); // fewer than k items returned
const rec_errors = new Counter('rec_errors'); // non-200 recommend responses (shed ones excepted)
const shed = new Rate('shed'); // ALLOW_SHED: share of recommend requests answered 503 overloaded
const shed_latency = new Trend('shed_latency', true); // client-side time of those 503s
const shed_malformed = new Counter('shed_malformed'); // a 503 without Retry-After or its code
const wrong_version = new Counter('wrong_version'); // VERSIONS: answered by another version
const events_latency = new Trend('events_latency', true);
const events_sent = new Counter('events_sent');
const events_rejected = new Counter('events_rejected');
const rankers = new Trend('rankers_per_request'); // EXPLAIN=1 only
const candidates = new Trend('candidates'); // EXPLAIN=1 only

// ---------------------------------------------------------------------------------------------
// Traffic model.

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

// A fixed bijection of 0..n-1 (multiplication by a unit mod n), so rank 1 of the Zipf is some
// arbitrary id rather than id 1.
function shuffler(n) {
  let p = 1000003;
  while (gcd(p, n) !== 1) p += 2;
  return (r) => ((r * p) % n) + 1;
}
const userOf = shuffler(USERS);
const itemOf = shuffler(ITEMS);

// Bounded Zipf (continuous inverse CDF), ranks 0..n-1.
function zipfRank(n, s) {
  const u = Math.random();
  let r;
  if (Math.abs(s - 1) < 1e-9) {
    r = Math.exp(u * Math.log(n + 1)) - 1;
  } else {
    const a = 1 - s;
    r = Math.pow((Math.pow(n + 1, a) - 1) * u + 1, 1 / a) - 1;
  }
  return Math.min(n - 1, Math.max(0, Math.floor(r)));
}

function randInt(lo, hi) {
  return lo + Math.floor(Math.random() * (hi - lo + 1));
}

// Session items: 70 % from the pool of items the server recommended during setup (what users
// are actually shown, so mostly the popular head), 30 % from a Zipf over the whole catalog.
function sessionItems(pool) {
  const n = randInt(1, 5);
  const out = [];
  for (let i = 0; i < n; i++) {
    if (pool.length > 0 && Math.random() < 0.7) {
      out.push(pool[Math.floor(Math.random() * pool.length)]);
    } else {
      out.push(itemOf(zipfRank(ITEMS, 1.0)));
    }
  }
  return out;
}

const DEVICES = ['mobile', 'mobile', 'mobile', 'web', 'tv'];

function nextRequest(pool) {
  const r = Math.random();
  let kind;
  let user;
  let session = [];
  if (r < COLD_SHARE) {
    kind = 'cold';
    user = `visitor-${randInt(1, 1e9)}`;
    session = sessionItems(pool);
  } else if (r < COLD_SHARE + SESSION_SHARE) {
    kind = 'session';
    user = String(userOf(zipfRank(USERS, ZIPF_S)));
    session = sessionItems(pool);
  } else {
    kind = 'known';
    user = String(userOf(zipfRank(USERS, ZIPF_S)));
  }
  const body = {
    user_id: user,
    k: K,
    context: { device: DEVICES[Math.floor(Math.random() * DEVICES.length)], session_items: session },
  };
  if (EXPLAIN) body.explain = true;
  if (RANKING) body.ranking = RANKING;
  return { kind, user, body };
}

const JSON_HEADERS = { 'Content-Type': 'application/json' };

function postRecommend(body, tags) {
  return http.post(`${BASE_URL}/v1/recommend`, JSON.stringify(body), {
    headers: JSON_HEADERS,
    tags,
    timeout: TIMEOUT,
  });
}

// ---------------------------------------------------------------------------------------------
// Lifecycle.

export function setup() {
  const ready = http.get(`${BASE_URL}/readyz`, { tags: { endpoint: 'setup' } });
  if (ready.status !== 200) fail(`GET /readyz answered ${ready.status}: ${ready.body}`);
  // A pool of items that real recommendations contain, for realistic session items.
  const pool = new Set();
  for (let i = 0; i < 30 && pool.size < 2000; i++) {
    const user = String(userOf(zipfRank(USERS, 0.5)));
    const res = postRecommend({ user_id: user, k: 50 }, { endpoint: 'setup' });
    if (res.status !== 200) fail(`setup recommend for user ${user}: ${res.status} ${res.body}`);
    for (const it of res.json('items') || []) pool.add(it.item_id);
  }
  return { pool: Array.from(pool), bundle_version: ready.json('bundle_version') || null };
}

// A 503 from admission control: JSON {code: "overloaded"} with a Retry-After header.
function isShed(res) {
  if (res.status !== 503) return false;
  let code = null;
  try {
    code = res.json('code');
  } catch (e) {
    code = null;
  }
  return code === 'overloaded' && Boolean(res.headers['Retry-After']);
}

function recordResponse(res, kind, main) {
  if (ALLOW_SHED) {
    const wasShed = isShed(res);
    check(res, { 'recommend: 200, or 503 overloaded with Retry-After': (r) => r.status === 200 || wasShed });
    if (main) {
      shed.add(wasShed);
      if (res.status === 503 && !wasShed) shed_malformed.add(1);
    }
    if (wasShed) {
      if (main) shed_latency.add(res.timings.duration);
      return null;
    }
  }
  let body = null;
  if (res.status === 200) {
    try {
      body = res.json();
    } catch (e) {
      body = null;
    }
  }
  check(res, {
    'recommend: status 200': (r) => r.status === 200,
    'recommend: items and timings': () =>
      body !== null && Array.isArray(body.items) && body.timings_ms !== undefined,
  });
  if (!main) return body;
  if (res.status !== 200) {
    rec_errors.add(1, { status: String(res.status) });
    return body;
  }
  rec_latency.add(res.timings.duration, { user_kind: kind });
  if (VERSIONS.length > 0 && (body === null || !VERSIONS.includes(body.bundle_version))) {
    wrong_version.add(1);
  }
  if (body === null || body.timings_ms === undefined) return body;
  const t = body.timings_ms;
  const s = t.sources || {};
  server_total.add(t.total);
  http_overhead.add(Math.max(0, res.timings.duration - t.total));
  stages.features.add(t.features);
  stages.item_features.add(t.item_features);
  stages.ann.add(s.ann);
  stages.cf.add(s.cf);
  stages.content.add(s.content);
  stages.trending.add(s.trending);
  stages.sources_max.add(Math.max(s.ann, s.cf, s.content, s.trending));
  stages.merge.add(t.merge);
  stages.rank.add(t.rank);
  stages.rerank.add(t.rerank);
  const level = body.degradation;
  degraded.add(level !== 'full');
  if (degradation[level]) degradation[level].add(1);
  short_list.add(!Array.isArray(body.items) || body.items.length < K);
  if (body.explain) {
    const ens = body.explain.ensemble;
    rankers.add(ens && Array.isArray(ens.selected) ? ens.selected.filter((m) => !m.failed).length : 0);
    candidates.add(body.explain.candidates || 0);
  }
  return body;
}

const ENGAGEMENTS = ['click', 'click', 'view', 'play', 'like'];

function postEvents(user, body, main) {
  // The events API takes integer user ids only; cold visitors ("visitor-<n>") send none.
  if (!/^[0-9]+$/.test(user)) return;
  const shown = (body.items || []).slice(0, 5).map((it) => it.item_id);
  if (shown.length === 0) return;
  const base = `lt-${exec.vu.idInTest}-${exec.vu.iterationInInstance}-${Date.now()}`;
  const events = shown.map((id, i) => ({
    user_id: user,
    item_id: id,
    type: 'impression',
    event_id: `${base}-i${i}`,
  }));
  events.push({
    user_id: user,
    item_id: shown[Math.floor(Math.random() * shown.length)],
    type: ENGAGEMENTS[Math.floor(Math.random() * ENGAGEMENTS.length)],
    event_id: `${base}-e`,
  });
  const res = http.post(`${BASE_URL}/v1/events`, JSON.stringify({ events }), {
    headers: JSON_HEADERS,
    tags: { endpoint: 'events' },
    timeout: TIMEOUT,
  });
  check(res, { 'events: status 202': (r) => r.status === 202 });
  if (!main) return;
  events_latency.add(res.timings.duration);
  events_sent.add(events.length);
  if (res.status === 202) {
    const rej = res.json('rejected');
    if (Array.isArray(rej) && rej.length > 0) events_rejected.add(rej.length);
  }
}

export function iteration(data) {
  const main = exec.scenario.name === 'main';
  const req = nextRequest(data.pool);
  const res = postRecommend(req.body, { endpoint: 'recommend', user_kind: req.kind });
  const body = recordResponse(res, req.kind, main);
  if (body !== null && EVENTS_SHARE > 0 && Math.random() < EVENTS_SHARE) {
    postEvents(req.user, body, main);
  }
}

// ---------------------------------------------------------------------------------------------
// Options.

export function seconds(d) {
  if (typeof d === 'number') return d;
  const re = /(\d+(?:\.\d+)?)(ms|h|m|s)/g;
  let total = 0;
  let m;
  let matched = '';
  while ((m = re.exec(d)) !== null) {
    const v = Number(m[1]);
    total += m[2] === 'h' ? v * 3600 : m[2] === 'm' ? v * 60 : m[2] === 's' ? v : v / 1000;
    matched += m[0];
  }
  if (matched !== d) throw new Error(`bad duration "${d}" (use e.g. 30s, 5m, 1m30s)`);
  return total;
}

// VUs an arrival-rate scenario may use: enough for the rate at a 1 s response time before any
// iteration is dropped (dropped_iterations then means the server is far past saturation).
function vus(rate) {
  const pre = num('PRE_VUS', Math.max(10, Math.ceil(rate / 4)));
  const max = num('MAX_VUS', Math.max(50, Math.ceil(rate * 1.5)));
  return { preAllocatedVUs: Math.min(pre, max), maxVUs: max };
}

// A warm-up phase (scenario "warmup", excluded from every threshold and stage metric), then the
// measured phase (scenario "main") at a constant arrival rate.
export function arrivalOptions(defaults) {
  const rate = num('RATE', defaults.rate);
  const duration = str('DURATION', defaults.duration);
  const warmup = str('WARMUP', defaults.warmup);
  const warmupRate = num('WARMUP_RATE', defaults.warmupRate || rate);
  const scenarios = {};
  const warmupS = seconds(warmup);
  if (warmupS > 0) {
    scenarios.warmup = {
      executor: 'constant-arrival-rate',
      rate: warmupRate,
      timeUnit: '1s',
      duration: warmup,
      gracefulStop: '2s',
      ...vus(warmupRate),
      tags: { phase: 'warmup' },
    };
  }
  scenarios.main = {
    executor: 'constant-arrival-rate',
    rate,
    timeUnit: '1s',
    duration,
    startTime: `${warmupS}s`,
    gracefulStop: '10s',
    ...vus(rate),
    tags: { phase: 'main' },
  };
  const recommend = [`p(95)<${P95_MS}`];
  if (P99_MS > 0) recommend.push(`p(99)<${P99_MS}`);
  return {
    scenarios,
    thresholds: {
      'http_req_duration{scenario:main,endpoint:recommend}': recommend,
      'http_req_failed{scenario:main}': [`rate<${ERROR_RATE}`],
      'checks{scenario:main}': [`rate>${1 - ERROR_RATE}`],
      // Always-true thresholds: they only make k6 keep these sub-metrics in the summary.
      'rec_latency{user_kind:known}': ['max>=0'],
      'rec_latency{user_kind:session}': ['max>=0'],
      'rec_latency{user_kind:cold}': ['max>=0'],
      'dropped_iterations{scenario:main}': ['count>=0'],
      'http_reqs{scenario:main,endpoint:recommend}': ['count>=0'],
    },
    summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max', 'count'],
    discardResponseBodies: false,
    noConnectionReuse: false,
    userAgent: 'funnel-loadtest/k6',
    setupTimeout: '60s',
  };
}

// ---------------------------------------------------------------------------------------------
// Summary: the full k6 summary data plus what was run, as JSON (SUMMARY_JSON), and a short
// threshold report on stdout; loadtest/report.py renders the tables.

export function summary(scenarioName, options) {
  // Read at init time: k6 hands handleSummary its own copy of the options.
  const main = options.scenarios.main;
  const run = {
    rate: main.rate,
    duration_s: seconds(main.duration),
    warmup_s: options.scenarios.warmup ? seconds(options.scenarios.warmup.duration) : 0,
  };
  return (data) => {
    data.funnel = {
      scenario: scenarioName,
      ...run,
      k: K,
      users: USERS,
      items: ITEMS,
      mix: { session: SESSION_SHARE, cold: COLD_SHARE, zipf_s: ZIPF_S, events: EVENTS_SHARE },
      explain: EXPLAIN,
      ranking: RANKING,
      thresholds: { p95_ms: P95_MS, p99_ms: P99_MS || null, error_rate: ERROR_RATE },
      bundle_size: str('LOADTEST_SIZE', null),
      bundle_version: data.setup_data ? data.setup_data.bundle_version : null,
      label: str('LABEL', null),
    };
    if (data.setup_data) delete data.setup_data.pool;
    const lines = [];
    for (const [name, m] of Object.entries(data.metrics)) {
      for (const [t, r] of Object.entries(m.thresholds || {})) {
        if (t.endsWith('>=0')) continue;
        lines.push(`  ${r.ok ? 'ok    ' : 'FAILED'} ${name}: ${t}`);
      }
    }
    const out = { stdout: `thresholds (${scenarioName}):\n${lines.join('\n')}\n` };
    const path = str('SUMMARY_JSON', '');
    if (path) out[path] = JSON.stringify(data, null, 1);
    return out;
  };
}
