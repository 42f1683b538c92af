// Activation element type, prepended first to every shader that touches activations: this file for
// f32 activations; act_f16.wgsl where the adapter has shader-f16. Kernels convert to f32 to compute.
alias act = f32;
