// Builds the plugin component: dist/plugin.wasm (`npm run build`, or
// `edgesync plugin build`, which installs what is missing and runs this).
//
// 1. asc compiles assembly/ to a core module (asconfig.json);
// 2. its exports get their WIT names: AssemblyScript cannot spell
//    `edgesync:plugin/lifecycle@0.1.0#init`, so the SDK exports
//    `lifecycle_init` & co. and this step renames them (wasm-tools
//    print / parse);
// 3. `wasm-tools component embed` adds the world, `component new` makes the
//    component (no WASI is imported: no adapter).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';

const wasmTools = process.env.WASM_TOOLS ?? 'wasm-tools';
const run = (cmd, args, opts = {}) => {
  console.log(`+ ${cmd} ${args.join(' ')}`);
  try {
    return execFileSync(cmd, args, { stdio: ['ignore', opts.capture ? 'pipe' : 'inherit', 'inherit'] });
  } catch (e) {
    console.error(`${cmd} failed: ${e.message.split('\n')[0]}`);
    process.exit(1);
  }
};

if (!existsSync('wit/deps/edgesync/plugin.wit')) {
  console.error('wit/deps/edgesync/plugin.wit is missing: copy sdk/wit/plugin.wit of edgesync there');
  process.exit(1);
}
mkdirSync('build', { recursive: true });
mkdirSync('dist', { recursive: true });
run('node_modules/.bin/asc', ['--config', 'asconfig.json']);

const names = {
  lifecycle_init: 'edgesync:plugin/lifecycle@0.1.0#init',
  post_lifecycle_init: 'cabi_post_edgesync:plugin/lifecycle@0.1.0#init',
  message_hooks_on_message: 'edgesync:plugin/message-hooks@0.1.0#on-message',
  message_hooks_on_batch: 'edgesync:plugin/message-hooks@0.1.0#on-batch',
  post_message_hooks_on_batch: 'cabi_post_edgesync:plugin/message-hooks@0.1.0#on-batch',
};
let wat = run(wasmTools, ['print', 'build/plugin.core.wasm'], { capture: true }).toString();
for (const [from, to] of Object.entries(names)) {
  const exported = `(export "${from}" `;
  if (!wat.includes(exported)) {
    console.error(`the core module exports no ${from}`);
    process.exit(1);
  }
  wat = wat.replace(exported, `(export "${to}" `);
}
// Only the canonical ABI's exports and the memory stay: the SDK's helpers
// are AssemblyScript exports too, but no part of the world.
const keep = new Set([...Object.values(names), 'cabi_realloc', 'memory']);
wat = wat.replace(/^\s*\(export "([^"]*)" \([^)]*\)\)\n/gm, (line, name) => (keep.has(name) ? line : ''));
writeFileSync('build/plugin.renamed.wat', wat);
run(wasmTools, ['parse', 'build/plugin.renamed.wat', '-o', 'build/plugin.renamed.wasm']);
run(wasmTools, ['component', 'embed', 'wit', '--world', 'plugin', 'build/plugin.renamed.wasm', '-o', 'build/plugin.embed.wasm']);
run(wasmTools, ['component', 'new', 'build/plugin.embed.wasm', '-o', 'dist/plugin.wasm']);
run(wasmTools, ['validate', 'dist/plugin.wasm']);
readFileSync('dist/plugin.wasm');
