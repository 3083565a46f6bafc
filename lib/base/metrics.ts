/**
 * Metrics as CloudWatch embedded metric format (EMF): one JSON line per
 * report, which CloudWatch Logs turns into metrics with no API call and no
 * agent (a Lambda's output is read for the `_aws` key). Namespace `OffLog`,
 * no dimensions, so the template's alarm (on `PublishFailures`) matches
 * whatever stage emits it; stages that share an account share the metric.
 */
import { writeSync } from 'node:fs';

export const METRICS_NAMESPACE = 'OffLog';

/** Where metric lines go: stderr by default (with the logs; stdout stays the CLI's). */
export type MetricSink = (line: string) => void;

export const stderrMetrics: MetricSink = (line) => {
  // Synchronous, so the line is out before a Lambda's process is frozen.
  writeSync(2, `${line}\n`);
};

/** One EMF line carrying `values` (counts) at `timestampMs`. */
export function emfLine(values: Record<string, number>, timestampMs: number): string {
  for (const [name, v] of Object.entries(values)) {
    if (!Number.isFinite(v)) throw new RangeError(`metric ${name}: ${v} is not a number`);
  }
  return JSON.stringify({
    _aws: {
      Timestamp: timestampMs,
      CloudWatchMetrics: [{ Namespace: METRICS_NAMESPACE, Dimensions: [[]], Metrics: Object.keys(values).map((Name) => ({ Name, Unit: 'Count' })) }],
    },
    ...values,
  });
}
