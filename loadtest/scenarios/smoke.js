// Smoke: a short, light run that proves the whole path works under a little concurrency and
// stays fast. CI runs it (loadtest/run.sh smoke, small bundle). 5 s warm-up, then 10 req/s
// for 20 s; p95 < 200 ms, errors < 0.1 %.
import { arrivalOptions, iteration, setup as setupFn, summary } from '../lib/funnel.js';

export const options = arrivalOptions({ rate: 10, duration: '20s', warmup: '5s', warmupRate: 5 });
export const setup = setupFn;
export default iteration;
export const handleSummary = summary('smoke', options);
