// Reload: 200 req/s for 60 s (after a 10 s warm-up) while run.sh swaps the served bundle
// version four times — three hot reloads (CURRENT moved, POST /admin/reload) and one rollback
// (POST /admin/rollback). Every request must be answered 200 by one of the two versions
// (VERSIONS), with a whole list; run.sh compares the p99 in the seconds around each swap with
// the steady p99 (loadtest/reload-report.py).
import { arrivalOptions, iteration, setup as setupFn, summary } from '../lib/funnel.js';

const base = arrivalOptions({ rate: 200, duration: '60s', warmup: '10s' });
base.thresholds = {
  ...base.thresholds,
  'rec_errors': ['count<1'],
  'wrong_version': ['count<1'],
  'http_req_failed{scenario:main}': ['rate<0.0001'],
};
export const options = base;
export const setup = setupFn;
export default iteration;
export const handleSummary = summary('reload', options);
