use super::*;

fn report(name: &str, device_type: &str, driver: &str) -> AdapterReport {
    AdapterReport {
        name: name.into(),
        backend: "Vulkan".into(),
        device_type: device_type.into(),
        driver: driver.into(),
        driver_info: String::new(),
        features: vec![],
        shader_f16: true,
        limits: LimitsReport {
            max_storage_buffer_binding_size: 1 << 30,
            max_buffer_size: 1 << 30,
            max_compute_workgroup_storage_size: 16384,
            max_compute_invocations_per_workgroup: 256,
            max_compute_workgroups_per_dimension: 65535,
            max_storage_buffers_per_shader_stage: 8,
        },
    }
}

#[test]
fn shader_checks_are_named_as_parsed_and_natively_default_to_off() {
    for name in ["on", "off", "runtime", "zero-init"] {
        assert_eq!(ShaderChecks::parse(name).unwrap().name(), name);
    }
    assert!(ShaderChecks::parse("none").is_err());
    assert_eq!(ShaderChecks::effective(None), ShaderChecks::OFF);
    let on = Some(ShaderChecks::ON);
    assert_eq!(ShaderChecks::effective(on), ShaderChecks::ON);
}

#[test]
fn repeated_device_errors_are_told_once_with_their_count() {
    let e = [
        "copy size 518\n",
        "lost",
        "copy size 518\n",
        "copy size 518\n",
    ];
    assert_eq!(
        summarize(e.iter().map(|s| s.to_string())),
        "copy size 518 (3 times); lost"
    );
}

#[test]
fn adapters_are_told_apart_as_hardware_or_software() {
    let kind = |n, t, d| report(n, t, d).kind();
    assert_eq!(
        kind("NVIDIA H200", "DiscreteGpu", "NVIDIA"),
        "hardware (NVIDIA H200)"
    );
    assert!(kind("SwiftShader Device (Subzero)", "Cpu", "").starts_with("software"));
    assert!(kind("llvmpipe (LLVM 15.0.6, 256 bits)", "Other", "llvmpipe").starts_with("software"));
    assert!(kind("Apple M2", "IntegratedGpu", "").starts_with("hardware"));
    assert!(kind("", "Other", "").starts_with("unknown"));
    // In a browser: a fallback adapter has the Cpu type; any other is hardware unless named
    // as a software rasteriser.
    let browser = |n: &str, t: &str| {
        let mut r = report(n, t, "");
        r.backend = "BrowserWebGpu".into();
        r.kind()
    };
    assert!(browser("NVIDIA H200", "Other").starts_with("hardware (NVIDIA H200"));
    assert!(browser("SwiftShader Device (Subzero)", "Other").starts_with("software"));
    assert!(browser("", "Cpu").starts_with("software"));
}

/// Natively a GPU with packed integer dot products takes the integer-dot kernels; without them,
/// Tiled; a CPU adapter the row kernels; a caller's choice stands.
#[test]
fn native_gpus_take_the_integer_dot_kernels_where_wgsl_has_them() {
    let none = GpuOptions::default();
    let gpu = report("NVIDIA H200", "DiscreteGpu", "NVIDIA");
    let choice = |o: &GpuOptions, r: &AdapterReport, int8| matvec_choice(o, r, "", int8).0;
    assert_eq!(choice(&none, &gpu, true), MatvecKernel::TiledInt8);
    assert_eq!(choice(&none, &gpu, false), MatvecKernel::Tiled);
    let cpu = report("llvmpipe", "Cpu", "llvmpipe");
    assert_eq!(choice(&none, &cpu, true), MatvecKernel::Row);
    let tiled = GpuOptions {
        matvec: Some(MatvecKernel::Tiled),
        ..Default::default()
    };
    assert_eq!(choice(&tiled, &gpu, true), MatvecKernel::Tiled);
    // The note says how long a row the integer kernels take on this adapter.
    let note = |r: &AdapterReport, int8| matvec_choice(&none, r, "", int8).1;
    assert!(note(&gpu, true).ends_with("rows up to 12288 values (q4_0) and 11264 (K-quants), longer ones in floats (16384 bytes of workgroup memory)"));
    let mut roomy = gpu.clone();
    roomy.limits.max_compute_workgroup_storage_size = 32768;
    assert!(
        note(&roomy, true).ends_with("rows up to 22528 values (32768 bytes of workgroup memory)")
    );
    assert!(!note(&roomy, false).contains("rows up to"));
}
