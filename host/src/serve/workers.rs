//! Worker processes for a pipeline spread over processes (`netless up --distributed`, benchmarks):
//! each a `netless up --only-segments` on a free loopback port.

use std::path::Path;

use super::ServeOptions;
use crate::{Error, Result};

/// Worker processes of `up --distributed`, stopped (SIGTERM, then waited for) when dropped.
#[derive(Default)]
pub struct WorkerPool {
    children: Vec<std::process::Child>,
}

impl WorkerPool {
    /// Starts `count` workers (`exe up DIR --only-segments ...`) serving the segments of `dir` between them; returns each segment's
    /// worker URLs.
    pub fn start(&mut self, exe: &Path, dir: &Path, segments: usize, count: usize, options: &ServeOptions) -> Result<Vec<Vec<String>>> {
        use std::io::BufRead;
        let mut replicas = vec![Vec::new(); segments];
        for worker in 0..count {
            let mine: Vec<usize> = (0..segments).filter(|s| s % count == worker || worker % segments == *s).collect();
            let list: Vec<String> = mine.iter().map(usize::to_string).collect();
            let mut command = std::process::Command::new(exe);
            command
                .arg("up")
                .arg(dir)
                .args(["--listen", "127.0.0.1:0", "--only-segments", &list.join(",")])
                .args(["--max-instances", &options.scaling.max_instances.to_string(), "--queue-size", &options.scaling.queue_size.to_string()])
                .arg("--idle-timeout")
                .arg(humantime::format_duration(options.scaling.idle_timeout).to_string())
                .arg("--deadline")
                .arg(humantime::format_duration(options.deadline).to_string())
                .stdout(std::process::Stdio::piped());
            if let Some(name) = &options.name {
                command.args(["--name", name]);
            }
            let mut child = command.spawn().map_err(|e| Error::Package { what: "a worker".into(), reason: format!("starting {}: {e}", exe.display()) })?;
            let stdout = child.stdout.take().expect("piped");
            self.children.push(child);
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = String::new();
            reader.read_line(&mut line).map_err(|e| Error::Package { what: format!("worker {worker}"), reason: e.to_string() })?;
            std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
            let url = line.split_whitespace().find(|w| w.starts_with("http://")).map(|w| w.trim_end_matches(':').to_string());
            let Some(url) = url else { return Err(Error::Package { what: format!("worker {worker}"), reason: format!("did not start (it printed {line:?})") }) };
            tracing::info!(worker, url = %url, segments = %list.join(","), "worker started");
            for s in mine {
                replicas[s].push(url.clone());
            }
        }
        Ok(replicas)
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        for child in &mut self.children {
            // SAFETY: kill(2) on the pid of a child this process started and has not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

