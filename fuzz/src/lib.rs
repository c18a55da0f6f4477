//! A small mutation fuzzer that runs on stable Rust inside `cargo test`: each target is a function
//! from bytes to the decoder's verdict, fed mutations of a seed corpus for a bounded time.
//!
//! It is not coverage-guided (that needs nightly or an instrumented build); instead an input is kept
//! in the corpus when it earns a verdict (an error message, digits and quoted names stripped) not
//! seen before, which pushes inputs past one check to the next. Mutations are byte-level, from the
//! target's dictionary, JSON-aware ([`mutate::json`]) and the target's own structured ones.
//!
//! A panic fails the run: the input is written to the crashes folder and its path reported, to be
//! added to the target's corpus folder, whose every file is re-run first as a regression test. So
//! does an input that runs longer than the per-input limit: a watchdog thread writes it and ends the
//! process (a running decoder cannot be interrupted), so that a hang is caught as a crash is.
//!
//! - `NETLESS_FUZZ_SECONDS`: time per target (default 3).
//! - `NETLESS_FUZZ_TIMEOUT`: the per-input limit in seconds (default 10).
//! - `NETLESS_FUZZ_SEED`: the random seed (default: from the clock; printed either way).
//! - `NETLESS_FUZZ_CRASHES`: where crashing inputs are written (default: the temp folder).
//! - `NETLESS_FUZZ_REPORT`: a file to which one JSON line per run is appended.
//! - `NETLESS_FUZZ_LAST`: a file to which every input is written before it runs, to keep the input
//!   that aborts the process (an allocation failure, which no panic hook sees).
//! - `NETLESS_FUZZ_VERDICTS`: a file to which every new verdict is appended (target, signature and
//!   the message's first line, tab-separated), to see what the corpus keeps.
#![deny(missing_docs)]

pub mod mutate;

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

pub use mutate::Rng;

/// Largest input the mutators produce.
pub const MAX_INPUT: usize = 1 << 20;

/// Inputs the corpus keeps in memory; past it a new input replaces a random mutation (never a
/// corpus file or seed), so an hour-long run of a decoder with many verdicts stays bounded.
pub const MAX_CORPUS: usize = 100_000;

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

/// The per-input time limit: `NETLESS_FUZZ_TIMEOUT` seconds, else 10 s.
pub fn time_limit() -> Duration {
    std::env::var("NETLESS_FUZZ_TIMEOUT").ok().and_then(|s| s.parse::<f64>().ok()).map_or(Duration::from_secs(10), Duration::from_secs_f64)
}

/// Exit status of a run ended by an input over the time limit.
pub const TIMEOUT_EXIT: i32 = 70;

/// Runs `exec` on the corpus files, the seeds and then mutations until the budget is spent.
/// `exec` returns the decoder's verdict (`Err` with its message when it refuses the input) and
/// panics when a property the decoder promises does not hold.
///
/// Panics, naming the crashing input's file, if `exec` panics; ends the process with
/// [`TIMEOUT_EXIT`], naming the input's file, if one input runs longer than [`time_limit`].
pub fn fuzz(target: Target<'_>, exec: impl FnMut(&[u8]) -> Result<(), String>) -> Report {
    fuzz_for(target, budget(Duration::from_secs(3)), exec)
}

