/**
 * The fault hook for crash tests (OFFLOG_FAULT=<step>:<n>): kills this
 * process with SIGKILL — no cleanup, no flushing, as a power cut or the OOM
 * killer would — the n-th time it reaches `step`. Unset, it does nothing.
 */
import type { FaultSpec } from './config.ts';

export function faultHook(spec: FaultSpec | undefined, kill: () => void = () => process.kill(process.pid, 'SIGKILL')): ((step: string) => void) | undefined {
  if (spec === undefined) return undefined;
  let seen = 0;
  return (step) => {
    if (step === spec.step && ++seen === spec.n) kill();
  };
}
