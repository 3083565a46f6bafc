/**
 * A one-line progress bar on stderr, so stdout keeps only the report. On a
 * terminal it redraws in place; into a file or CI log it writes a plain line
 * at most every 10 seconds, so a long run shows it is alive without flooding.
 */
const WIDTH = 30;

export class Progress {
  private readonly tty = Boolean(process.stderr.isTTY);
  private label = '';
  private lastPlain = 0;
  private shown = false;

  start(label: string): void {
    this.end();
    this.label = label;
    this.lastPlain = 0;
    this.update(0, '');
  }

  /** `fraction` 0…1 of the current phase; `detail` is free text after the bar. */
  update(fraction: number, detail: string): void {
    const f = Math.max(0, Math.min(1, fraction));
    const filled = Math.round(f * WIDTH);
    const line = `${this.label.padEnd(26)} [${'#'.repeat(filled)}${'.'.repeat(WIDTH - filled)}] ${(f * 100).toFixed(0).padStart(3)}% ${detail}`;
    if (this.tty) {
      process.stderr.write(`\r\x1b[2K${line.slice(0, (process.stderr.columns ?? 120) - 1)}`);
      this.shown = true;
    } else if (Date.now() - this.lastPlain >= 10_000) {
      this.lastPlain = Date.now();
      process.stderr.write(`${line}\n`);
    }
  }

  /** Prints a message on its own line without breaking the bar. */
  note(message: string): void {
    if (this.tty && this.shown) process.stderr.write('\r\x1b[2K');
    process.stderr.write(`${message}\n`);
    this.shown = false;
  }

  end(): void {
    if (this.tty && this.shown) process.stderr.write('\r\x1b[2K');
    this.shown = false;
  }
}
