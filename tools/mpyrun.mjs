// Run Python modules under real MicroPython (the official WebAssembly port).
//
//   node tools/mpyrun.mjs [--lib DIR]... [--heap-bytes N] (--test MODULE | --run MODULE) [ARGS_JSON]
//
// Each --lib DIR is copied into the MicroPython filesystem under /lib, so `import ghnode.wire`
// resolves to device/ghnode/wire.py exactly as it would on a board.
// --test MODULE imports MODULE, runs every function whose name starts with `test_`, and prints
// one JSON line per test plus a summary line; the exit code is 1 if any test failed.
// --run MODULE imports MODULE and calls MODULE.main(ARGS_JSON) if it has one; its stdout is passed on.
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import fs from "node:fs";
import path from "node:path";

const argv = process.argv.slice(2);
const libs = [];
let mode = null, module = null, heap = 64 * 1024 * 1024, extra = "null";
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === "--lib") libs.push(argv[++i]);
  else if (a === "--heap-bytes") heap = parseInt(argv[++i], 10);
  else if (a === "--test" || a === "--run") { mode = a.slice(2); module = argv[++i]; }
  else extra = a;
}
if (!mode || !module) {
  console.error("usage: mpyrun.mjs [--lib DIR]... (--test MODULE | --run MODULE) [ARGS_JSON]");
  process.exit(2);
}

const mp = await loadMicroPython({
  heapsize: heap,
  stdout: (line) => process.stdout.write(line + "\n"),
  stderr: (line) => process.stderr.write(line + "\n"),
});

function copyTree(src, dst) {
  try { mp.FS.mkdir(dst); } catch (e) { /* exists */ }
  for (const entry of fs.readdirSync(src, { withFileTypes: true })) {
    if (entry.name === "__pycache__" || entry.name.startsWith(".")) continue;
    const s = path.join(src, entry.name), d = dst + "/" + entry.name;
    if (entry.isDirectory()) copyTree(s, d);
    else if (entry.name.endsWith(".py") || entry.name.endsWith(".json")) mp.FS.writeFile(d, fs.readFileSync(s));
  }
}
for (const lib of libs) copyTree(lib, "/lib");

const runner = mode === "test" ? `
import sys, json
_m = __import__(${JSON.stringify(module)})
for _p in ${JSON.stringify(module)}.split(".")[1:]:
    _m = getattr(_m, _p)
_passed = 0
_failed = 0
for _name in sorted(dir(_m)):
    if not _name.startswith("test_"):
        continue
    _f = getattr(_m, _name)
    try:
        _f()
        _passed += 1
        print(json.dumps({"test": _name, "ok": True}))
    except Exception as _e:
        _failed += 1
        print(json.dumps({"test": _name, "ok": False, "error": repr(_e)}))
        sys.print_exception(_e)
print(json.dumps({"summary": True, "passed": _passed, "failed": _failed}))
_gridhive_exit = 1 if _failed or not _passed else 0
` : `
import json
_m = __import__(${JSON.stringify(module)})
for _p in ${JSON.stringify(module)}.split(".")[1:]:
    _m = getattr(_m, _p)
if hasattr(_m, "main"):
    _m.main(json.loads(${JSON.stringify(extra)}))
_gridhive_exit = 0
`;
try {
  mp.runPython(runner);
  process.exit(mp.globals.get("_gridhive_exit"));
} catch (e) {
  console.error(String(e));
  process.exit(1);
}
