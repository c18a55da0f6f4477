//! A small mutation fuzzer that runs on stable Rust inside `cargo test`: each target is a function
//! from bytes to the decoder's verdict, fed mutations of a seed corpus for a bounded time.
//!
//! It is not coverage-guided (that needs nightly or an instrumented build); instead an input is kept
//! in the corpus when it earns a verdict (an error message, digits and quoted names stripped) not
//! seen before, which pushes inputs past one check to the next. Mutations are byte-level, from the
//! target's dictionary, JSON-aware ([`mutate::json`]) and the target's own structured ones.
//!
//! A panic fails the run: the input is written to the crashes folder and its path reported, to be
//! added to the target's corpus folder, whose every file is re-run first as a regression test.
//!
//! - `NETLESS_FUZZ_SECONDS`: time per target (default 3).
//! - `NETLESS_FUZZ_SEED`: the random seed (default: from the clock; printed either way).
//! - `NETLESS_FUZZ_CRASHES`: where crashing inputs are written (default: the temp folder).
//! - `NETLESS_FUZZ_REPORT`: a file to which one JSON line per run is appended.
#![deny(missing_docs)]

pub mod mutate;

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

pub use mutate::Rng;

/// Largest input the mutators produce.
pub const MAX_INPUT: usize = 1 << 20;

/// A structured mutator: a variant of an input, or `None` when it does not apply to this input.
pub type Mutator<'a> = &'a dyn Fn(&[u8], &mut Rng) -> Option<Vec<u8>>;

/// What one fuzz target decodes and from what it starts.
pub struct Target<'a> {
    /// The target's name, used for its corpus folder and in reports.
    pub name: &'a str,
    /// The folder of kept inputs (seeds and former crashes), all re-run first; may be absent.
    pub corpus: PathBuf,
    /// Seeds made by the test (valid inputs of the current format).
    pub seeds: Vec<Vec<u8>>,
    /// Tokens worth inserting (keywords, field names, interesting numbers).
    pub dictionary: &'a [&'a [u8]],
    /// Mutators that know the input's structure, tried for half of the mutations.
    pub mutators: Vec<Mutator<'a>>,
}

/// What a run did.
#[derive(Debug)]
pub struct Report {
    /// The target.
    pub name: String,
    /// Inputs executed (regression files included).
    pub executions: u64,
    /// Inputs in the corpus at the end.
    pub corpus: usize,
    /// Distinct verdicts seen.
    pub verdicts: usize,
    /// Inputs the decoder accepted.
    pub accepted: u64,
    /// Wall-clock time.
    pub seconds: f64,
    /// The seed, to replay the run.
    pub seed: u64,
}

/// The time budget of one target: `NETLESS_FUZZ_SECONDS`, else `default`.
pub fn budget(default: Duration) -> Duration {
    std::env::var("NETLESS_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .unwrap_or(default)
}

/// Runs `exec` on the corpus files, the seeds and then mutations until the budget is spent.
/// `exec` returns the decoder's verdict (`Err` with its message when it refuses the input) and
/// panics when a property the decoder promises does not hold.
///
/// Panics, naming the crashing input's file, if `exec` panics.
pub fn fuzz(target: Target<'_>, exec: impl FnMut(&[u8]) -> Result<(), String>) -> Report {
    fuzz_for(target, budget(Duration::from_secs(3)), exec)
}

/// [`fuzz`] with an explicit budget.
pub fn fuzz_for(target: Target<'_>, budget: Duration, mut exec: impl FnMut(&[u8]) -> Result<(), String>) -> Report {
    install_quiet_hook();
    let seed = std::env::var("NETLESS_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(clock_seed);
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut report = Report { name: target.name.into(), executions: 0, corpus: 0, verdicts: 0, accepted: 0, seconds: 0.0, seed };
    let mut seen = HashSet::new();
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    let mut run = |input: &[u8], report: &mut Report| -> bool {
        report.executions += 1;
        match execute(&mut exec, input) {
            Ok(verdict) => {
                if verdict.is_ok() {
                    report.accepted += 1;
                }
                seen.insert(signature(&verdict))
            }
            Err(message) => crashed(&target, input, &message, seed),
        }
    };
    for input in read_corpus(&target.corpus).into_iter().chain(target.seeds.iter().cloned()) {
        run(&input, &mut report);
        corpus.push(input);
    }
    assert!(!corpus.is_empty(), "fuzz target `{}` has no seeds", target.name);
    while started.elapsed() < budget {
        let base = &corpus[rng.below(corpus.len())];
        let other = &corpus[rng.below(corpus.len())];
        let input = if !target.mutators.is_empty() && rng.chance(2) {
            let mutator = target.mutators[rng.below(target.mutators.len())];
            match mutator(base, &mut rng) {
                Some(input) => input,
                None => continue,
            }
        } else {
            mutate::bytes(base, other, target.dictionary, &mut rng)
        };
        if input.len() > MAX_INPUT {
            continue;
        }
        if run(&input, &mut report) {
            corpus.push(input);
        }
    }
    report.corpus = corpus.len();
    report.verdicts = seen.len();
    report.seconds = started.elapsed().as_secs_f64();
    log(&report);
    report
}

thread_local! {
    static FUZZING: Cell<bool> = const { Cell::new(false) };
    static PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs one input, catching a panic as its message.
fn execute(exec: &mut impl FnMut(&[u8]) -> Result<(), String>, input: &[u8]) -> Result<Result<(), String>, String> {
    FUZZING.with(|f| f.set(true));
    let result = catch_unwind(AssertUnwindSafe(|| exec(input)));
    FUZZING.with(|f| f.set(false));
    result.map_err(|_| PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| "a panic without a message".into()))
}

/// Keeps panics of fuzzed inputs off stderr (recording them instead); others print as usual.
fn install_quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if FUZZING.with(Cell::get) {
                let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
                let payload = info.payload();
                let text = payload.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| payload.downcast_ref::<String>().cloned()).unwrap_or_default();
                PANIC.with(|p| *p.borrow_mut() = Some(format!("{text}{location}")));
            } else {
                previous(info);
            }
        }));
    });
}

