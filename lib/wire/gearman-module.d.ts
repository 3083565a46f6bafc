// The `gearman` package ships no types; this is the part of its API OffLog uses.
declare module 'gearman' {
  export interface JobAssignUniq { handle: string; func_name: string; unique_id: string; payload: Buffer }
  export interface GearmanSocket {
    connect(callback: () => void): void;
    close(): void;
    on(event: 'JOB_CREATED', listener: (handle: string) => void): void;
    on(event: 'ERROR', listener: (code: string, text: string) => void): void;
    on(event: 'JOB_ASSIGN_UNIQ', listener: (job: JobAssignUniq) => void): void;
    on(event: 'NO_JOB' | 'NOOP' | 'timeout', listener: () => void): void;
    on(event: 'error', listener: (err: Error) => void): void;
    on(event: 'close', listener: (hadError: boolean) => void): void;
    submitJob(name: string, data: Buffer | string, options: { background: boolean; priority: 'low' | 'normal' | 'high'; unique_id: string }): void;
    addFunction(name: string): void;
    grabUniqueJob(): void;
    preSleep(): void;
    sendWorkComplete(handle: string, data: Buffer | string): void;
    setWorkerId(id: string): void;
  }
  function gearman(host: string, port: number, options?: { timeout?: number }): GearmanSocket;
  export default gearman;
}
