//! Out of GPU memory, natively: wgpu's out-of-memory error becomes an error that says so, not a
//! panic or an abort, and the device keeps working for what fits.
//!
//! lavapipe's "device memory" is the process's own, so the test re-runs itself in a child process
//! that caps its address space (RLIMIT_AS) a little above what it already holds, then asks for a
//! decoder whose KV cache alone is four times the headroom. Each buffer stays under lavapipe's
//! 128 MiB binding limit, so it is the allocation that fails, not a limit check.
#![cfg(target_os = "linux")]

use nibble_engine::block_on;
use nibble_engine::gpu::{Activations, Gpu, GpuDecoder, GpuOptions};
use nibble_engine::kv::KvConfig;
use nibble_engine::{Decoder, Model};

const CHILD: &str = "NIBBLE_OOM_CHILD";
const NAME: &str = "out_of_gpu_memory_is_an_error_and_the_device_keeps_working";
/// Address space allowed above what the child holds when it sets the cap.
const HEADROOM: libc::rlim_t = 64 << 20;

#[test]
fn out_of_gpu_memory_is_an_error_and_the_device_keeps_working() {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the child failed: {text}");
    assert!(text.contains("oom-child: done"), "{text}");
}

/// Virtual memory the process holds now (VmSize of /proc/self/status), in bytes.
fn vm_size() -> libc::rlim_t {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: libc::rlim_t = s
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmSize in /proc/self/status");
    kb << 10
}

fn cap_address_space(bytes: libc::rlim_t) {
    let lim = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct it is given and nothing else.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) }, 0);
}

fn child() {
    let g = Gpu::open_blocking(GpuOptions {
        act: Some(Activations::F32),
        ..Default::default()
    })
    .expect("a WebGPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)");
    let small = Model::builtin();
    let mut d = GpuDecoder::new(&g, &small, KvConfig::default()).unwrap();
    let before = block_on(d.step_argmax(1, 0)).unwrap();
    // The built-in shape with 2^17 positions: 2 layers x (K, V) x 2^17 x 128 x 4 bytes = 256 MiB of
    // cache in 64 MiB buffers, four times the headroom.
    let mut big = small.clone();
    big.config.seq_len = 1 << 17;
    let kv_bytes = 2 * big.config.n_layers * big.config.seq_len * big.config.kv_dim() * 4;
    assert!(kv_bytes as libc::rlim_t >= 4 * HEADROOM);
    cap_address_space(vm_size() + HEADROOM);
    let e = match GpuDecoder::new(&g, &big, KvConfig::default()) {
        Ok(_) => panic!("a {kv_bytes}-byte cache fit under a {HEADROOM}-byte headroom"),
        Err(e) => e.to_string(),
    };
    cap_address_space(libc::RLIM_INFINITY);
    println!("oom-child: {e}");
    assert!(e.contains("out of GPU memory"), "{e}");
    assert!(e.contains("bytes planned"), "{e}");
    // What fit before still runs, and gives what it gave before.
    let mut d2 = GpuDecoder::new(&g, &small, KvConfig::default()).unwrap();
    assert_eq!(block_on(d2.step_argmax(1, 0)).unwrap(), before);
    block_on(d.step_argmax(2, 1)).unwrap();
    println!("oom-child: done");
}
