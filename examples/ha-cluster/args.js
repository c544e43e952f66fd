// Tiny `--key value` argument parsing shared by the example's programs (`--url` may be repeated).

export function parseArgs(argv, defaults) {
  const out = { ...defaults };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i];
    if (!key.startsWith("--") || i + 1 >= argv.length) throw new Error(`usage: --key value pairs; got ${key}`);
    const name = key.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(name in defaults)) throw new Error(`unknown option ${key} (known: ${Object.keys(defaults).join(", ")})`);
    const v = argv[i + 1];
    if (name === "url") out.url = out.url === defaults.url ? [v] : [...out.url, v];
    else out[name] = typeof defaults[name] === "number" ? Number(v) : v;
  }
  return out;
}