/// [`fuzz`] with an explicit budget.
pub fn fuzz_for(target: Target<'_>, budget: Duration, exec: impl FnMut(&[u8]) -> Result<(), String>) -> Report {
    install_quiet_hook();
    let seed = std::env::var("NETLESS_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(clock_seed);
    let last = std::env::var_os("NETLESS_FUZZ_LAST").map(PathBuf::from);
    let watchdog = Watchdog { running: Mutex::new(None), done: AtomicBool::new(false), limit: time_limit(), last };
    let (name, corpus) = (target.name, target.corpus.clone());
    std::thread::scope(|scope| {
        scope.spawn(|| watchdog.watch(name, &corpus, seed));
        let _stop = Stop(&watchdog.done);
        run(&target, budget, seed, &watchdog, exec)
    })
}

fn run(target: &Target<'_>, budget: Duration, seed: u64, watchdog: &Watchdog, mut exec: impl FnMut(&[u8]) -> Result<(), String>) -> Report {
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut report = Report { name: target.name.into(), executions: 0, corpus: 0, verdicts: 0, accepted: 0, seconds: 0.0, seed };
    let mut seen = HashSet::new();
    let mut verdicts = std::env::var_os("NETLESS_FUZZ_VERDICTS").and_then(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).ok());
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    let mut try_input = |input: &[u8], report: &mut Report| -> bool {
        report.executions += 1;
        watchdog.start(input);
        let outcome = execute(&mut exec, input);
        watchdog.stop();
        match outcome {
            Ok(verdict) => {
                if verdict.is_ok() {
                    report.accepted += 1;
                }
                let signature = signature(&verdict);
                if let Some(file) = verdicts.as_mut().filter(|_| !seen.contains(&signature)) {
                    let first = verdict.as_ref().err().and_then(|m| m.lines().next()).unwrap_or("ok");
                    let _ = writeln!(file, "{}\t{signature}\t{first}", target.name);
                }
                seen.insert(signature)
            }
            Err(message) => crashed(target, input, &message, seed),
        }
    };
    for input in read_corpus(&target.corpus).into_iter().chain(target.seeds.iter().cloned()) {
        try_input(&input, &mut report);
        corpus.push(input);
    }
    assert!(!corpus.is_empty(), "fuzz target `{}` has no seeds", target.name);
    let kept = corpus.len();
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
        if try_input(&input, &mut report) {
            if corpus.len() < MAX_CORPUS.max(kept + 1) {
                corpus.push(input);
            } else {
                let replaced = kept + rng.below(corpus.len() - kept);
                corpus[replaced] = input;
            }
        }
    }
    report.corpus = corpus.len();
    report.verdicts = seen.len();
    report.seconds = started.elapsed().as_secs_f64();
    log(&report);
    report
}

/// Watches the input being run, and ends the process when one runs over the limit.
struct Watchdog {
    running: Mutex<Option<(Instant, Vec<u8>)>>,
    done: AtomicBool,
    limit: Duration,
    last: Option<PathBuf>,
}

