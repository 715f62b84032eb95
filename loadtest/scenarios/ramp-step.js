// One step of the ramp to saturation: a constant arrival rate RATE for DURATION (20 s) after a
// 5 s warm-up at the same rate, with p99 < P99_MS (200) as a threshold. loadtest/run.sh ramp runs
// it at rising rates against the same server and stops at the first step that breaks a
// threshold; each step has its own summary, so each rate gets its own p99.
import { arrivalOptions, iteration, setup as setupFn, summary } from '../lib/funnel.js';

export const options = arrivalOptions({ rate: 50, duration: '20s', warmup: '5s' });
export const setup = setupFn;
export default iteration;
export const handleSummary = summary('ramp', options);
