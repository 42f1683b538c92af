// Page side of the bench: starts the engine worker and keeps the state the harness polls.
// Calls go to the worker one at a time; results are the engine's JSON, passed through untouched.
import init, * as engine from './pkg/nibble_engine.js';

const state = {
  workerReady: false, pageReady: false, busy: false, seq: 0,
  progress: null, result: null, error: null, fatal: null,
};
window.__nibble = state;
const line = document.getElementById('progress');
const show = (s) => { state.progress = s; line.textContent = s; };

const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
worker.onmessage = (e) => {
  const m = e.data;
  if (m.ready) { state.workerReady = true; show('ready'); }
  if (m.progress !== undefined) show(m.progress);
  if (m.done && m.seq === state.seq) {
    state.result = m.result ?? null;
    state.error = m.error ?? null;
    state.busy = false;
    show(m.error ? 'error: ' + m.error : 'done');
  }
};
worker.onerror = (e) => {
  state.fatal = 'worker error: ' + (e.message || 'failed to start');
  state.busy = false;
  show(state.fatal);
};

// call('load', json) etc.; the harness then polls state until busy is false and seq matches.
state.call = (fn, ...args) => {
  state.seq += 1;
  state.busy = true;
  state.result = null;
  state.error = null;
  worker.postMessage({ seq: state.seq, fn, args });
  return state.seq;
};

// Memory APIs live on the page, not in the worker.
init({ module_or_path: new URL('./pkg/nibble_engine_bg.wasm', import.meta.url) }).then(() => {
  state.pageReady = true;
  state.pageMemory = () => engine.page_memory();
}, (e) => { state.fatal = 'wasm failed to start on the page: ' + e; show(state.fatal); });