/// Ends the watch when the run ends, by returning or by a crash's panic.
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Watchdog {
    fn start(&self, input: &[u8]) {
        if let Some(last) = &self.last {
            let _ = std::fs::write(last, input);
        }
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), input.to_vec()));
    }

    fn stop(&self) {
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn watch(&self, name: &str, corpus: &Path, seed: u64) {
        let tick = (self.limit / 10).clamp(Duration::from_millis(10), Duration::from_millis(250));
        while !self.done.load(Ordering::Relaxed) {
            std::thread::sleep(tick);
            let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            let Some((started, input)) = running.as_ref() else { continue };
            if started.elapsed() > self.limit {
                let saved = save(name, "timeout", input);
                eprintln!(
                    "fuzz target `{}` ran over its per-input limit of {:?} on a {}-byte input ({saved}; seed {seed})\nfix it, then add the input to {} as a regression test",
                    name,
                    self.limit,
                    input.len(),
                    corpus.display()
                );
                std::process::exit(TIMEOUT_EXIT);
            }
        }
    }
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

/// A verdict's kind: the first line of its message with numbers and quoted text stripped, so that
/// inputs differing only in a value do not count as new. Quotes are backticks, double quotes (with
/// backslash escapes) and single quotes opening a word (not an apostrophe), Python's `b'...'` too.
fn signature(verdict: &Result<(), String>) -> String {
    let Err(message) = verdict else { return "ok".into() };
    let line = message.lines().next().unwrap_or_default();
    let mut out = String::new();
    let mut quoted = None;
    let mut escaped = false;
    let (mut before, mut previous) = (' ', ' ');
    for c in line.chars() {
        let opens_single = !previous.is_alphanumeric() || (previous == 'b' && !before.is_alphanumeric());
        match quoted {
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c == q => quoted = None,
            Some(_) => {}
            None if c == '`' || c == '"' || (c == '\'' && opens_single) => {
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
        (before, previous) = (previous, c);
        if out.len() >= 200 {
            break;
        }
    }
    out
}

/// Writes a failing input to the crashes folder, named `<target>[-<kind>]-<hash>`; says where.
fn save(name: &str, kind: &str, input: &[u8]) -> String {
    let dir = std::env::var_os("NETLESS_FUZZ_CRASHES").map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("netless-fuzz-crashes"));
    let _ = std::fs::create_dir_all(&dir);
    let kind = if kind.is_empty() { String::new() } else { format!("-{kind}") };
    let path = dir.join(format!("{name}{kind}-{:016x}", fnv(input)));
    match std::fs::write(&path, input) {
        Ok(()) => format!("written to {}", path.display()),
        Err(e) => format!("not written ({e})"),
    }
}

fn crashed(target: &Target<'_>, input: &[u8], message: &str, seed: u64) -> ! {
    let saved = save(target.name, "", input);
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
        assert_eq!(signature(&Err(r#"invalid type: string "a\"b", expected map"#.into())), signature(&Err(r#"invalid type: string "c", expected map"#.into())));
        assert_eq!(signature(&Err("bad descriptor ('<f4'); can't read\n1| {'descr': '<f4'}".into())), signature(&Err("bad descriptor ('>i8'); can't read\n1| {'shape': ()}".into())));
        assert_ne!(signature(&Err("can't read the header".into())), signature(&Err("can't read the data".into())));
        assert_eq!(signature(&Err("unknown key: b'dor( #'; can't read".into())), signature(&Err("unknown key: b'x'; can't read".into())));
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

    /// Runs itself in a child process (the watchdog ends the process it runs in).
    #[test]
    fn an_input_over_the_time_limit_is_written_and_ends_the_run() {
        let crashes = std::env::temp_dir().join(format!("netless-fuzz-timeout-test-{}", std::process::id()));
        if std::env::var_os("NETLESS_FUZZ_SELF_TEST_HANG").is_some() {
            let target = Target { name: "hang-test", corpus: crashes.join("corpus"), seeds: vec![b"ab".to_vec()], dictionary: &[b"zz"], mutators: vec![] };
            fuzz_for(target, Duration::from_secs(20), |input| {
                if input.windows(2).any(|w| w == b"zz") {
                    std::thread::sleep(Duration::from_secs(60));
                }
                Ok(())
            });
            return;
        }
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tests::an_input_over_the_time_limit_is_written_and_ends_the_run", "--nocapture"])
            .env("NETLESS_FUZZ_SELF_TEST_HANG", "1")
            .env("NETLESS_FUZZ_TIMEOUT", "0.3")
            .env("NETLESS_FUZZ_CRASHES", &crashes)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&child.stderr);
        assert_eq!(child.status.code(), Some(TIMEOUT_EXIT), "{stderr}");
        assert!(stderr.contains("hang-test") && stderr.contains("per-input limit"), "{stderr}");
        let written: Vec<Vec<u8>> = std::fs::read_dir(&crashes).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("hang-test-timeout-")).map(|e| std::fs::read(e.path()).unwrap()).collect();
        assert!(written.len() == 1 && written[0].windows(2).any(|w| w == b"zz"), "the hanging input is kept: {written:?}");
        let _ = std::fs::remove_dir_all(&crashes);
    }

    /// Runs itself in a child process, which aborts as an allocation failure does.
    #[test]
    fn the_input_that_aborts_the_process_is_kept_in_the_last_file() {
        let last = std::env::temp_dir().join(format!("netless-fuzz-last-test-{}", std::process::id()));
        if std::env::var_os("NETLESS_FUZZ_SELF_TEST_ABORT").is_some() {
            let target = Target { name: "abort-test", corpus: last.join("corpus"), seeds: vec![b"ab".to_vec()], dictionary: &[b"zz"], mutators: vec![] };
            fuzz_for(target, Duration::from_secs(20), |input| {
                if input.windows(2).any(|w| w == b"zz") {
                    std::process::abort();
                }
                Ok(())
            });
            return;
        }
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tests::the_input_that_aborts_the_process_is_kept_in_the_last_file", "--nocapture"])
            .env("NETLESS_FUZZ_SELF_TEST_ABORT", "1")
            .env("NETLESS_FUZZ_LAST", &last)
            .output()
            .unwrap();
        assert!(!child.status.success(), "the child aborted");
        let kept = std::fs::read(&last).unwrap();
        assert!(kept.windows(2).any(|w| w == b"zz"), "the aborting input is kept: {kept:?}");
        let _ = std::fs::remove_file(&last);
    }
}
