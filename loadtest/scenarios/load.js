// Load: a constant arrival rate (open model: requests arrive whether or not earlier ones have
// finished), 100 req/s for 60 s after a 10 s warm-up at the same rate. The target it measures:
// full pipeline p99 <= 50 ms at 100 req/s (enforce with P99_MS=50).
import { arrivalOptions, iteration, setup as setupFn, summary } from '../lib/funnel.js';

export const options = arrivalOptions({ rate: 100, duration: '60s', warmup: '10s' });
export const setup = setupFn;
export default iteration;
export const handleSummary = summary('load', options);
