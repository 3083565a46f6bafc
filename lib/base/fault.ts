/**
 * The fault hook for crash tests (OFFLOG_FAULT=<step>:<n>[:signal]): kills
 * this process with SIGKILL — no cleanup, no flushing, as a power cut or the
 * OOM killer would — or stops it with SIGSTOP (a paused VM, a long GC; the
 * test sends SIGCONT), the n-th time it reaches `step`. Unset, it does nothing.
 */
import type { FaultSpec } from './config.ts';

export function faultHook(spec: FaultSpec | undefined, signal: (s: FaultSpec['signal']) => void = (s) => process.kill(process.pid, s)): ((step: string) => void) | undefined {
  if (spec === undefined) return undefined;
  let seen = 0;
  return (step) => {
    if (step === spec.step && ++seen === spec.n) signal(spec.signal);
  };
}
