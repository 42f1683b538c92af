//! Finding browsers and their drivers by the names and places they have on each platform: Debian's
//! packages, Ubuntu and the GitHub runners (google-chrome, firefox, msedge, with the drivers in
//! `CHROMEWEBDRIVER`, `GECKOWEBDRIVER` and `EDGEWEBDRIVER`), macOS application bundles and Windows'
//! Program Files. `nibble.toml` may name a binary and a driver per browser, which win over the search.
//! Everything goes through a [`Layout`], so tests search fake layouts of stub files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    Linux,
    Mac,
    Windows,
}

/// Where to search: the directories of PATH, the environment, and the root that absolute places are
/// read under (`/` on a real machine; the drive root on Windows).
#[derive(Debug, Clone)]
pub struct Layout {
    pub os: Os,
    pub path: Vec<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub root: PathBuf,
}

impl Layout {
    /// This machine.
    pub fn current() -> Layout {
        let os = if cfg!(target_os = "macos") {
            Os::Mac
        } else if cfg!(windows) {
            Os::Windows
        } else {
            Os::Linux
        };
        let mut path: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        if let Some(h) = std::env::var_os("HOME") {
            path.push(PathBuf::from(h).join(".cargo/bin"));
        }
        let root = if os == Os::Windows {
            PathBuf::from(std::env::var("SystemDrive").unwrap_or_else(|_| "C:".into()) + "\\")
        } else {
            PathBuf::from("/")
        };
        Layout {
            os,
            path,
            env: std::env::vars().collect(),
            root,
        }
    }

    /// An executable named `name` on PATH (with `.exe` on Windows).
    fn on_path(&self, name: &str) -> Option<PathBuf> {
        let file = self.exe(name);
        self.path
            .iter()
            .map(|d| d.join(&file))
            .find(|p| p.is_file())
    }

    fn exe(&self, name: &str) -> String {
        if self.os == Os::Windows && !name.ends_with(".exe") {
            format!("{name}.exe")
        } else {
            name.to_string()
        }
    }

    /// An absolute place (written with `/`), read under the root.
    fn place(&self, p: &str) -> PathBuf {
        p.trim_start_matches('/')
            .split('/')
            .fold(self.root.clone(), |acc, part| acc.join(part))
    }
}

/// The names and places one browser and its driver go by.
#[derive(Debug, Clone)]
pub struct Places {
    /// Executable names looked up on PATH, in order of preference.
    pub names: &'static [&'static str],
    /// Absolute places per platform, tried after PATH.
    pub places: &'static [(Os, &'static str)],
    /// Driver executable names on PATH.
    pub driver_names: &'static [&'static str],
    /// An environment variable naming the driver's folder (GitHub's runners set these).
    pub driver_dir_env: Option<&'static str>,
}

/// Where a browser and its driver were found, and how.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Found {
    pub browser: Option<PathBuf>,
    pub browser_how: String,
    pub driver: Option<PathBuf>,
    pub driver_how: String,
}

/// Explicit choices from `nibble.toml`.
#[derive(Debug, Clone, Default)]
pub struct Given {
    pub binary: Option<PathBuf>,
    pub driver: Option<PathBuf>,
}

