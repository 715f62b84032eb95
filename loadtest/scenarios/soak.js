// Soak: a moderate constant arrival rate for a longer time (50 req/s, 5 min), to see latency
// drift, memory growth (run.sh samples the server's RSS) and errors that only show over time.
import { arrivalOptions, iteration, setup as setupFn, summary } from '../lib/funnel.js';

export const options = arrivalOptions({ rate: 50, duration: '5m', warmup: '10s' });
export const setup = setupFn;
export default iteration;
export const handleSummary = summary('soak', options);
