/**
 * The dashboard as one self-contained HTML document: our markup, styles and
 * script (lib/report/dashboard/) with uPlot 1.6 (MIT, from node_modules)
 * inlined, so the page loads nothing from anywhere. Built once per process.
 *
 * A bundler that packs the report function must ship these five files
 * beside the code (they are read at run time, not imported).
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

let page: string | undefined;

/** Text that is safe inside a <script> or <style> element. */
function inline(text: string, tag: 'script' | 'style'): string {
  return text.replace(new RegExp(`</${tag}`, 'gi'), `<\\/${tag}`);
}

export function dashboardPage(): string {
  if (page !== undefined) return page;
  const own = (name: string) => readFileSync(fileURLToPath(new URL(`./dashboard/${name}`, import.meta.url)), 'utf8');
  const require = createRequire(import.meta.url);
  const uplotJs = readFileSync(require.resolve('uplot/dist/uPlot.iife.min.js'), 'utf8');
  const uplotCss = readFileSync(require.resolve('uplot/dist/uPlot.min.css'), 'utf8');
  const parts: Record<string, string> = {
    '/*STYLE*/': inline(`${uplotCss}\n${own('style.css')}`, 'style'),
    '/*SCRIPT*/': inline(`${uplotJs}\n${own('app.js')}`, 'script'),
  };
  page = own('index.html').replace(/\/\*STYLE\*\/|\/\*SCRIPT\*\//g, (m) => parts[m]!);
  return page;
}