/// Finds a browser and its driver in `l`: a given path first, then PATH names, then the platform's
/// places; the driver from a given path, the runner's variable, then PATH.
pub fn find(places: &Places, given: &Given, l: &Layout) -> Found {
    let mut f = Found::default();
    // A distribution's link (/usr/bin/firefox-esr) is followed to the executable it names.
    let real = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
    if let Some(b) = &given.binary {
        f.browser_how = "nibble.toml binary".into();
        f.browser = b.is_file().then(|| b.clone());
    } else if let Some((n, p)) = places
        .names
        .iter()
        .find_map(|n| l.on_path(n).map(|p| (n, p)))
    {
        f.browser_how = format!("{n} on PATH");
        f.browser = Some(real(p));
    } else if let Some(p) = places
        .places
        .iter()
        .filter(|(os, _)| *os == l.os)
        .map(|(_, p)| l.place(p))
        .find(|p| p.is_file())
    {
        f.browser_how = "the platform's install location".into();
        f.browser = Some(p);
    }
    if let Some(d) = &given.driver {
        f.driver_how = "nibble.toml driver".into();
        f.driver = d.is_file().then(|| d.clone());
    } else if let Some((var, p)) = places.driver_dir_env.and_then(|var| {
        let dir = Path::new(l.env.get(var)?);
        places
            .driver_names
            .iter()
            .map(|n| dir.join(l.exe(n)))
            .find(|p| p.is_file())
            .map(|p| (var, p))
    }) {
        f.driver_how = format!("${var}");
        f.driver = Some(p);
    } else if let Some((n, p)) = places
        .driver_names
        .iter()
        .find_map(|n| l.on_path(n).map(|p| (n, p)))
    {
        f.driver_how = format!("{n} on PATH");
        f.driver = Some(p);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::browser::products::{self, PRODUCTS};

    /// A temporary tree of stub executables; "a -> b" makes `a` a link to the file `b`.
    fn tree(name: &str, files: &[&str]) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nibble-layout-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let d = std::fs::canonicalize(&d).unwrap();
        for f in files {
            let (f, target) = match f.split_once(" -> ") {
                Some((a, b)) => (a, Some(b)),
                None => (*f, None),
            };
            let p = d.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            match target {
                #[cfg(unix)]
                Some(t) => std::os::unix::fs::symlink(d.join(t), &p).unwrap(),
                _ => std::fs::write(&p, "#!/bin/sh\n").unwrap(),
            }
        }
        d
    }

    fn layout(os: Os, root: &Path, path: &[&str], env: &[(&str, &str)]) -> Layout {
        Layout {
            os,
            path: path.iter().map(|p| root.join(p)).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), root.join(v).display().to_string()))
                .collect(),
            root: root.to_path_buf(),
        }
    }

    fn found(name: &str, l: &Layout) -> Found {
        let p = products::find(name).unwrap();
        find(p.places.as_ref().unwrap(), &Given::default(), l)
    }

    fn rel(root: &Path, p: &Option<PathBuf>) -> String {
        p.as_ref()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .unwrap_or_else(|| "-".into())
    }

    /// GitHub's ubuntu-24.04 runner: Chrome and Firefox on PATH, drivers in the runner's variables,
    /// no chromium package and no firefox-esr.
    #[test]
    fn ubuntu_runner() {
        let r = tree(
            "ubuntu",
            &[
                "usr/bin/google-chrome",
                "usr/bin/firefox",
                "usr/bin/microsoft-edge",
                "usr/local/share/chromedriver-linux64/chromedriver",
                "usr/local/share/gecko_driver/geckodriver",
                "usr/local/share/edge_driver/msedgedriver",
            ],
        );
        let l = layout(
            Os::Linux,
            &r,
            &["usr/bin", "usr/local/bin"],
            &[
                ("CHROMEWEBDRIVER", "usr/local/share/chromedriver-linux64"),
                ("GECKOWEBDRIVER", "usr/local/share/gecko_driver"),
                ("EDGEWEBDRIVER", "usr/local/share/edge_driver"),
            ],
        );
        let c = found("chrome", &l);
        assert_eq!(rel(&r, &c.browser), "usr/bin/google-chrome");
        assert_eq!(
            rel(&r, &c.driver),
            "usr/local/share/chromedriver-linux64/chromedriver"
        );
        assert_eq!(c.driver_how, "$CHROMEWEBDRIVER");
        let f = found("firefox", &l);
        assert_eq!(rel(&r, &f.browser), "usr/bin/firefox");
        assert_eq!(
            rel(&r, &f.driver),
            "usr/local/share/gecko_driver/geckodriver"
        );
        let e = found("edge", &l);
        assert_eq!(rel(&r, &e.browser), "usr/bin/microsoft-edge");
        assert_eq!(
            rel(&r, &e.driver),
            "usr/local/share/edge_driver/msedgedriver"
        );
        assert_eq!(found("safari", &l).browser, None);
    }

    /// Debian as this project's machines have it: chromium's binary under /usr/lib (the /usr/bin
    /// one is a wrapper script) and firefox-esr.
    #[test]
    fn debian() {
        let r = tree(
            "debian",
            &[
                "usr/lib/chromium/chromium",
                "usr/bin/chromedriver",
                "usr/lib/firefox-esr/firefox-esr",
                "usr/bin/firefox-esr -> usr/lib/firefox-esr/firefox-esr",
                "root/.cargo/bin/geckodriver",
            ],
        );
        let l = layout(Os::Linux, &r, &["usr/bin", "root/.cargo/bin"], &[]);
        let c = found("chrome", &l);
        assert_eq!(rel(&r, &c.browser), "usr/lib/chromium/chromium");
        assert_eq!(rel(&r, &c.driver), "usr/bin/chromedriver");
        let f = found("firefox", &l);
        assert_eq!(rel(&r, &f.browser), "usr/lib/firefox-esr/firefox-esr");
        assert_eq!(rel(&r, &f.driver), "root/.cargo/bin/geckodriver");
    }

    /// macOS runners: application bundles, safaridriver in /usr/bin, chromedriver in its variable.
    #[test]
    fn macos_runner() {
        let r = tree(
            "macos",
            &[
                "Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
                "Applications/Firefox.app/Contents/MacOS/firefox",
                "Applications/Safari.app/Contents/MacOS/Safari",
                "usr/bin/safaridriver",
                "opt/chromedriver/chromedriver",
                "opt/geckodriver/geckodriver",
            ],
        );
        let l = layout(
            Os::Mac,
            &r,
            &["usr/bin", "usr/local/bin"],
            &[
                ("CHROMEWEBDRIVER", "opt/chromedriver"),
                ("GECKOWEBDRIVER", "opt/geckodriver"),
            ],
        );
        let c = found("chrome", &l);
        assert_eq!(
            rel(&r, &c.browser),
            "Applications/Google Chrome.app/Contents/MacOS/Google Chrome"
        );
        assert_eq!(c.browser_how, "the platform's install location");
        assert_eq!(rel(&r, &c.driver), "opt/chromedriver/chromedriver");
        let s = found("safari", &l);
        assert_eq!(
            rel(&r, &s.browser),
            "Applications/Safari.app/Contents/MacOS/Safari"
        );
        assert_eq!(rel(&r, &s.driver), "usr/bin/safaridriver");
        assert_eq!(
            rel(&r, &found("firefox", &l).browser),
            "Applications/Firefox.app/Contents/MacOS/firefox"
        );
    }

    /// Windows runners: Program Files, `.exe` names, drivers in the runner's variables.
    #[test]
    fn windows_runner() {
        let r = tree(
            "windows",
            &[
                "Program Files/Google/Chrome/Application/chrome.exe",
                "Program Files (x86)/Microsoft/Edge/Application/msedge.exe",
                "Program Files/Mozilla Firefox/firefox.exe",
                "SeleniumWebDrivers/ChromeDriver/chromedriver.exe",
                "SeleniumWebDrivers/EdgeDriver/msedgedriver.exe",
                "SeleniumWebDrivers/GeckoDriver/geckodriver.exe",
            ],
        );
        let l = layout(
            Os::Windows,
            &r,
            &["Windows/System32"],
            &[
                ("CHROMEWEBDRIVER", "SeleniumWebDrivers/ChromeDriver"),
                ("EDGEWEBDRIVER", "SeleniumWebDrivers/EdgeDriver"),
                ("GECKOWEBDRIVER", "SeleniumWebDrivers/GeckoDriver"),
            ],
        );
        let e = found("edge", &l);
        assert_eq!(
            rel(&r, &e.browser),
            "Program Files (x86)/Microsoft/Edge/Application/msedge.exe"
        );
        assert_eq!(
            rel(&r, &e.driver),
            "SeleniumWebDrivers/EdgeDriver/msedgedriver.exe"
        );
        assert_eq!(
            rel(&r, &found("chrome", &l).browser),
            "Program Files/Google/Chrome/Application/chrome.exe"
        );
        assert_eq!(
            rel(&r, &found("firefox", &l).driver),
            "SeleniumWebDrivers/GeckoDriver/geckodriver.exe"
        );
        assert_eq!(found("webkit", &l).browser, None);
    }

    /// nibble.toml's binary and driver win over the search; a given path that does not exist is
    /// reported as missing, not replaced by a found one.
    #[test]
    fn given_paths_win() {
        let r = tree(
            "given",
            &[
                "usr/bin/google-chrome",
                "usr/bin/chromedriver",
                "opt/c/chrome",
            ],
        );
        let l = layout(Os::Linux, &r, &["usr/bin"], &[]);
        let p = products::find("chrome").unwrap().places.as_ref().unwrap();
        let g = Given {
            binary: Some(r.join("opt/c/chrome")),
            driver: Some(r.join("opt/c/chromedriver")),
        };
        let f = find(p, &g, &l);
        assert_eq!(rel(&r, &f.browser), "opt/c/chrome");
        assert_eq!(f.driver, None);
        assert_eq!(f.driver_how, "nibble.toml driver");
    }

    /// This machine as .ci/run leaves it (Debian's chromium, chromium-driver, firefox-esr, geckodriver
    /// and webkit2gtk-driver): each is found where Debian puts it.
    #[test]
    fn the_real_debian_layout() {
        if !Path::new("/etc/debian_version").exists() {
            return;
        }
        let l = Layout::current();
        let at = |name: &str| {
            let p = products::find(name).unwrap();
            find(p.places.as_ref().unwrap(), &Given::default(), &l)
        };
        let c = at("chrome");
        assert_eq!(
            c.browser.as_deref(),
            Some(Path::new("/usr/lib/chromium/chromium")),
            "{c:?}"
        );
        assert_eq!(
            c.driver.as_deref(),
            Some(Path::new("/usr/bin/chromedriver"))
        );
        let f = at("firefox");
        assert_eq!(
            f.browser.as_deref(),
            Some(Path::new("/usr/lib/firefox-esr/firefox-esr")),
            "{f:?}"
        );
        assert!(
            f.driver
                .as_deref()
                .is_some_and(|d| d.ends_with("geckodriver")),
            "{f:?}"
        );
        let w = at("webkit");
        assert!(
            w.browser
                .as_deref()
                .is_some_and(|b| b.ends_with("MiniBrowser")),
            "{w:?}"
        );
        assert_eq!(
            w.driver.as_deref(),
            Some(Path::new("/usr/bin/WebKitWebDriver"))
        );
    }

    /// Every product that can run locally has places to search.
    #[test]
    fn every_local_product_has_places() {
        for p in PRODUCTS {
            assert!(p.places.is_some(), "{}", p.name);
        }
    }
}
