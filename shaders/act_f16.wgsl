// Activation element type for adapters with shader-f16 (see act_f32.wgsl).
enable f16;
alias act = f16;
