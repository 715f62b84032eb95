// Overload: a constant arrival rate well past saturation (default 900 req/s, about twice the
// rate the 200K bundle's ramp held on two cores), 30 s after a 5 s warm-up. Admission control
// must keep every request it takes inside its deadline and turn the rest away at once:
// accepted p99 < 200 ms, shed (503 overloaded + Retry-After) p99 < 5 ms, no other errors, no
// timeouts, no dropped connections.
import http from 'k6/http';
import { arrivalOptions, iteration, setup as setupFn, summary } from '../lib/funnel.js';

// A 503 is an expected answer here (k6 would count it as failed otherwise); anything else that
// is not 200/202 — or no answer — still fails http_req_failed.
http.setResponseCallback(http.expectedStatuses(200, 202, 503));

const base = arrivalOptions({ rate: 900, duration: '30s', warmup: '5s' });
const P99_ACCEPTED = Number(__ENV.ACCEPTED_P99_MS || 200);
const P99_SHED = Number(__ENV.SHED_P99_MS || 5);
base.thresholds = {
  ...base.thresholds,
  // Every response, accepted or shed, within the deadline.
  'http_req_duration{scenario:main,endpoint:recommend}': [`p(99)<${P99_ACCEPTED}`],
  'rec_latency': [`p(99)<${P99_ACCEPTED}`],
  'shed_latency': [`p(99)<${P99_SHED}`],
  'rec_errors': ['count<1'],
  'shed_malformed': ['count<1'],
  'http_req_failed{scenario:main}': ['rate<0.0001'],
  'shed': ['rate>=0'],
};
export const options = base;
export const setup = setupFn;
export default iteration;
export const handleSummary = summary('overload', options);
