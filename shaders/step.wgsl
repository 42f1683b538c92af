// Per-row state of a pass: one Step per token of the batch (one for a decode step, up to the batch limit
// for a batched prefill), written with queue.write_buffer before the pass and bound as
// `array<Step>`. Row r of every activation buffer belongs to steps[r]. Prepended to the shaders that
// need positions, slots or the row count.
struct Step {
    // Position of this row's token.
    pos: u32,
    // Number of cached positions attended (window-limited).
    n_att: u32,
    // Attention sinks kept at slots 0..sinks.
    sinks: u32,
    // Ring length of the non-sink slots (window - sinks), or 0 when there is no window.
    span: u32,
    // The token id, for the embedding gather.
    token: u32,
    // KV slot the current token is stored in.
    slot: u32,
    // First non-sink position attended (with no window ring: the first attended, 0 but on a
    // sliding-window layer, whose steps are their own).
    lo: u32,
    // Rows in this pass (the same in every entry).
    rows: u32,
}

// Ring slot of position t.
fn slot_of(s: Step, t: u32) -> u32 {
    if (s.span == 0u || t < s.sinks) {
        return t;
    }
    return s.sinks + (t - s.sinks) % s.span;
}

// The i-th attended position: sinks first, then lo..=pos.
fn attended(s: Step, i: u32) -> u32 {
    let n_sinks = min(s.sinks, s.pos + 1u);
    if (s.span == 0u) {
        return s.lo + i;
    }
    if (i < n_sinks) {
        return i;
    }
    return s.lo + (i - n_sinks);
}
