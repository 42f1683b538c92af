//! `nibble`: runs nibble-engine natively, measures it and reports.

mod args;
mod backend;
mod bench_cmd;
mod browser;
mod conformance;
mod disk;
mod files;
mod gate;
mod native;
#[cfg(target_os = "linux")]
mod pages;
mod report;
mod results;
mod run;

use clap::{Parser, Subcommand};

#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOC: pages::HugePages = pages::HugePages;

#[derive(Parser)]
#[command(
    name = "nibble",
    version,
    about = "4-bit Llama inference on WebGPU, measured across browsers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt.
    Generate(native::GenerateArgs),
    /// Score a text file: PPL over every token after BOS of every story.
    Perplexity(native::PerplexityArgs),
    /// Score the same tokens with the f32 reference and with candidates; report KL, top-1, Δlogit, ΔPPL.
    Compare(native::CompareArgs),
    /// Run a grid of weight/block/policy/KV/window configurations; write one JSON/CSV row each.
    Sweep(native::SweepArgs),
    /// Prefill and decode speed per weight configuration, with GPU bytes and a bandwidth roofline.
    Bench(bench_cmd::BenchArgs),
    /// Quantize a model's weights and write GGUF.
    Quantize(native::QuantizeArgs),
    /// Convert a llama2.c checkpoint and its tokenizer.bin to GGUF.
    Convert(files::ConvertArgs),
    /// Write a deterministic synthetic Llama model as GGUF.
    Synth(files::SynthArgs),
    /// Print a model file's header, metadata, tensors and sizes.
    Inspect(files::InspectArgs),
    /// Token ids and pieces of a text, as the model's vocabulary encodes it.
    Tokenize(conformance::TokenizeArgs),
    /// Logits of a forced token sequence: per position the top ids with logits, and logsumexp.
    Score(conformance::ScoreArgs),
    /// Run the scenarios natively and in browsers through WebDriver; write results.json. Exit 0: every
    /// required target passes; 1: one fails; 2: bad input; 3: the run could not be carried out.
    Run(run::RunArgs),
    /// List the installed browsers and drivers, and whether WebGPU works in each.
    Browsers(browser::setup::BrowsersArgs),
    /// Install what the local browser suite needs (Debian/Ubuntu, as root); skips what is present.
    Setup(browser::setup::SetupArgs),
    /// Evaluate target metrics on a results.json: exit 0 (all required pass), 1 (one fails), 2 (bad
    /// input), 3 (the verdicts could not be written).
    Gate(gate::GateArgs),
    /// Write report.html (charts, gates, compatibility matrix), results.csv and summary.md.
    Report(report::ReportArgs),
    /// Build the wasm bundle and the bench page (rebuilt only when sources change).
    BuildWeb(browser::BuildWebArgs),
}

fn main() {
    runtime_dir();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(cli_main());
}

/// libwayland, which the Vulkan loader and Mesa probe, prints "XDG_RUNTIME_DIR is invalid or not
/// set" where a headless machine has none (root over ssh, CI): the process gets a private one, set
/// before any thread starts. The browsers inherit it.
#[cfg(unix)]
fn runtime_dir() {
    use std::os::unix::fs::PermissionsExt;
    let valid = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .is_some_and(|p| p.is_dir());
    if valid {
        return;
    }
    let uid = unsafe { libc::getuid() };
    let dir = std::env::temp_dir().join(format!("nibble-runtime-{uid}"));
    let made = std::fs::create_dir_all(&dir)
        .and_then(|_| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)));
    if made.is_ok() {
        std::env::set_var("XDG_RUNTIME_DIR", &dir);
    }
}

#[cfg(not(unix))]
fn runtime_dir() {}

async fn cli_main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Command::Generate(a) => native::generate(a),
        Command::Tokenize(a) => conformance::tokenize(a),
        Command::Score(a) => conformance::score(a),
        Command::Perplexity(a) => native::perplexity(a),
        Command::Compare(a) => native::compare(a),
        Command::Sweep(a) => native::sweep(a),
        Command::Bench(a) => bench_cmd::bench(a),
        Command::Quantize(a) => native::quantize(a),
        Command::Convert(a) => files::convert(a),
        Command::Synth(a) => files::synth(a),
        Command::Inspect(a) => files::inspect(a),
        Command::Run(a) => match run::run(a).await {
            Ok(code) => std::process::exit(code),
            Err(e) => Err(e),
        },
        Command::Report(a) => report::report(a),
        Command::Gate(a) => std::process::exit(gate::gate(a)),
        Command::Browsers(a) => browser::setup::browsers(a).await,
        Command::Setup(a) => browser::setup::setup(a),
        Command::BuildWeb(a) => browser::build_web(a),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(args::exit_code_of(&e));
    }
}
