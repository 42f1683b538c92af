//! Browsers: `nibble browsers`, `nibble setup`, `nibble build-web`, and what `nibble run` (`run/`) uses
//! to drive them.
//!
//! Kept apart as wptrunner keeps them: products (browser configuration), the driver processes, the
//! executor (one WebDriver session running the page), the static server; results live in
//! `results.rs`.

pub mod bundle;
pub mod discover;
pub mod driver;
pub mod executor;
pub mod products;
pub mod server;
pub mod setup;

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct BuildWebArgs {
    /// Rebuild even if the sources did not change.
    #[arg(long)]
    force: bool,
}

pub fn build_web(a: BuildWebArgs) -> Result<()> {
    let dir = bundle::build(a.force)?;
    println!("{}", dir.display());
    Ok(())
}
