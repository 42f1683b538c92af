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
    /// Also copy the bundle here (`nibble-web/` beside a binary that travels without the checkout).
    #[arg(long)]
    copy_to: Option<std::path::PathBuf>,
}

pub fn build_web(a: BuildWebArgs) -> Result<()> {
    let dir = bundle::build(a.force)?;
    match a.copy_to {
        Some(to) => {
            bundle::copy(&dir, &to)?;
            println!("{}", to.display());
        }
        None => println!("{}", dir.display()),
    }
    Ok(())
}