/// A verdict's kind: its message with numbers and quoted names stripped, so that inputs differing
/// only in a value do not count as new.
fn signature(verdict: &Result<(), String>) -> String {
    let Err(message) = verdict else { return "ok".into() };
    let mut out = String::new();
    let mut quoted = None;
    for c in message.chars().take(200) {
        match quoted {
            Some(q) if c == q => quoted = None,
            Some(_) => {}
            None if c == '`' || c == '"' => {
                quoted = Some(c);
                out.push(c);
            }
            None if c.is_ascii_digit() || (out.ends_with('#') && matches!(c, ',' | ' ' | '.' | '-' | '+' | 'e')) => {
                if !out.ends_with('#') {
                    out.push('#');
                }
            }
            None => out.push(c),
        }
    }
    out
}

fn crashed(target: &Target<'_>, input: &[u8], message: &str, seed: u64) -> ! {
    let dir = std::env::var_os("NETLESS_FUZZ_CRASHES").map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("netless-fuzz-crashes"));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{}-{:016x}", target.name, fnv(input)));
    let saved = match std::fs::write(&path, input) {
        Ok(()) => format!("written to {}", path.display()),
        Err(e) => format!("not written ({e})"),
    };
    panic!(
        "fuzz target `{}` panicked on a {}-byte input ({saved}; seed {seed}): {message}\nfix it, then add the input to {} as a regression test",
        target.name,
        input.len(),
        target.corpus.display()
    );
}

fn read_corpus(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn log(report: &Report) {
    eprintln!(
        "fuzz {}: {} executions in {:.1} s, {} accepted, {} verdicts, corpus {} (seed {})",
        report.name, report.executions, report.seconds, report.accepted, report.verdicts, report.corpus, report.seed
    );
    if let Some(path) = std::env::var_os("NETLESS_FUZZ_REPORT") {
        let line = serde_json::json!({
            "target": report.name,
            "executions": report.executions,
            "seconds": report.seconds,
            "accepted": report.accepted,
            "verdicts": report.verdicts,
            "corpus": report.corpus,
            "seed": report.seed,
        });
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(file, "{line}");
        }
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
}

/// FNV-1a, to name crash files by content.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_differing_in_numbers_and_names_are_one() {
        assert_eq!(signature(&Err("input `x`: shape [3, 4] needs 12".into())), signature(&Err("input `yy`: shape [1] needs 7".into())));
        assert_ne!(signature(&Err("missing input `x`".into())), signature(&Err("unknown input `x`".into())));
    }

    #[test]
    fn a_panic_is_reported_with_its_input() {
        let dir = std::env::temp_dir().join(format!("netless-fuzz-self-test-{}", std::process::id()));
        let target = Target { name: "self-test", corpus: dir.join("corpus"), seeds: vec![b"ab".to_vec()], dictionary: &[b"boom"], mutators: vec![] };
        let caught = catch_unwind(AssertUnwindSafe(|| {
            fuzz_for(target, Duration::from_secs(20), |input| {
                if input.windows(4).any(|w| w == b"boom") {
                    panic!("found it");
                }
                Ok(())
            })
        }));
        let message = caught.expect_err("the planted panic is found").downcast::<String>().unwrap();
        assert!(message.contains("self-test") && message.contains("found it"), "{message}");
    }
}
