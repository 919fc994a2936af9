// Builds dist/: the ESM module, the minified script-tag build (window.Aura) and the types; prints gzipped sizes.
import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';

const LIMIT_GZIP_BYTES = 6 * 1024;
const common = { entryPoints: ['src/index.js'], bundle: true, target: 'es2020', legalComments: 'none', logLevel: 'warning' };

mkdirSync('dist', { recursive: true });
await build({ ...common, format: 'esm', outfile: 'dist/aura.mjs' });
await build({ ...common, format: 'iife', globalName: 'Aura', minify: true, outfile: 'dist/aura.min.js' });
copyFileSync('types/aura.d.ts', 'dist/aura.d.ts');

let failed = false;
for (const file of ['dist/aura.mjs', 'dist/aura.min.js']) {
  const raw = readFileSync(file);
  const gz = gzipSync(raw, { level: 9 }).length;
  console.log(`${file.padEnd(18)} ${String(raw.length).padStart(6)} B, ${String(gz).padStart(5)} B gzipped`);
  if (file.endsWith('.min.js') && gz > LIMIT_GZIP_BYTES) {
    console.error(`${file} is ${gz} B gzipped, over the ${LIMIT_GZIP_BYTES} B budget.`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
