//! quant.wgsl's integer-to-float helpers (`u2f`, `u2f4`, `s8f4`), which the weight kernels use in
//! place of conversion instructions, give exactly the integer's value: checked on lavapipe for every
//! input the kernels give them (codes below 2^16, bytes with junk above bit 8) against the
//! conversion built into WGSL, bit for bit. No tolerance: the helpers are exact by construction.

use nibble_engine::gpu::{Gpu, GpuOptions};
use wgpu::util::DeviceExt;

const QUANT: &str = include_str!("../../shaders/quant.wgsl");
const N: u32 = 1 << 16;

const TEST: &str = r#"
@group(0) @binding(0) var<storage, read_write> out: array<vec4<u32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let n = id.x;
    // Junk above the low byte, which s8f4 must ignore.
    let b = vec4<u32>(n & 255u) | vec4<u32>(0xA5A5A500u, 0u, 0xFFFFFF00u, 0x100u);
    let ref_s8 = f32(bitcast<i32>((n & 255u) << 24u) >> 24u);
    out[n] = vec4<u32>(
        bitcast<u32>(u2f(n)),
        bitcast<u32>(u2f4(vec4<u32>(n)).w),
        bitcast<u32>(s8f4(b).x),
        bitcast<u32>(select(1.0, 0.0, all(s8f4(b) == vec4<f32>(ref_s8)) && u2f(n) == f32(n))),
    );
}
"#;

#[test]
fn integer_helpers_give_each_value_exactly() {
    let gpu = Gpu::open_blocking(GpuOptions::default())
        .expect("a WebGPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)");
    let (d, q) = (&gpu.device, &gpu.queue);
    let module = d.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(format!("{QUANT}\n{TEST}").into()),
    });
    let pipe = d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let size = 16 * N as u64;
    let out = d.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: &vec![0xFFu8; size as usize],
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    });
    let staging = d.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let bind = d.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipe.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: out.as_entire_binding(),
        }],
    });
    let mut enc = d.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipe);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(N / 64, 1, 1);
    }
    enc.copy_buffer_to_buffer(&out, 0, &staging, 0, size);
    q.submit([enc.finish()]);
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.unwrap());
    d.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let bytes = staging.slice(..).get_mapped_range().unwrap().to_vec();
    let got: &[[u32; 4]] = bytemuck::cast_slice(&bytes);
    for (n, g) in got.iter().enumerate() {
        let s8 = (n as u8) as i8 as f32;
        let want = [
            (n as f32).to_bits(),
            (n as f32).to_bits(),
            s8.to_bits(),
            0f32.to_bits(),
        ];
        assert_eq!(
            *g, want,
            "input {n}: u2f, u2f4, s8f4, GPU's own conversion agrees"
        );
    }
}
