// Engine worker: runs one call at a time and posts its progress and its JSON answer back.
import init, * as engine from './pkg/nibble_engine.js';

const queue = [];
let started = false;
self.onmessage = (e) => { queue.push(e.data); if (started) drain(); };

// Test hooks the harness passes in `open`'s options (NIBBLE_TEST_HANG / NIBBLE_TEST_LOSE_GPU): a
// scenario that never answers, and a GPU device lost two seconds into a scenario.
let hooks = {};
function armHooks(fn, args) {
  if (fn === 'open') {
    try { hooks = JSON.parse(args[0]); } catch (_) { hooks = {}; }
    return null;
  }
  if (fn !== 'run_scenario') return null;
  if (hooks.test_hang === args[0]) return new Promise(() => {});
  if (hooks.test_lose_gpu === args[0]) setTimeout(() => engine.lose_device(), 2000);
  return null;
}

let draining = false;
async function drain() {
  if (draining) return;
  draining = true;
  while (queue.length) {
    const { seq, fn, args } = queue.shift();
    const progress = (p) => self.postMessage({ seq, progress: p });
    try {
      if (typeof engine[fn] !== 'function') throw new Error('no such engine call: ' + fn);
      const hang = armHooks(fn, args);
      if (hang) { progress('test hook: ' + args[0] + ' never answers'); await hang; }
      const result = await engine[fn](...args, progress);
      self.postMessage({ seq, done: true, result: result instanceof Float32Array ? Array.from(result) : result });
    } catch (err) {
      self.postMessage({ seq, done: true, error: String(err && err.message || err) });
    }
  }
  draining = false;
}

init({ module_or_path: new URL('./pkg/nibble_engine_bg.wasm', import.meta.url) }).then(() => {
  started = true;
  self.postMessage({ ready: true });
  drain();
}, (e) => self.postMessage({ seq: 0, done: true, error: 'wasm failed to start in the worker: ' + e }));
